"""The journal: every accepted task, the result cache's index and webhook deliveries, in SQLite."""
from .db import Journal

__all__ = ["Journal"]
