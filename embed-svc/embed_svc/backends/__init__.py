"""Embed backends: one module per model architecture, each with one ``modelhost.backend.Backend``.

The HTTP process imports this module to validate the catalog, so it names the classes by import path and
imports nothing heavy; the worker process imports the one it needs.
"""

BACKENDS: dict[str, str] = {
    "clip": "embed_svc.backends.clip:ClipEmbedder",
    "siglip": "embed_svc.backends.siglip:SiglipEmbedder",
    "sentence_transformer": "embed_svc.backends.sentence_text:SentenceTextEmbedder",
}
