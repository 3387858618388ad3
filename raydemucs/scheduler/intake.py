"""What comes in to the scheduler: tasks checked before anything is kept (their key, model and
webhook, their owner's quota), and the inputs uploaded with them, kept by SHA-256.

An owner's quota (`max_queued`, an API key's cap) counts its unfinished tasks, the tasks of
its requests still being accepted (their bytes checked and stored off the event loop) and its
uploads in progress (a lease each, taken before their bytes are read), so that concurrent
requests of one key cannot all pass the same check.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses

from ..core.errors import InvalidInput, OverQuota, RayDemucsError
from ..core.task import TaskRecord, TaskSpec
from ..storage.uploads import UploadStore
from ..webhooks.targets import check_target
from .leases import UPLOAD, Leases
from .scheduling import Scheduler

Checked = list[tuple[TaskSpec, TaskRecord | None]]  # each task with the known task it repeats


class Intake:
    """Accepts tasks into `core`; `allow_private` is `webhooks.allow_private`; `leases` holds
    the uploads in progress."""

    def __init__(self, core: Scheduler, uploads: UploadStore, allow_private: bool,
                 leases: Leases):
        self.core, self.uploads, self.allow_private = core, uploads, allow_private
        self.leases = leases
        self._accepting: collections.Counter = collections.Counter()  # owner -> tasks in flight

    async def check(self, specs: list[dict]) -> Checked:
        """Each task (pointed at the service's results when kept) with the known task it
        repeats; one refused task raises, before anything is kept."""
        checked = []
        for spec in map(TaskSpec.from_dict, specs):
            spec = self.uploads.keep(spec) if spec.kept else spec
            checked.append((spec, self.core.check(spec)))
            if spec.webhook_url:  # no DNS: names are checked when a delivery connects
                check_target(spec.webhook_url, self.allow_private)
        return checked

    def take_upload(self, owner: str, max_queued: int | None, cap: int) -> str:
        """A lease on one of `owner`'s uploads (`cap` at once), taken before its bytes are read:
        `OverQuota` past `cap`, or when one more task would take the owner past `max_queued`.
        It counts as an unfinished task until its task is submitted or the upload ends."""
        if max_queued is not None:
            self._check_room(self._held(owner), 1, max_queued)
        return self.leases.take(UPLOAD, owner, cap)

    def _held(self, owner: str, besides: str | None = None) -> int:
        """The owner's unfinished tasks, those being accepted and its uploads in progress
        (other than the upload `besides`)."""
        return (self.core.unfinished_of(owner) + self._accepting[owner]
                + self.leases.held(UPLOAD, owner, besides))

    @staticmethod
    def _check_room(held: int, new: int, max_queued: int) -> None:
        if held + new > max_queued:
            raise OverQuota(f"this key has {held} unfinished task(s) and may have {max_queued}; "
                            "submit again when some have ended")

    @contextlib.contextmanager
    def quota(self, checked: Checked, max_queued: int | None, upload: str | None = None):
        """`OverQuota` when the tasks would take their owner past `max_queued` unfinished ones
        (counting those being accepted and its uploads in progress, besides the lease `upload`
        that these tasks come from); held until the block ends."""
        new = sum(existing is None or existing.state.is_terminal() for _, existing in checked)
        if max_queued is None or not checked or not new:
            yield
            return
        owner = checked[0][0].owner
        self._check_room(self._held(owner, upload), new, max_queued)
        self._accepting[owner] += new
        try:
            yield
        finally:
            self._accepting[owner] -= new
            if not self._accepting[owner]:
                del self._accepting[owner]

    async def submit(self, specs: list[dict], max_queued: int | None) -> list[dict]:
        """Accept tasks, each committed before this returns; an uploaded task's input must be
        stored already (see `submit_upload`)."""
        checked = await self.check(specs)
        with self.quota(checked, max_queued):
            tasks = [await asyncio.to_thread(self.uploads.accept, spec) if spec.uploaded else spec
                     for spec, _ in checked]
            return [self.core.submit(task).to_dict() for task in tasks]

    async def submit_upload(self, spec: dict, upload_id: str, max_queued: int | None,
                            lease: str | None = None) -> str:
        """Accept a task whose input was streamed in chunks (under the upload `lease`, released
        here): every refusal (the task, the quota, the bytes) comes before the upload is kept,
        so a refused request stores nothing; the same ask as a known task returns that task.
        Its task id."""
        try:
            [(task, existing)] = await self.check([spec])
            with self.quota([(task, existing)], max_queued, lease):
                if existing is not None and not self.core.reruns(existing, task):
                    return existing.task_id
                kept = await asyncio.to_thread(self.uploads.close, upload_id)
                if kept["sha256"] != task.input_sha256:
                    raise InvalidInput("the upload's bytes changed on the way (SHA-256 mismatch); "
                                       "send it again")
                task = dataclasses.replace(task, duration_s=kept["duration_s"])
                return self.core.submit(task).task_id
        finally:
            if lease is not None:  # the task (if any) counts from here on
                self.leases.release(lease)
            await asyncio.to_thread(self.uploads.abort, upload_id)  # nothing left once closed

    def submit_batch(self, specs: list[dict]) -> list[dict]:
        """A chunk of a batch, the new tasks in one journal transaction: per spec its task id,
        key, state and `outcome` (`queued`, `skipped`, `known`), or `error` for a spec refused
        alone. Answers stay small: a batch may be 100,000 tasks."""
        tasks = [TaskSpec.from_dict(spec) for spec in specs]
        tasks = [self.uploads.keep(task) if task.kept else task for task in tasks]
        replies = []
        for task, answer in zip(tasks, self.core.submit_many(tasks)):
            reply = {"project": task.project, "file_id": task.file_id, "input": task.input_path}
            if isinstance(answer, RayDemucsError):
                reply["error"] = answer.to_dict()
            else:
                record, outcome = answer
                reply.update(task_id=record.task_id, state=record.state.value, outcome=outcome,
                             batch_id=record.spec.batch_id)
            replies.append(reply)
        return replies
