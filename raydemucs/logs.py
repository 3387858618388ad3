"""Logging set-up shared by the CLI, the scheduler and the workers."""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Set the `raydemucs` loggers to `level` (debug, info, warning, error)."""
    root = logging.getLogger("raydemucs")
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        root.propagate = False
