"""The scheduler actor's calls about what the service holds for a client, whose bytes never pass
through the actor: uploads (a file on this node its sender appends to, then its task), the
leases that cap what a key holds at once (uploads in progress, event streams), and a task's
stored stems (where they are, for the client or replica that reads them there; purge).
"""
from __future__ import annotations

import asyncio
import time

from ..core.errors import Gone, InvalidInput
from ..core.task import TaskRecord, TaskState
from ..storage.folders import open_folder
from .leases import STREAM


class HoldingCalls:
    """A mixin of `SchedulerService`, whose state these calls use: `config`, `core`, `intake`,
    `leases`, `uploads`, `sweeper`; `_ready` (awaited first), `_changed` and `get_task`."""

    # -- leases: what a key may hold a few of at once (the HTTP front door) ------------------
    async def take_lease(self, kind: str, owner: str, max_queued: int | None = None) -> dict:
        """A lease on one of `owner`'s uploads (`http.max_uploads_per_key` at once, each
        counted as a task against `max_queued` until its task is submitted) or event streams
        (`http.max_streams_per_key`, `http.max_streams` in all): `{"id", "renew_s"}`, renewed
        every `renew_s` by its holder, released when it ends; it lapses should its holder die."""
        await self._ready()
        http = self.config.http
        if kind == STREAM:
            lease_id = self.leases.take(STREAM, owner, http.max_streams_per_key, http.max_streams)
        else:
            lease_id = self.intake.take_upload(owner, max_queued, http.max_uploads_per_key)
        return {"id": lease_id, "renew_s": self.leases.ttl_s / 3}

    async def renew_leases(self, lease_ids: list[str]) -> list[str]:
        """Keep a replica's leases; the ids of those that lapsed (their holder was silent too
        long) or ended."""
        return [lease_id for lease_id in lease_ids if not self.leases.renew(lease_id)]

    async def release_lease(self, lease_id: str) -> None:
        self.leases.release(lease_id)

    # -- stems and what the service holds -----------------------------------------------------
    def _unexpired(self, task_id: str) -> TaskRecord:
        """A task whose stored files are still here; `Gone` for one whose files went."""
        record = self.core.get(task_id)
        if record.expired_at is not None:
            raise Gone(f"task {task_id}'s stored files were deleted at "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(record.expired_at))}"
                       " (retention.results_ttl_s, or a purge)")
        return record

    async def fetch(self, task_id: str) -> dict:
        """Where a succeeded task's stems are, for a client that cannot read them there: a
        `stems_place` (`{"location", "node", "remote"}`), read by the client itself."""
        await self._ready()
        record = self._unexpired(task_id)
        if record.state is not TaskState.SUCCEEDED:
            raise InvalidInput(f"task {task_id} is {record.state.value}; only a succeeded task's "
                               "stems can be fetched")
        return self._place(record)

    async def stems_place(self, task_id: str) -> dict:
        """Where a task's stems are: `{"location", "node", "remote"}` (the node that holds a
        local folder: the one whose worker ran the task; none for a store's)."""
        await self._ready()
        return self._place(self._unexpired(task_id))

    def _place(self, record: TaskRecord) -> dict:
        folder = open_folder(record.spec.output_location, self.config.storage)
        return {"location": folder.location, "node": None if folder.remote else record.node,
                "remote": folder.remote}

    async def purge(self, task_id: str) -> dict:
        """Delete a finished task's stored stems and input now (see `Sweeper.purge`)."""
        await self._ready()
        outcome = await self.sweeper.purge(self.core.get(task_id))
        return {**outcome, "task": await self.get_task(task_id)}

    # -- uploads written in chunks by the HTTP front door -------------------------------------
    async def upload_open(self, file_name: str) -> dict:
        """Open an upload: `{"id", "path", "node"}`, the file on this node its sender writes the
        bytes to itself (`storage.nodes.append`), never through this process."""
        await self._ready()
        return await asyncio.to_thread(self.uploads.open, file_name)

    async def upload_abort(self, upload_id: str) -> None:
        await asyncio.to_thread(self.uploads.abort, upload_id)

    async def submit_upload(self, spec: dict, upload_id: str, max_queued: int | None = None,
                            lease: str | None = None) -> dict:
        """Accept a task whose input was streamed in chunks under the upload `lease` (see
        `Intake.submit_upload`); its view."""
        await self._ready()
        task_id = await self.intake.submit_upload(spec, upload_id, max_queued, lease)
        self._changed(dispatch=True)
        return self.core.view(task_id)
