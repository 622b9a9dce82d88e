"""Whisper's languages: the table is shared with the gateway, in ``modelhost.languages``."""

from modelhost.languages import LANGUAGES, language_code

__all__ = ["LANGUAGES", "language_code"]
