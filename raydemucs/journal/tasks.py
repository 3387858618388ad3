"""The task journal: SQLite in WAL mode, every transition committed before it is acknowledged.

A task is unique per (owner, project, file id): the owner is the API key that created it over
HTTP, '' for the Python API and the CLI.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from ..core.task import TaskRecord, TaskState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL,
    file_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    batch_id TEXT,
    duration_s REAL,
    UNIQUE (owner, project, file_id)
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, seq);
CREATE INDEX IF NOT EXISTS tasks_batch ON tasks (batch_id, seq);
CREATE TABLE IF NOT EXISTS results (
    cache_key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    folder TEXT NOT NULL
);
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
TERMINAL = tuple(state.value for state in TaskState if state.is_terminal())
DELIVERY_COLUMNS = ("delivery_id", "task_id", "run_seq", "event", "url", "body", "state",
                    "attempts", "created_at", "next_at", "last_status", "last_error", "ended_at")
# journals written before tasks had owners: unique per (project, file id), no owner column
_ADD_OWNERS = """
ALTER TABLE tasks RENAME TO tasks_without_owner;
DROP INDEX IF EXISTS tasks_state;
{schema}
INSERT INTO tasks (task_id, owner, project, file_id, seq, state, record)
    SELECT task_id, '', project, file_id, seq, state, record FROM tasks_without_owner;
