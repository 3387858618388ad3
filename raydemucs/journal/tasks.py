"""The tasks table: every accepted task's record, committed before it is acknowledged.

A task is unique per (owner, project, file id): the owner is the API key that created it over
HTTP, '' for the Python API and the CLI. `seq` orders submissions (a rerun takes a new one).
"""
from __future__ import annotations

import json
import sqlite3
from typing import Iterator

from ..core.task import TaskRecord, TaskState

SCHEMA = """
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
"""
TERMINAL = tuple(state.value for state in TaskState if state.is_terminal())
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


def migrate(db: sqlite3.Connection) -> None:
    """Bring a journal written by an older version to today's columns."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(tasks)")]
    if columns and "owner" not in columns:
        db.executescript("BEGIN;" + _ADD_OWNERS.format(schema=SCHEMA) + "COMMIT;")
    elif columns and "batch_id" not in columns:  # journals written before batches
        db.executescript("ALTER TABLE tasks ADD COLUMN batch_id TEXT;"
                         "ALTER TABLE tasks ADD COLUMN duration_s REAL;")


def _row(record: TaskRecord) -> tuple:
    spec = record.spec
    return (spec.task_id, spec.owner, spec.project, spec.file_id, record.seq, record.state.value,
            json.dumps(record.to_dict()), spec.batch_id, spec.duration_s)


def _records(rows) -> list[TaskRecord]:
    return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]


class TaskTable:
    """Task records by id; the journal's `transaction()` groups writes."""

    def __init__(self, journal):
        self.journal, self.db = journal, journal.db
        self._seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]

    def last_seq(self) -> int:
        """The last submission number given."""
        return self._seq

    def next_seq(self) -> int:
        """The next submission number (kept here: this process is the table's only writer)."""
        self._seq += 1
        return self._seq

    # -- writing ------------------------------------------------------------------------------
    def insert(self, record: TaskRecord) -> TaskRecord:
        """Commit a new record; if its (owner, project, file id) exists, return the stored one."""
        spec = record.spec
        try:
            self.db.execute(_INSERT, _row(record))
        except sqlite3.IntegrityError:
            existing = self.find(spec.project, spec.file_id, spec.owner)
            if existing is None:
                raise
            return existing
        return record

    def insert_many(self, records: list[TaskRecord]) -> None:
        """Commit new records in one transaction (their keys were checked to be free)."""
        with self.journal.transaction():
            self.db.executemany(_INSERT, [_row(record) for record in records])

    def save(self, record: TaskRecord) -> None:
        """Commit a record's new state (one transaction, synced, unless inside one)."""
        self.db.execute("UPDATE tasks SET state=?, seq=?, record=? WHERE task_id=?",
                        (record.state.value, record.seq, json.dumps(record.to_dict()),
                         record.task_id))

    def mark_expired(self, task_id: str, seq: int, at: float) -> bool:
        """Mark a finished run's files gone; False if the task changed since (run again, or
        marked already)."""
        cursor = self.db.execute(
            "UPDATE tasks SET record=json_set(record, '$.expired_at', ?) WHERE task_id=? AND "
            "seq=? AND state IN (?,?,?) AND json_extract(record, '$.expired_at') IS NULL",
            (at, task_id, seq, *TERMINAL))
        return cursor.rowcount == 1

    def delete_finished(self, record: TaskRecord) -> bool:
        """Delete a finished run's row; False if the task ran again since it was read."""
        cursor = self.db.execute("DELETE FROM tasks WHERE task_id=? AND seq=? AND state IN "
                                 "(?,?,?)", (record.task_id, record.seq, *TERMINAL))
        return cursor.rowcount == 1

    # -- reading ------------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        return next(iter(_records(self.db.execute("SELECT record FROM tasks WHERE task_id=?",
                                                  (task_id,)))), None)

    def find(self, project: str, file_id: str, owner: str = "") -> TaskRecord | None:
        rows = self.db.execute("SELECT record FROM tasks WHERE owner=? AND project=? AND "
                               "file_id=?", (owner, project, file_id))
        return next(iter(_records(rows)), None)

    def unfinished(self) -> list[TaskRecord]:
        """Queued and running records, in submission order."""
        return _records(self.db.execute(
            "SELECT record FROM tasks WHERE state IN (?, ?) ORDER BY seq",
            (TaskState.QUEUED.value, TaskState.RUNNING.value)))

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
        return _records(self.db.execute(
            f"SELECT record FROM tasks {clause} ORDER BY seq DESC LIMIT ?", (*values, limit)))

    def pages(self, state: TaskState | None, limit: int, page: int,
              **filters) -> Iterator[list[TaskRecord]]:
        """`list`'s records (`filters`: its keywords), `page` of them a query, newest first."""
        left, before_seq = limit, filters.pop("before_seq", None)
        while left > 0:
            records = self.list(state, min(page, left), before_seq=before_seq, **filters)
            if records:
                yield records
            if len(records) < min(page, left):
                return
            left, before_seq = left - len(records), records[-1].seq

    def count_by_state(self) -> dict[str, int]:
        counts = {state.value: 0 for state in TaskState}
        counts.update(dict(self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")))
        return counts

    def count_by_owner(self) -> list[tuple[str, str, int]]:
        """`(owner, state, tasks)` rows."""
        return self.db.execute("SELECT owner, state, COUNT(*) FROM tasks GROUP BY owner, state"
                               ).fetchall()

    # -- batches ------------------------------------------------------------------------------
    def batch_records(self, batch_id: str, states: tuple[TaskState, ...], after_seq: int,
                      through_seq: int, limit: int) -> list[TaskRecord]:
        """A page of a batch's records in those states, in submission order: those with a
        `seq` after `after_seq` and up to `through_seq`."""
        marks = ",".join("?" * len(states))
        return _records(self.db.execute(
            f"SELECT record FROM tasks WHERE batch_id=? AND state IN ({marks}) AND seq>? AND "
            "seq<=? ORDER BY seq LIMIT ?",
            (batch_id, *(state.value for state in states), after_seq, through_seq, limit)))

    def batch_tallies(self, batch_id: str | None = None) -> list[tuple]:
        """`(batch id, state, tasks, audio seconds)` of every batch with an unfinished task (what
        a restarted scheduler keeps in memory), or of one batch when given."""
        if batch_id is not None:
            where, values = "batch_id=?", (batch_id,)
        else:
            where, values = ("batch_id IN (SELECT DISTINCT batch_id FROM tasks WHERE state IN "
                             "(?, ?) AND batch_id IS NOT NULL)",
                             (TaskState.QUEUED.value, TaskState.RUNNING.value))
        return self.db.execute("SELECT batch_id, state, COUNT(*), COALESCE(SUM(duration_s), 0) "
                               f"FROM tasks WHERE {where} GROUP BY batch_id, state",
                               values).fetchall()

    # -- retention ----------------------------------------------------------------------------
    def held_records(self, input_sha256: str | None = None) -> list[TaskRecord]:
        """Records of tasks whose input or stems the service holds (uploaded or kept); only
        those of one input when given."""
        return _records(self.db.execute(
            "SELECT record FROM tasks WHERE (json_extract(record, '$.spec.kept') OR "
            "json_extract(record, '$.spec.uploaded')) AND (? IS NULL OR "
            "json_extract(record, '$.spec.input_sha256')=?)", (input_sha256, input_sha256)))

    def first_finished_after(self, after: float) -> float | None:
        """When the first finished record that ended at or after `after` ended (records with a
        pending delivery wait for it, so they do not count)."""
        (at,) = self.db.execute(
            "SELECT MIN(json_extract(record, '$.finished_at')) FROM tasks t WHERE state IN "
            "(?,?,?) AND json_extract(record, '$.finished_at') >= ? AND NOT EXISTS (SELECT 1 FROM "
            "deliveries d WHERE d.task_id=t.task_id AND d.state='pending')",
            (*TERMINAL, after)).fetchone()
        return at

    def finished_before(self, before: float, limit: int = 1000) -> list[TaskRecord]:
        """Finished records that ended before `before` and have no delivery still pending."""
        return _records(self.db.execute(
            "SELECT record FROM tasks t WHERE state IN (?,?,?) AND "
            "json_extract(record, '$.finished_at') < ? AND NOT EXISTS (SELECT 1 FROM deliveries "
            "d WHERE d.task_id=t.task_id AND d.state='pending') ORDER BY seq LIMIT ?",
            (*TERMINAL, before, limit)))
