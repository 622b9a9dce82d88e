"""What the routes share, built once in ``create_app`` and reached through ``gw(request)``."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from fastapi import Request

from modelhost.catalog import Catalog
from modelhost.client import ModelHostClient
from modelhost.meter import MemoryMeter

from .access import ModelAccess
from .config import GatewaySettings
from .coordinator.loop import Coordinator
from .metrics import GatewayMetrics


@dataclass
class Gateway:
    settings: GatewaySettings
    catalog: Catalog
    metrics: GatewayMetrics
    session: aiohttp.ClientSession
    clients: dict[str, ModelHostClient]
    access: ModelAccess
    started_at: float
    coordinator: Coordinator
    meters: dict[str, MemoryMeter | None]


def gw(request: Request) -> Gateway:
    return request.app.state.gateway
