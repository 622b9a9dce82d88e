from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    """One plain line per event on stderr: time, level, process, logger, message."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
