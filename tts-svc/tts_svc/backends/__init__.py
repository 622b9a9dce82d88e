"""TTS backends: one module per engine, each with one ``modelhost.backend.Backend``.

The HTTP process imports this module to validate the catalog, so it names the classes by import path and
imports nothing heavy; the worker process imports the one it needs.
"""

BACKENDS: dict[str, str] = {
    "piper": "tts_svc.backends.piper:PiperSynthesizer",
    "coqui": "tts_svc.backends.coqui:CoquiSynthesizer",
    "flite": "tts_svc.backends.flite:FliteSynthesizer",
    "espeak": "tts_svc.backends.espeak:EspeakSynthesizer",
}
