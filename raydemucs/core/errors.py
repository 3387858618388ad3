"""One hierarchy of errors, mapped to exit codes by the CLI and to dicts across Ray."""
from __future__ import annotations


class RayDemucsError(Exception):
    """Base class of every error raydemucs raises on purpose."""

    exit_code = 1
    retryable = False

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "message": str(self)}


class ConfigError(RayDemucsError):
    """Raised when a config key is unknown or a value is out of its allowed range."""

    exit_code = 2


class InvalidInput(RayDemucsError):
    """Raised when an input file, a name or a separation option cannot be accepted."""

    exit_code = 2


class InvalidName(InvalidInput):
    """Raised when a project name or file id is unsafe as a folder name."""


class InputTooLarge(InvalidInput):
    """Raised when an input is over `input.max_file_mb`, or a request's body over its limit
    (HTTP 413)."""


class BodyTimeout(InvalidInput):
    """Raised when a request's body stops arriving, or takes too long to arrive (HTTP 408)."""


class TaskConflict(InvalidInput):
    """Raised when a (project, file id) already names a task that asked for something else, or
    when a task is asked for what its state does not allow (a purge of an unfinished one)."""


class OutputNotWritable(InvalidInput):
    """Raised at submit when the output directory cannot be written."""


class ModelNotFound(RayDemucsError):
    """Raised when a model cannot be found or loaded (unknown name, no network, bad checkpoint)."""

    exit_code = 2


class TaskNotFound(RayDemucsError):
    """Raised when a task id is not in the journal."""

    exit_code = 2


class TaskTimeout(RayDemucsError):
    """Raised when an attempt runs past its deadline."""

    retryable = True


class WorkerDied(RayDemucsError):
    """Raised when the worker holding an attempt died (process killed, node lost)."""

    retryable = True


class ServiceRestarted(WorkerDied):
    """An attempt cut off by the scheduler's restart; `restarts`: how many in a row cut this
    task's attempts (a task that kills the service fails when they pass `tasks.max_retries`)."""

    def __init__(self, message: str, restarts: int):
        super().__init__(message)
        self.restarts = restarts

    def to_dict(self) -> dict:
        return {**super().to_dict(), "restarts": self.restarts}

    @staticmethod
    def counted(error: dict | None) -> int:
        """The restarts in a row a record's last error counts (0: it was not one)."""
        return (error or {}).get("restarts", 0) if (error or {}).get("type") == "ServiceRestarted" \
            else 0


class OutOfMemory(RayDemucsError):
    """Raised when an attempt ran out of memory; `segment_s` is the segment length it used."""

    retryable = True

    def __init__(self, message: str, segment_s: float | None = None):
        super().__init__(message)
        self.segment_s = segment_s

    def to_dict(self) -> dict:
        return {**super().to_dict(), "segment_s": self.segment_s}


class OutputWriteFailed(RayDemucsError):
    """Raised when writing stems failed mid-task (disk full, directory became unwritable)."""

    retryable = True


class StorageUnavailable(RayDemucsError):
    """Raised when remote storage (s3://, gs://, ...) cannot be reached or fails a read or write."""

    retryable = True


class PartMissing(RayDemucsError):
    """Raised when an ensemble part's cached stems are gone before they were combined: the
    part is made again."""

    retryable = True


class SeparationAborted(RayDemucsError):
    """Raised inside a worker when the scheduler asked it to stop the current task."""


class TaskCancelled(RayDemucsError):
    """Raised when waiting on a task that was cancelled."""


class TaskFailed(RayDemucsError):
    """Raised when waiting on a task that ended failed; carries its record."""

    def __init__(self, message: str, record: dict | None = None):
        super().__init__(message)
        self.record = record


class WaitTimedOut(RayDemucsError):
    """Raised when `wait` gives up before its tasks ended (the tasks go on)."""


class Unauthenticated(RayDemucsError):
    """Raised when an HTTP request carries no API key, or one the service does not know."""

    exit_code = 2


class OverQuota(RayDemucsError):
    """Raised when an API key already has its `max_queued` unfinished tasks (HTTP 429)."""


class OverCeiling(RayDemucsError):
    """Raised when a task asks for more than its API key's ceilings allow: a higher priority,
    more shifts or overlap (HTTP 403)."""


class ServiceUnavailable(RayDemucsError):
    """Raised when no Ray cluster or no raydemucs service can be reached."""

    exit_code = 3


class ShuttingDown(ServiceUnavailable):
    """Raised when a task is submitted to a service that is draining."""


class Gone(RayDemucsError):
    """Raised when what was asked for existed but is no longer kept: a task's stored input or
    stems deleted by retention or a purge (HTTP 410)."""

    exit_code = 2


class InternalError(RayDemucsError):
    """Raised for an unexpected exception inside a worker; not retried."""


_BY_NAME = {cls.__name__: cls for cls in (
    ConfigError, InvalidInput, InvalidName, InputTooLarge, TaskConflict, OutputNotWritable,
    Unauthenticated, OverQuota, OverCeiling, ModelNotFound, TaskNotFound,
    TaskTimeout, WorkerDied, OutOfMemory, OutputWriteFailed, StorageUnavailable, PartMissing,
    SeparationAborted,
    TaskCancelled, WaitTimedOut, ServiceUnavailable, ShuttingDown, Gone, InternalError,
)}


def error_from_dict(data: dict) -> RayDemucsError:
    """Rebuild an error sent across a process boundary as `{"type", "message", ...}`."""
    cls = _BY_NAME.get(data.get("type", ""), InternalError)
    extra = {k: v for k, v in data.items() if k not in ("type", "message")}
    try:
        return cls(data.get("message", ""), **extra)
    except TypeError:
        return cls(data.get("message", ""))
