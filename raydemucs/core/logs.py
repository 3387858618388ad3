"""Logging set-up shared by the CLI, the scheduler and the workers."""
from __future__ import annotations

import json
import logging
import os

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                 "logger": record.name, "pid": os.getpid(), "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Set the `raydemucs` loggers to `level` (debug, info, warning, error), as text or json."""
    root = logging.getLogger("raydemucs")
    root.setLevel(level.upper())
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
        root.propagate = False
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
