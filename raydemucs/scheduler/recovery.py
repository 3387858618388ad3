"""What a restarted scheduler reads before it takes over: the unfinished records, the output
folders they may already have completed, and the counts (slow work, read off the event loop)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import StorageConfig
from ..journal.tasks import TaskStore
from ..storage.folders import open_folder


@dataclass
class Recovery:
    """What a restarted scheduler reads from the journal and the output folders (slow: off the loop)."""

    unfinished: list  # queued and running records, in submission order
    finished: dict = field(default_factory=dict)  # task id -> {stem: location} already complete
    counts: dict = field(default_factory=dict)  # records by state
    batches: list = field(default_factory=list)  # (batch id, state, tasks, audio seconds)


def read_recovery(store: TaskStore, storage: StorageConfig) -> Recovery:
    """Read what `Scheduler.recover` needs: blocking disk and object-store work."""
    unfinished = store.unfinished()
    finished = {record.task_id: open_folder(record.spec.output_location, storage).finished(
        record.task_id) for record in unfinished}
    return Recovery(unfinished, {k: v for k, v in finished.items() if v is not None},
                    store.count_by_state(), store.batch_tallies())
