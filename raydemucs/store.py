"""The task journal: SQLite in WAL mode, every transition committed before it is acknowledged."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .task import TaskRecord, TaskState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    file_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (project, file_id)
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
CREATE TABLE IF NOT EXISTS results (
    cache_key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    folder TEXT NOT NULL
);
"""


class TaskStore:
    """Durable task records keyed by task id, unique per (project, file id)."""

    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def next_seq(self) -> int:
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks").fetchone()
        return seq

    def insert(self, record: TaskRecord) -> TaskRecord:
        """Commit a new record; if its (project, file id) exists, return the stored one."""
        spec = record.spec
        try:
            self._db.execute(
                "INSERT INTO tasks (task_id, project, file_id, seq, state, record) VALUES (?,?,?,?,?,?)",
                (spec.task_id, spec.project, spec.file_id, record.seq, record.state.value,
                 json.dumps(record.to_dict())))
        except sqlite3.IntegrityError:
            existing = self.find(spec.project, spec.file_id)
            if existing is None:
                raise
            return existing
        return record

    def save(self, record: TaskRecord) -> None:
        """Commit a record's new state (one transaction, synced)."""
        self._db.execute("UPDATE tasks SET state=?, seq=?, record=? WHERE task_id=?",
                         (record.state.value, record.seq, json.dumps(record.to_dict()),
                          record.task_id))

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute("SELECT record FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        return TaskRecord.from_dict(json.loads(row[0])) if row else None

    def find(self, project: str, file_id: str) -> TaskRecord | None:
        row = self._db.execute("SELECT record FROM tasks WHERE project=? AND file_id=?",
                               (project, file_id)).fetchone()
        return TaskRecord.from_dict(json.loads(row[0])) if row else None

    def unfinished(self) -> list[TaskRecord]:
        """Queued and running records, in submission order."""
        rows = self._db.execute("SELECT record FROM tasks WHERE state IN (?, ?) ORDER BY seq",
                                (TaskState.QUEUED.value, TaskState.RUNNING.value))
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]

    def list(self, state: TaskState | None = None, limit: int = 1000) -> list[TaskRecord]:
        """Most recent records first, optionally of one state."""
        if state is None:
            rows = self._db.execute("SELECT record FROM tasks ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute("SELECT record FROM tasks WHERE state=? ORDER BY seq DESC LIMIT ?",
                                    (state.value, limit))
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]

    def remember_result(self, cache_key: str, task_id: str, folder: str) -> None:
        """Record where the stems for `cache_key` are (the result cache's index)."""
        self._db.execute("INSERT OR REPLACE INTO results (cache_key, task_id, folder) VALUES (?,?,?)",
                         (cache_key, task_id, folder))

    def find_result(self, cache_key: str) -> tuple[str, str] | None:
        """`(task_id, folder)` of stems made earlier for `cache_key`, if any."""
        return self._db.execute("SELECT task_id, folder FROM results WHERE cache_key=?",
                                (cache_key,)).fetchone()

    def count_by_state(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        counts = {state.value: 0 for state in TaskState}
        counts.update(dict(rows.fetchall()))
        return counts
