"""The webhook deliveries table and their attempts: one row per event of a task's run that its
webhook asked for, pending until delivered or dead (`raydemucs.webhooks`)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from typing import Callable

from ..core.task import TaskRecord
from .tasks import TERMINAL

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    run_seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_at REAL,
    last_status INTEGER,
    last_error TEXT,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE INDEX IF NOT EXISTS deliveries_task ON deliveries (task_id);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    attempt_id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    at REAL NOT NULL,
    duration_s REAL,
    status INTEGER,
    error TEXT,
    excerpt TEXT
);
CREATE INDEX IF NOT EXISTS delivery_attempts_of ON delivery_attempts (delivery_id);
"""
COLUMNS = ("delivery_id", "task_id", "run_seq", "event", "url", "body", "state", "attempts",
           "created_at", "next_at", "last_status", "last_error", "ended_at")
ATTEMPT_COLUMNS = ("at", "duration_s", "status", "error", "excerpt")
COUNTS_MAX_AGE_S = 10.0  # deliveries by state are read again at most this often


class DeliveryTable:
    """Deliveries as dicts of `COLUMNS`."""

    def __init__(self, journal):
        self.journal, self.db = journal, journal.db

    def _select(self, where: str, values: tuple) -> list[dict]:
        rows = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM deliveries {where}",
                               values).fetchall()
        return [dict(zip(COLUMNS, row)) for row in rows]

    def add(self, delivery: dict) -> bool:
        """Commit a new delivery; False when one with its id exists already."""
        columns = [c for c in COLUMNS if c in delivery]
        cursor = self.db.execute(
            f"INSERT OR IGNORE INTO deliveries ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})", [delivery[c] for c in columns])
        return cursor.rowcount == 1

    def get(self, delivery_id: str) -> dict | None:
        found = self._select("WHERE delivery_id=?", (delivery_id,))
        return found[0] if found else None

    def listing(self, task_id: str | None = None, state: str | None = None,
                limit: int = 1000) -> list[dict]:
        """Deliveries, newest first, of one task and in one state when given."""
        where = [f"{column}=?" for column, value in (("task_id", task_id), ("state", state))
                 if value is not None]
        values = tuple(value for value in (task_id, state) if value is not None)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._select(f"{clause} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                            (*values, limit))

    def due(self, now: float, limit: int) -> list[dict]:
        """Pending deliveries whose next attempt is due, the longest due first."""
        return self._select("WHERE state='pending' AND next_at<=? ORDER BY next_at LIMIT ?",
                            (now, limit))

    def next_at(self, skip: list[str] = ()) -> float | None:
        """When the next pending delivery (none of `skip`) is due."""
        marks = ", ".join("?" * len(skip))
        (at,) = self.db.execute("SELECT MIN(next_at) FROM deliveries WHERE state='pending' AND "
                                f"delivery_id NOT IN ({marks})", tuple(skip)).fetchone()
        return at

    def update(self, delivery_id: str, attempt: dict | None = None, **fields) -> None:
        """Change a delivery's columns, and journal an attempt with it (one transaction)."""
        sets = ", ".join(f"{column}=?" for column in fields)
        with self.journal.transaction():
            if attempt is not None:
                self.db.execute("INSERT INTO delivery_attempts (delivery_id, at, duration_s, "
                                "status, error, excerpt) VALUES (?,?,?,?,?,?)",
                                (delivery_id, *(attempt[c] for c in ATTEMPT_COLUMNS)))
            self.db.execute(f"UPDATE deliveries SET {sets} WHERE delivery_id=?",
                            (*fields.values(), delivery_id))

    def attempts(self, delivery_id: str) -> list[dict]:
        rows = self.db.execute(f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM delivery_attempts "
                               "WHERE delivery_id=? ORDER BY attempt_id", (delivery_id,))
        return [dict(zip(ATTEMPT_COLUMNS, row)) for row in rows]

    def unannounced(self) -> list[TaskRecord]:
        """Finished tasks with a webhook whose run has no delivery of its end (a stop between
        the two commits)."""
        rows = self.db.execute(
            "SELECT record FROM tasks t WHERE state IN (?,?,?) AND "
            "json_extract(record, '$.spec.webhook_url') IS NOT NULL AND NOT EXISTS ("
            "SELECT 1 FROM deliveries d WHERE d.task_id=t.task_id AND d.run_seq=t.seq AND "
            "d.event='task.' || t.state)", TERMINAL).fetchall()
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]

    def delete_of(self, task_ids: list[str]) -> None:
        """Delete the deliveries of these tasks and their attempts (inside the caller's
        transaction)."""
        for task_id in task_ids:
            self.db.execute("DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT "
                            "delivery_id FROM deliveries WHERE task_id=?)", (task_id,))
            self.db.execute("DELETE FROM deliveries WHERE task_id=?", (task_id,))


class DeliveryCounts:
    """Deliveries by state, as `status` shows them: counted at most every `max_age_s`, in a
    thread, on a connection of its own, so that a status call never scans the table on the
    scheduler's loop, and the scans do not grow with the operator views open."""

    def __init__(self, path: str, max_age_s: float = COUNTS_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.path, self.max_age_s, self.clock = path, max_age_s, clock
        self.counts: dict[str, int] = {}
        self._read_at: float | None = None

    async def get(self) -> dict[str, int]:
        """The counts, read again first when older than `max_age_s` (by one caller at once)."""
        if self._read_at is None or self.clock() - self._read_at >= self.max_age_s:
            self._read_at = self.clock()
            self.counts = await asyncio.to_thread(self._read)
        return self.counts

    def _read(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return dict(db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))
