"""What was asked (TaskSpec, frozen) and what happened (TaskRecord)."""
from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from .config import SeparationConfig
from .errors import InvalidInput

PRIORITIES = {"high": 0, "normal": 5, "low": 9}
WEBHOOK_EVENTS = ("task.started", "task.succeeded", "task.failed", "task.cancelled")
DEFAULT_WEBHOOK_EVENTS = WEBHOOK_EVENTS[1:]  # the terminal ones


class TaskState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


def parse_priority(value: str | int) -> int:
    """`high`, `normal`, `low`, or an integer from 0 (first) to 9 (last)."""
    if isinstance(value, str) and value.lower() in PRIORITIES:
        return PRIORITIES[value.lower()]
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if isinstance(value, bool) or not 0 <= number <= 9:
        raise InvalidInput(f"priority {value!r} must be high, normal, low or 0-9")
    return number


def priority_name(priority: int) -> str:
    return next((name for name, p in PRIORITIES.items() if p == priority), str(priority))


def _elapsed(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None or end < start else end - start


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _as_dict(obj) -> dict:
    """A dataclass of plain values as a dict: `dataclasses.asdict` without its recursion through
    every value (a batch sends and journals thousands a second)."""
    return {name: getattr(obj, name) for name in _field_names(type(obj))}


def new_task_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class TaskSpec:
    """An accepted request: input, where stems go, and how to separate."""

    task_id: str
    project: str
    file_id: str
    input_path: str
    output_dir: str
    priority: int = PRIORITIES["normal"]
    options: SeparationConfig = field(default_factory=SeparationConfig)
    force: bool = False
    timeout_s: float | None = None
    cache: bool = True
    input_sha256: str | None = None
    uploaded: bool = False  # the input's bytes came with the task (and are kept by the service)
    kept: bool = False  # the service keeps the stems under its state directory (back as bytes)
    duration_s: float | None = None  # measured at submit (None for remote inputs)
    owner: str = ""  # the API key that created it over HTTP; '' for the Python API and the CLI
    batch_id: str | None = None  # the submit that created it with others (folders, lists, ...)
    webhook_url: str | None = None  # called (signed, retried) on each of `webhook_events`
    webhook_events: tuple = DEFAULT_WEBHOOK_EVENTS
    # several models as one task (`raydemucs.ensembles`): its parts and stem rules, normal form;
    # an attempt of one of its steps carries that step instead
    ensemble: dict | None = None

    @property
    def output_location(self) -> str:
        """The stems' folder, `OUTPUT_DIR/PROJECT/FILE_ID`: a local path, or a URI when the output
        directory is one (`raydemucs.storage.folders.open_folder` opens either)."""
        return f"{self.output_dir.rstrip('/')}/{self.project}/{self.file_id}"

    @functools.cached_property
    def cache_key(self) -> str | None:
        """Same input bytes, model and options give the same key (None when caching is off)."""
        if not self.cache or not self.input_sha256:
            return None
        options = {k: v for k, v in self.options.model_dump().items() if k != "device"}
        if options["precision"] == "fp32":  # the default: keys made before the option stay valid
            del options["precision"]
        if self.ensemble:  # absent otherwise: keys made before ensembles stay valid
            options["ensemble"] = self.ensemble
        blob = json.dumps({"input": self.input_sha256, **options}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {**_as_dict(self), "options": self.options.model_dump()}

    @classmethod
    def from_dict(cls, data: dict) -> "TaskSpec":
        events = tuple(data.get("webhook_events", DEFAULT_WEBHOOK_EVENTS))
        return cls(**{**data, "options": SeparationConfig.model_validate(data["options"]),
                      "webhook_events": events})


# Options that change no stem: where the task runs, and how memory is spent on the way.
RUN_ONLY_OPTIONS = ("device", "stream_over_s")


def spec_differences(old: TaskSpec, new: TaskSpec) -> list[str]:
    """What `new` asks that `old` (the same project and file id) did not, as `name: old -> new`;
    empty when both make the same stems (priority, timeout and caching are not compared)."""
    differences = []
    same_bytes = old.input_sha256 and new.input_sha256 and old.input_sha256 == new.input_sha256
    if old.input_path != new.input_path and not same_bytes:
        differences.append(f"input: {old.input_path} -> {new.input_path}")
    elif old.input_sha256 and new.input_sha256 and not same_bytes:
        differences.append(f"input: {old.input_path} changed since (its bytes differ)")
    if old.output_dir != new.output_dir:
        differences.append(f"output directory: {old.output_dir} -> {new.output_dir}")
    if old.ensemble != new.ensemble:
        differences.append("ensemble: its parts or stems differ")
    before, after = old.options.model_dump(), new.options.model_dump()
    differences += [f"{key}: {before[key]} -> {after[key]}" for key in before
                    if key not in RUN_ONLY_OPTIONS and before[key] != after[key]]
    return differences


@dataclass
class TaskRecord:
    """A task's state in the journal; `seq` orders submissions (FIFO within a priority)."""

    spec: TaskSpec
    seq: int
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    progress: float = 0.0
    error: dict | None = None
    outputs: dict | None = None
    worker: str | None = None
    node: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    retry_at: float | None = None
    queued_at: float | None = None
    audio_duration_s: float | None = None
    segment_s: float | None = None  # the shorter segment a retry after out of memory runs with
    expired_at: float | None = None  # when the stored input and stems went (retention, purge)

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    def attempt_spec(self) -> TaskSpec:
        """The spec the next attempt runs: as asked, with the segment an out-of-memory retry chose."""
        if self.segment_s is None:
            return self.spec
        options = self.spec.options.model_copy(update={"segment": self.segment_s})
        return dataclasses.replace(self.spec, options=options)

    def to_dict(self) -> dict[str, Any]:
        """The record as `status TASK_ID --json` prints it."""
        data = _as_dict(self)
        spec = data.pop("spec").to_dict()
        data["error"], data["outputs"] = copy.deepcopy(self.error), copy.deepcopy(self.outputs)
        data["state"] = self.state.value
        data.update(task_id=spec["task_id"], owner=spec["owner"], project=spec["project"],
                    file_id=spec["file_id"],
                    priority=priority_name(spec["priority"]), spec=spec,
                    queue_wait_s=_elapsed(self.queued_at, self.started_at),
                    run_s=_elapsed(self.started_at, self.finished_at))
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TaskRecord":
        values = {k: v for k, v in data.items() if k in _field_names(cls) and k != "spec"}
        values["spec"] = TaskSpec.from_dict(data["spec"])
        values["state"] = TaskState(data["state"])
        return cls(**values)