DROP TABLE tasks_without_owner;
"""


_INSERT = ("INSERT INTO tasks (task_id, owner, project, file_id, seq, state, record, batch_id, "
           "duration_s) VALUES (?,?,?,?,?,?,?,?,?)")


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
        elif columns and "batch_id" not in columns:  # journals written before batches
            self._db.executescript("ALTER TABLE tasks ADD COLUMN batch_id TEXT;"
                                   "ALTER TABLE tasks ADD COLUMN duration_s REAL;")
        self._db.executescript(_SCHEMA)
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def next_seq(self) -> int:
        """The next submission number (kept here: this process is the journal's only writer)."""
        self._seq += 1
        return self._seq

    @staticmethod
    def _row(record: TaskRecord) -> tuple:
        spec = record.spec
        return (spec.task_id, spec.owner, spec.project, spec.file_id, record.seq,
                record.state.value, json.dumps(record.to_dict()), spec.batch_id, spec.duration_s)

    def insert(self, record: TaskRecord) -> TaskRecord:
        """Commit a new record; if its (owner, project, file id) exists, return the stored one."""
        spec = record.spec
        try:
            self._db.execute(_INSERT, self._row(record))
        except sqlite3.IntegrityError:
            existing = self.find(spec.project, spec.file_id, spec.owner)
            if existing is None:
                raise
            return existing
        return record

    def insert_many(self, records: list[TaskRecord]) -> None:
        """Commit new records in one transaction (their keys were checked to be free)."""
        with self.transaction():
            self._db.executemany(_INSERT, [self._row(record) for record in records])

    @contextlib.contextmanager
    def transaction(self):
        """Every write inside is one transaction: synced once, all or nothing."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
             project: str | None = None, owner: str | None = None, batch_id: str | None = None,
             before_seq: int | None = None) -> list[TaskRecord]:
        """Most recent records first (by submission), filtered by state, project, owner and
        batch, and only those submitted before `before_seq` (the next page)."""
        where, values = [], []
        for column, value in (("state", state and state.value), ("project", project),
                              ("owner", owner), ("batch_id", batch_id), ("seq <", before_seq)):
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

    def batch_task_ids(self, batch_id: str, states: tuple[TaskState, ...]) -> list[str]:
        """A batch's tasks in those states, in submission order."""
        marks = ",".join("?" * len(states))
        rows = self._db.execute(f"SELECT task_id FROM tasks WHERE batch_id=? AND state IN ({marks})"
                                " ORDER BY seq", (batch_id, *(state.value for state in states)))
        return [row[0] for row in rows]

    def batch_tallies(self) -> list[tuple]:
        """`(batch id, state, tasks, audio seconds)` of every batch (read once, at a restart)."""
        return self._db.execute("SELECT batch_id, state, COUNT(*), COALESCE(SUM(duration_s), 0) "
                                "FROM tasks WHERE batch_id IS NOT NULL GROUP BY batch_id, state"
                                ).fetchall()

    def count_by_state(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        counts = {state.value: 0 for state in TaskState}
        counts.update(dict(rows.fetchall()))
        return counts

    # -- webhook deliveries (raydemucs.webhooks.deliveries) ----------------------------------------------
    def _deliveries(self, where: str, values: tuple) -> list[dict]:
        rows = self._db.execute(f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM deliveries {where}",
                                values).fetchall()
        return [dict(zip(DELIVERY_COLUMNS, row)) for row in rows]

    def add_delivery(self, delivery: dict) -> bool:
        """Commit a new delivery; False when one with its id exists already."""
        columns = [c for c in DELIVERY_COLUMNS if c in delivery]
        cursor = self._db.execute(
            f"INSERT OR IGNORE INTO deliveries ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})", [delivery[c] for c in columns])
        return cursor.rowcount == 1

    def delivery(self, delivery_id: str) -> dict | None:
        found = self._deliveries("WHERE delivery_id=?", (delivery_id,))
        return found[0] if found else None

    def deliveries(self, task_id: str | None = None, state: str | None = None,
                   limit: int = 1000) -> list[dict]:
        """Deliveries, newest first, of one task and in one state when given."""
        where = [f"{column}=?" for column, value in (("task_id", task_id), ("state", state))
                 if value is not None]
        values = tuple(value for value in (task_id, state) if value is not None)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._deliveries(f"{clause} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                (*values, limit))

    def due_deliveries(self, now: float, limit: int) -> list[dict]:
        """Pending deliveries whose next attempt is due, the longest due first."""
        return self._deliveries("WHERE state='pending' AND next_at<=? ORDER BY next_at LIMIT ?",
                                (now, limit))

    def next_delivery_at(self, skip: list[str] = ()) -> float | None:
        """When the next pending delivery (none of `skip`) is due."""
        marks = ", ".join("?" * len(skip))
        (at,) = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE state='pending' AND "
                                 f"delivery_id NOT IN ({marks})", tuple(skip)).fetchone()
        return at

    def update_delivery(self, delivery_id: str, attempt: dict | None = None, **fields) -> None:
        """Change a delivery's columns, and journal an attempt with it (one transaction)."""
        sets = ", ".join(f"{column}=?" for column in fields)
        with self.transaction():
            if attempt is not None:
                self._db.execute("INSERT INTO delivery_attempts (delivery_id, at, duration_s, "
                                 "status, error, excerpt) VALUES (?,?,?,?,?,?)",
                                 (delivery_id, attempt["at"], attempt["duration_s"],
                                  attempt["status"], attempt["error"], attempt["excerpt"]))
            self._db.execute(f"UPDATE deliveries SET {sets} WHERE delivery_id=?",
                             (*fields.values(), delivery_id))

    def delivery_attempts(self, delivery_id: str) -> list[dict]:
        rows = self._db.execute("SELECT at, duration_s, status, error, excerpt FROM "
                                "delivery_attempts WHERE delivery_id=? ORDER BY attempt_id",
                                (delivery_id,))
        return [dict(zip(("at", "duration_s", "status", "error", "excerpt"), row)) for row in rows]

    def count_deliveries(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))

    def unannounced(self) -> list[TaskRecord]:
        """Finished tasks with a webhook whose run has no delivery of its end (a stop between
        the two commits)."""
        rows = self._db.execute(
            "SELECT record FROM tasks t WHERE state IN (?,?,?) AND "
            "json_extract(record, '$.spec.webhook_url') IS NOT NULL AND NOT EXISTS ("
            "SELECT 1 FROM deliveries d WHERE d.task_id=t.task_id AND d.run_seq=t.seq AND "
            "d.event='task.' || t.state)", TERMINAL).fetchall()
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]

    # -- retention (raydemucs.retention.sweeps) -------------------------------------------------------
    def held_records(self, input_sha256: str | None = None) -> list[TaskRecord]:
        """Records of tasks whose input or stems the service holds (uploaded or kept); only
        those of one input when given."""
        rows = self._db.execute(
            "SELECT record FROM tasks WHERE (json_extract(record, '$.spec.kept') OR "
            "json_extract(record, '$.spec.uploaded')) AND (? IS NULL OR "
            "json_extract(record, '$.spec.input_sha256')=?)", (input_sha256, input_sha256))
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows.fetchall()]

    def mark_expired(self, task_id: str, seq: int, at: float) -> bool:
        """Mark a finished run's files gone; False if the task changed since (run again, or
        marked already)."""
        cursor = self._db.execute(
            "UPDATE tasks SET record=json_set(record, '$.expired_at', ?) WHERE task_id=? AND "
            "seq=? AND state IN (?,?,?) AND json_extract(record, '$.expired_at') IS NULL",
            (at, task_id, seq, *TERMINAL))
        return cursor.rowcount == 1

    def finished_before(self, before: float, limit: int = 1000) -> list[TaskRecord]:
        """Finished records that ended before `before` and have no delivery still pending."""
        rows = self._db.execute(
            "SELECT record FROM tasks t WHERE state IN (?,?,?) AND "
            "json_extract(record, '$.finished_at') < ? AND NOT EXISTS (SELECT 1 FROM deliveries "
            "d WHERE d.task_id=t.task_id AND d.state='pending') ORDER BY seq LIMIT ?",
            (*TERMINAL, before, limit)).fetchall()
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]

    def drop(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Remove finished runs' rows with their deliveries and attempts (one transaction); the
        records dropped (not those run again since they were read)."""
        dropped = []
        with self.transaction():
            for record in records:
                cursor = self._db.execute("DELETE FROM tasks WHERE task_id=? AND seq=? AND "
                                          "state IN (?,?,?)", (record.task_id, record.seq, *TERMINAL))
                if cursor.rowcount != 1:
                    continue
                self._db.execute("DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT "
                                 "delivery_id FROM deliveries WHERE task_id=?)", (record.task_id,))
                self._db.execute("DELETE FROM deliveries WHERE task_id=?", (record.task_id,))
                dropped.append(record)
        return dropped
