"""Log lines as text or JSON objects."""
from __future__ import annotations

import json
import logging

from raydemucs.core.logs import JsonFormatter, configure_logging


def test_json_log_lines_are_objects():
    record = logging.LogRecord("raydemucs.scheduler", logging.INFO, __file__, 1,
                               "task %s attempt %d: queued -> running", ("abc", 1), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "info" and entry["logger"] == "raydemucs.scheduler"
    assert entry["message"] == "task abc attempt 1: queued -> running"


def test_configure_sets_level_and_format():
    logger = logging.getLogger("raydemucs")
    configure_logging("warning", "json")
    try:
        assert logger.level == logging.WARNING
        assert all(isinstance(h.formatter, JsonFormatter) for h in logger.handlers)
    finally:
        configure_logging("info", "text")
    assert not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers)
