"""Retention: what the service holds (uploaded inputs under its state directory, the stems it
keeps for uploaded tasks: there, on the node that ran each, or in the store of
`storage.kept_uri`) goes when it expires, finished journal rows after
`retention.records_ttl_s`, and a finished task's files at once when it is purged.

A sweep reads the journal and the disk in a thread (`scan`), then retires what expired on the
scheduler's loop (`retire`: marks in the journal, renames into a trash folder), where no task can
be submitted, run again or retried in between; the trash is emptied in a thread again. Never
touched: a folder a user named with `-o` (only folders under the service's results are), and the
input of an unfinished task. A task whose files went stays in the journal with `expired_at`.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from ..core.config import RetentionConfig
from ..core.errors import InvalidInput, TaskConflict
from ..core.names import printable
from ..core.task import TaskRecord
from ..journal import Journal
from ..storage import nodes, uris
from ..storage.folders import RemoteFolder
from ..storage.uploads import UploadStore

logger = logging.getLogger(__name__)

TRASH = ".trash"
RECORDS_PER_SWEEP = 1000  # journal rows dropped per sweep (the next sweep follows at once)


@dataclass
class Due:
    """What a scan found due at `scanned_at`: finished runs whose stems expired, stored inputs
    no task needs any more, records to drop; and the next expiry after those."""

    scanned_at: float
    stems: list[TaskRecord] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # SHA-256 names under uploads/
    records: list[TaskRecord] = field(default_factory=list)
    next_expiry_at: float | None = None


@dataclass
class Retired:
    """What a sweep retired: finished runs whose stems went, stored inputs, dropped records."""

    stems: list[TaskRecord]
    inputs: list[str]
    records: list[TaskRecord]

    def expired(self) -> list[TaskRecord]:
        """The tasks whose watchers hear that their files (or records) went."""
        return list({record.task_id: record for record in self.stems + self.records}.values())


class Retention:
    """Sweeps and purges of one service's state directory, with an injected clock."""

    def __init__(self, config: RetentionConfig, journal: Journal, uploads: UploadStore,
                 clock: Callable[[], float] = time.time):
        self.config, self.journal, self.uploads, self.clock = config, journal, uploads, clock
        self.trash = uploads.inputs.parent / TRASH
        self.leaving: list[tuple[str, str | None]] = []  # retired stems `(location, node)`

    # -- reading (a thread) --------------------------------------------------------------------
    def scan(self) -> Due:
        """What expired by now, read from the journal and the uploads folder (blocking)."""
        due = Due(self.clock())
        users: dict[str, list[TaskRecord]] = defaultdict(list)
        expiries = []
        for record in self.journal.tasks.held_records():
            if record.spec.uploaded and record.spec.input_sha256:
                users[record.spec.input_sha256].append(record)
            at = self._stems_expire_at(record)
            if at is not None:
                (due.stems.append(record) if at <= due.scanned_at else expiries.append(at))
        for sha256, at in self._inputs_expire_at(users):
            (due.inputs.append(sha256) if at <= due.scanned_at else expiries.append(at))
        if self.config.records_ttl_s is not None:
            expiries.append(self._records_expire(due))
        due.next_expiry_at = min((at for at in expiries if at is not None), default=None)
        return due

    def _records_expire(self, due: Due) -> float | None:
        """Find the records due (a page at a time); when the next one is (now, when a full
        page leaves more behind it)."""
        ttl, cutoff = self.config.records_ttl_s, due.scanned_at - self.config.records_ttl_s
        due.records = self.journal.tasks.finished_before(cutoff, RECORDS_PER_SWEEP)
        if len(due.records) == RECORDS_PER_SWEEP:
            return due.scanned_at
        first = self.journal.tasks.first_finished_after(cutoff)
        return None if first is None else first + ttl

    @staticmethod
    def _holds_stems(record: TaskRecord) -> bool:
        """Whether the service still keeps stems of this finished run."""
        return record.spec.kept and record.expired_at is None and record.state.is_terminal()

    def _stems_expire_at(self, record: TaskRecord) -> float | None:
        ttl = self.config.results_ttl_s
        if ttl is None or not self._holds_stems(record):
            return None
        return (record.finished_at or record.submitted_at) + ttl

    def _inputs_expire_at(self, users: dict[str, list[TaskRecord]]):
        """`(sha256, when)` of each stored input no unfinished task uses: `uploads_ttl_s` after
        its last use (stored, reused, a task using it submitted or ended)."""
        ttl = self.config.uploads_ttl_s
        if ttl is None or not self.uploads.inputs.is_dir():
            return
        for path in self.uploads.inputs.iterdir():
            tasks = users.get(path.name, [])
            if path.name.startswith(".") or any(not t.state.is_terminal() for t in tasks):
                continue
            try:
                stored = path.stat().st_mtime
            except FileNotFoundError:
                continue
            yield path.name, max([stored, *(t.finished_at or t.submitted_at for t in tasks)]) + ttl

    def held_bytes(self) -> dict[str, int]:
        """What the service holds: its stored inputs and the stems it keeps, in bytes."""
        inputs = self.uploads.inputs
        uploads = sum(nodes.size(str(p), None) or 0 for p in inputs.iterdir()
                      if not p.name.startswith(".")) if inputs.is_dir() else 0
        return {"uploads_bytes": uploads, "results_bytes": self._results_bytes()}

    def _results_bytes(self) -> int:
        """The stems kept in the results folder of every live node, each counted there, and in
        the `storage.kept_uri` store (a node or store that does not answer is left out, with a
        warning)."""
        total = self._store_bytes()
        for node in nodes.alive():
            try:
                total += nodes.size(str(self.uploads.results), node) or 0
            except Exception as exc:  # a node gone meanwhile, or one that does not answer
                logger.warning("retention: the stems kept on node %s could not be counted: %s",
                               node, str(exc).splitlines()[0] if str(exc) else repr(exc))
        return total

    def _store_bytes(self) -> int:
        kept_uri = self.uploads.kept_uri
        if not kept_uri:
            return 0
        try:
            fs, path = uris.open_uri(kept_uri, self.uploads.storage)
            return fs.du(path) if fs.exists(path) else 0
        except Exception as exc:  # a store down: counted at the next sweep
            logger.warning("retention: the stems kept in %s could not be counted: %s",
                           printable(kept_uri), uris.reason(exc))
            return 0

    def empty_trash(self) -> None:
        """Delete what was moved to the trash (the folder stays: a retire may be moving in), and
        the retired stems in a store or on other nodes."""
        while self.leaving:
            location, node = self.leaving.pop()
            try:
                if uris.is_uri(location):
                    RemoteFolder(location, self.uploads.storage).remove()
                else:
                    nodes.remove(location, node)
            except Exception as exc:  # a node gone, a store down: its stems went with it, or stay
                logger.warning("retention: the expired stems at %s could not be deleted: %s",
                               location, str(exc).splitlines()[0] if str(exc) else repr(exc))
        for path in self.trash.iterdir() if self.trash.is_dir() else ():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # -- acting (the scheduler's loop: quick renames and journal marks) ------------------------
    def retire(self, due: Due, in_use: set[str], active: set[str]) -> Retired:
        """Retire what `due` found, but no input in `in_use` (by an unfinished task now) and no
        record in `active` (run again since the scan)."""
        self.trash.mkdir(parents=True, exist_ok=True)
        stems = [record for record in due.stems if self._retire_stems(record)]
        older_than = min(due.scanned_at, self.clock() - (self.config.uploads_ttl_s or 0.0))
        inputs = [sha256 for sha256 in due.inputs if sha256 not in in_use and
                  self.uploads.retire_input(sha256, older_than, self.trash)]
        records = [record for record in due.records if record.task_id not in active]
        stems += [record for record in records
                  if self._holds_stems(record) and self._retire_stems(record)]
        dropped = self.journal.drop(records) if records else []
        if stems or inputs or dropped:
            logger.info("retention: %d task(s) stems, %d input(s) and %d record(s) expired",
                        len(stems), len(inputs), len(dropped))
        return Retired(stems, inputs, dropped)

    def _retire_stems(self, record: TaskRecord) -> bool:
        """Mark a finished run's stems expired and move them to the trash (those in a store or
        on another node: to be deleted with it); False if the task changed since it was read,
        or its folder is not one the service keeps."""
        location = record.spec.output_location
        if not record.spec.kept or not self.uploads.keeps(location):
            logger.warning("task %s: %s is not a folder the service keeps; left alone",
                           record.task_id, location)
            return False
        if not self.journal.tasks.mark_expired(record.task_id, record.seq, self.clock()):
            return False
        if uris.is_uri(location) or not nodes.is_here(record.node):
            self.leaving.append((location, record.node))
        elif os.path.exists(location):
            os.replace(location, self.trash / f"stems-{record.task_id}-{uuid.uuid4().hex[:8]}")
        return True

    def purge(self, record: TaskRecord, users: list[TaskRecord], in_use: set[str],
              read_at: float) -> dict:
        """Delete a finished task's stems and its input now (moved to the trash); the input
        stays while another task needs it (unfinished, or its files not expired). `users` are
        the tasks of the same input as read at `read_at`."""
        if not record.state.is_terminal():
            raise TaskConflict(f"task {record.task_id} is {record.state.value}; cancel it first "
                               "(a purge deletes a finished task's files)")
        if not record.spec.kept:
            raise InvalidInput(f"task {record.task_id} keeps nothing in the service: its stems "
                               f"are in {record.spec.output_location}, a folder it named")
        self.trash.mkdir(parents=True, exist_ok=True)
        stems = self._retire_stems(record)
        sha256, others = record.spec.input_sha256, [
            user for user in users if user.task_id != record.task_id
            and (not user.state.is_terminal() or user.expired_at is None)]
        kept_for = len(others) + (sha256 in in_use)
        gone = bool(record.spec.uploaded and sha256 and not kept_for
                    and self.uploads.retire_input(sha256, read_at, self.trash))
        logger.info("task %s purged: stems %s, input %s", record.task_id,
                    "deleted" if stems else "already gone",
                    "deleted" if gone else f"kept for {kept_for} other task(s)" if kept_for else
                    "not the service's")
        return {"task_id": record.task_id, "stems_deleted": stems, "input_deleted": gone,
                "input_kept_for": kept_for}
