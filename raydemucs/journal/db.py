"""The journal's connection: SQLite in WAL mode with `synchronous=FULL`, so that every transition
is on disk before it is acknowledged; one module per table uses it (`tasks`, `results`,
`deliveries`), and what spans tables is here.

The scheduler's process is the journal's only writer of tasks; the webhook deliverer opens a
connection of its own (SQLite serialises the two).
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ..core.task import TaskRecord
from . import deliveries, results, tasks


class Journal:
    """One SQLite connection and its tables: `tasks`, `results` (the result cache's index) and
    `deliveries` (webhook deliveries and their attempts)."""

    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        tasks.migrate(self.db)
        for table in (tasks, results, deliveries):
            self.db.executescript(table.SCHEMA)
        self.tasks = tasks.TaskTable(self)
        self.results = results.ResultTable(self)
        self.deliveries = deliveries.DeliveryTable(self)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self):
        """Every write inside is one transaction: synced once, all or nothing."""
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def drop(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Remove finished runs' rows with their deliveries (one transaction); the records
        dropped (not those run again since they were read)."""
        with self.transaction():
            dropped = [record for record in records if self.tasks.delete_finished(record)]
            self.deliveries.delete_of([record.task_id for record in dropped])
        return dropped
