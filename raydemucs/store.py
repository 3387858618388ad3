"""The task journal: SQLite in WAL mode, every transition committed before it is acknowledged.

A task is unique per (owner, project, file id): the owner is the API key that created it over
HTTP, '' for the Python API and the CLI.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .task import TaskRecord, TaskState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL,
    file_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (owner, project, file_id)
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, seq);
CREATE TABLE IF NOT EXISTS results (
    cache_key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    folder TEXT NOT NULL
);
"""
# journals written before tasks had owners: unique per (project, file id), no owner column
_ADD_OWNERS = """
ALTER TABLE tasks RENAME TO tasks_without_owner;
DROP INDEX IF EXISTS tasks_state;
{schema}
INSERT INTO tasks (task_id, owner, project, file_id, seq, state, record)
    SELECT task_id, '', project, file_id, seq, state, record FROM tasks_without_owner;
DROP TABLE tasks_without_owner;
"""


class TaskStore:
    """Durable task records keyed by task id, unique per (owner, project, file id)."""

    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(tasks)")]
        if columns and "owner" not in columns:
            self._db.executescript("BEGIN;" + _ADD_OWNERS.format(schema=_SCHEMA) + "COMMIT;")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def next_seq(self) -> int:
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks").fetchone()
        return seq

    def insert(self, record: TaskRecord) -> TaskRecord:
        """Commit a new record; if its (owner, project, file id) exists, return the stored one."""
        spec = record.spec
        try:
            self._db.execute(
                "INSERT INTO tasks (task_id, owner, project, file_id, seq, state, record) "
                "VALUES (?,?,?,?,?,?,?)",
                (spec.task_id, spec.owner, spec.project, spec.file_id, record.seq,
                 record.state.value, json.dumps(record.to_dict())))
        except sqlite3.IntegrityError:
            existing = self.find(spec.project, spec.file_id, spec.owner)
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

    def find(self, project: str, file_id: str, owner: str = "") -> TaskRecord | None:
        row = self._db.execute("SELECT record FROM tasks WHERE owner=? AND project=? AND file_id=?",
                               (owner, project, file_id)).fetchone()
        return TaskRecord.from_dict(json.loads(row[0])) if row else None

    def unfinished(self) -> list[TaskRecord]:
        """Queued and running records, in submission order."""
        rows = self._db.execute("SELECT record FROM tasks WHERE state IN (?, ?) ORDER BY seq",
                                (TaskState.QUEUED.value, TaskState.RUNNING.value))
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]

    def list(self, state: TaskState | None = None, limit: int = 1000, *,
             project: str | None = None, owner: str | None = None,
             before_seq: int | None = None) -> list[TaskRecord]:
        """Most recent records first (by submission), filtered by state, project and owner, and
        only those submitted before `before_seq` (the next page)."""
        where, values = [], []
        for column, value in (("state", state and state.value), ("project", project),
                              ("owner", owner), ("seq <", before_seq)):
            if value is not None:
                where.append(f"{column} ?" if column.endswith("<") else f"{column} = ?")
                values.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(f"SELECT record FROM tasks {clause} ORDER BY seq DESC LIMIT ?",
                                (*values, limit))
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
