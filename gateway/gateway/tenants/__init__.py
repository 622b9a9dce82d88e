"""External tenants: catalog models another server serves (Ollama, llama-swap, any HTTP server with
residency and unload URLs), which the coordinator charges, sees and evicts like its own, and whose
OpenAI routes the gateway proxies under a lease (``gateway.routers.openai``).

``Tenants`` holds one client per server (the models of one Ollama share its client) and answers for
the llm family what a family service answers for its own: ``client(spec)`` is the client a model's
requests, loads and unloads go to, ``models(family)`` what every server of the family holds.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from modelhost.catalog import Catalog, ModelSpec
from modelhost.contract import ModelRow
from modelhost.errors import RoundhouseError, ServiceUnreachable

from .base import Residency, TenantClient
from .generic import HttpTenantClient
from .llama_swap import LlamaSwapClient
from .ollama import OllamaClient

__all__ = ["Residency", "TenantClient", "Tenants", "HttpTenantClient", "LlamaSwapClient", "OllamaClient"]

log = logging.getLogger(__name__)

CLIENTS: dict[str, type[TenantClient]] = {"ollama": OllamaClient, "llama-swap": LlamaSwapClient, "http": HttpTenantClient}


class Tenants:
    def __init__(self, clients: list[TenantClient]) -> None:
        self.clients = clients
        self._by_model = {model: c for c in clients for model in c.specs}

    @classmethod
    def build(cls, catalog: Catalog, session: aiohttp.ClientSession, **timeouts: float) -> "Tenants":
        """One client per server the catalog's tenant models name (by backend, URL and, for ``http``, its
        residency URL)."""
        servers: dict[tuple[str, str, str], list[ModelSpec]] = {}
        for spec in catalog.models:
            if spec.tenant:
                key = (spec.backend, str(spec.options["url"]).rstrip("/"), str(spec.options.get("residency_url", "")))
                servers.setdefault(key, []).append(spec)
        return cls([CLIENTS[backend](url, specs, session, **timeouts) for (backend, url, _), specs in servers.items()])

    def client(self, spec: ModelSpec) -> TenantClient | None:
        """The server of a tenant model; None for a model of our own family services."""
        return self._by_model.get(spec.id)

    def serves(self, family: str) -> bool:
        return any(s.family == family for c in self.clients for s in c.specs.values())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clients]

    async def models(self, family: str) -> list[ModelRow]:
        """Every row of ``family`` across its servers. A server that cannot be read holds nothing (as a
        family service that is down does). When one cannot be read and the others hold nothing, its error
        is raised instead of an empty list: an empty list says every worker is gone, which lets go of what
        the family's releases left unverified, and an unreachable server is no proof of that."""
        clients = [c for c in self.clients if any(s.family == family for s in c.specs.values())]
        replies = await asyncio.gather(*(c.models() for c in clients), return_exceptions=True)
        rows: list[ModelRow] = []
        errors: list[RoundhouseError] = []
        for c, reply in zip(clients, replies):
            if isinstance(reply, RoundhouseError):
                log.warning("%s cannot be read (%s); it holds nothing", c.name, reply.message)
                errors.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                rows.extend(r for r in reply.data if r.family == family)
        if errors and not any(r.resident for r in rows):
            raise errors[0] if len(errors) == 1 else ServiceUnreachable(
                "; ".join(e.message for e in errors), retry_after_s=5)
        return rows
