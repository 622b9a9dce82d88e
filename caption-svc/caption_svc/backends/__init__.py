"""Caption backends: one module per model architecture, each with one ``modelhost.backend.Backend``.

The HTTP process imports this module to validate the catalog, so it names the classes by import path and
imports nothing heavy; the worker process imports the one it needs.
"""

BACKENDS: dict[str, str] = {
    "blip": "caption_svc.backends.blip:BlipCaptioner",
    "blip2": "caption_svc.backends.blip2:Blip2Captioner",
    "qwen_vl": "caption_svc.backends.qwen_vl:QwenVLCaptioner",
}
