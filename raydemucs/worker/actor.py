"""SeparatorWorker: one process, models loaded once, attempts abortable and observable.

An attempt is a pipeline (docs/architecture.md, "One attempt through a worker"); each step is one
call into the module that holds it, and control comes back here only between steps:

1. its files (`raydemucs.worker.files`): the input fetched and checked again, the output folder;
   the stems of an identical earlier task linked in, when the scheduler found one;
2. its model (`raydemucs.models.loading`), checked against the task's options;
3. the separation (`raydemucs.separation.strategies`), the way that fits the task;
4. its files again: the stems written and published with their manifest;
5. the worker's memory after it (`raydemucs.worker.health`).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import time

import psutil
import ray
from ray.exceptions import RayError

from .. import __version__
from ..core.actors import node_id
from ..core.config import Config
from ..core.errors import (
    InternalError,
    InvalidInput,
    ModelNotFound,
    OutOfMemory,
    RayDemucsError,
    SeparationAborted,
)
from ..core.logs import configure_logging
from ..core.pools import worker_threads
from ..core.task import TaskSpec
from ..models.loading import ModelCache
from ..models.runtimes import check_device, worker_runtime
from ..separation.combine import combine, part_input
from ..separation.engine import COMPUTE, is_out_of_memory
from ..separation.split import HelperLost
from ..separation.strategies import Attempt, Strategies
from ..storage.uploads import UploadSource
from . import health
from .files import attempt_files

logger = logging.getLogger(__name__)

# `poll`, `abort` and `ready` run in a concurrency group of their own, beside the attempts: a
# worker answers them while it separates, even one that holds a single attempt (prefetch 0)
CONTROL = "control"
CONTROL_CALLS = 3


def worker_device(num_gpus: float) -> str:
    """A worker's device follows its pool: `cuda` when Ray gave it GPUs (and torch sees one)."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def _error_of(exc: BaseException, current: Attempt, task_id: str) -> RayDemucsError:
    """What an exception that ended an attempt means, as one of our errors."""
    if isinstance(exc, RayDemucsError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return SeparationAborted("stopped on request")
    if isinstance(exc, MemoryError):
        return OutOfMemory("the worker ran out of memory", current.segment_s)
    if is_out_of_memory(exc):
        return OutOfMemory(f"out of memory: {str(exc).splitlines()[0]}", current.segment_s)
    logger.error("task %s: unexpected error", task_id, exc_info=exc)
    return InternalError(f"{type(exc).__name__}: {exc}")


class _RemotePiece:
    """A piece a lent worker is separating (`separation.split.PendingPiece`)."""

    def __init__(self, ref):
        self.ref = ref

    def wait(self, timeout_s: float) -> bool:
        return bool(ray.wait([self.ref], timeout=timeout_s)[0])

    def result(self):
        try:
            return ray.get(self.ref)
        except RayError as exc:
            raise HelperLost(str(exc).splitlines()[0]) from None


class LentWorker:
    """An idle worker the scheduler lent to an attempt, as the splitter uses it
    (`separation.split.Helper`): its abort goes through the control group, so that it overtakes
    the piece it stops."""

    def __init__(self, handle):
        self.handle = handle

    def start(self, task_id: str, attempt: int, options, plan, piece, window, mean,
              std) -> _RemotePiece:
        return _RemotePiece(self.handle.separate_piece.remote(
            task_id, attempt, options.model, options.repo, options.precision, plan, piece,
            window, mean, std))

    def abort(self, task_id: str, attempt: int) -> None:
        self.handle.abort.options(concurrency_group=CONTROL).remote(task_id, attempt)


class SeparatorWorker:
    """Separates with models it keeps loaded; `abort` and `poll` are thread-safe.

    Several attempts may be in a worker at once (the scheduler's prefetch, or a batch): the model
    runs one at a time unless the worker batches, while the others decode or write.
    """

    def __init__(self, worker_id: str, config: dict):
        self.config = Config.from_dict(config)
        workers = self.config.workers
        configure_logging(self.config.service.log_level, self.config.service.log_format)
        COMPUTE.configure(worker_threads(workers.num_cpus))
        self.worker_id = worker_id
        self.device = worker_device(workers.num_gpus)
        self._process = psutil.Process()
        self.strategies = Strategies(self.device, workers.batch_size,
                                     worker_runtime(workers.runtime, self.device),
                                     health.TurnMemory(self._process, workers.release_memory),
                                     self.config.input)
        self.models = ModelCache(workers.max_models, self.device, self.strategies.forget,
                                 self.config.models)
        self.stamp = {"worker": worker_id, "node": node_id() or socket.gethostname(),
                      "device": self.device, "raydemucs_version": __version__}
        self._attempts: dict[str, Attempt] = {}
        self._early_aborts: collections.deque = collections.deque(maxlen=64)
        self.tasks_done = 0
        self.tasks_failed = 0
        self.started_at = time.time()
        self._release_memory = health.MemoryReleases() if workers.release_memory else None
        self._ceiling_bytes = health.rss_ceiling_bytes(workers.max_rss_mb, workers.memory_mb)
        self._process.cpu_percent(None)
        self.load_error: str | None = None
        self._load_default()
        logger.info("%s ready on %s (%s) with %d threads (pid %d)", worker_id, self.device,
                    self.strategies.runtime, COMPUTE.own, os.getpid())

    def _load_default(self) -> None:
        """Load the config's model, and build its network for the config's precision."""
        default = self.config.separation
        try:
            separator = self.models.get(default.model, default.repo)
        except ModelNotFound as exc:
            self.load_error = str(exc)
            logger.error("%s: default model not loaded: %s", self.worker_id, exc)
            return
        try:
            check_device(default.precision, self.device)
        except InvalidInput as exc:
            logger.warning("%s: %s", self.worker_id, exc)
            return
        self.strategies.runner(separator.model, default.precision)

    # -- the calls the pool makes ---------------------------------------------------------------
    def ready(self) -> dict:
        return {"worker_id": self.worker_id, "pid": os.getpid(), "node": self.stamp["node"],
                "device": self.device, "models": self.models.keys(), "stems": self.models.stems(),
                "load_error": self.load_error, "threads": COMPUTE.in_use,
                **health.sample(self._process, self.device)}

    def abort(self, task_id: str, attempt: int | None = None) -> bool:
        """Ask an attempt to stop at its next segment boundary (or before it starts).

        Calls to a threaded actor may overtake each other: an abort for an attempt whose
        `separate` call has not arrived yet is kept and applied when it does.
        """
        current = self._attempts.get(task_id)
        if current is not None and attempt in (None, current.number):
            current.abort.set()
            return True
        if attempt is not None:
            self._early_aborts.append((task_id, attempt))
        return False

    def poll(self, lent_threads: int = 0) -> dict:
        """Attempts in flight, their progress, and health figures; cheap enough to call often.
        `lent_threads`: idle workers' cores this one may use on top of its own, until the next
        poll (`raydemucs.scheduler.lending`)."""
        COMPUTE.lend(lent_threads)
        attempts = [a.to_dict() for a in list(self._attempts.values())]
        return {"worker_id": self.worker_id, "pid": os.getpid(), "tasks": attempts,
                "threads": COMPUTE.in_use,
                "tasks_done": self.tasks_done, "tasks_failed": self.tasks_failed,
                "models": self.models.keys(), "stems": self.models.stems(),
                "uptime_s": time.time() - self.started_at,
                **health.sample(self._process, self.device)}

    def separate(self, spec: dict, attempt: int, reuse_from: str | None = None,
                 upload: UploadSource | None = None, helpers: list | None = None) -> dict:
        """Run one attempt; never raises: returns `{"ok": True, "outputs", ...}` or an error.

        `reuse_from` names another task's folder with stems for the same input, model and
        options (the result cache): they are linked in instead of separating again. `upload` is
        where an uploaded input is fetched from (a chunk at a time, never through the scheduler).
        `helpers` are idle workers lent for this attempt: the track is split across them.
        """
        task = TaskSpec.from_dict(spec)
        current = self._enter(task.task_id, attempt)
        try:
            result = self._pipeline(task, current, reuse_from, upload,
                                    [LentWorker(handle) for handle in helpers or []])
            self.tasks_done += 1
            return {"ok": True, "models": self.models.keys(), **result, **self._settle(current)}
        except (Exception, KeyboardInterrupt) as exc:  # KeyboardInterrupt: how an abort arrives
            error = _error_of(exc, current, task.task_id)
        finally:
            self._leave(current)
        self.tasks_failed += 1
        return {"ok": False, "models": self.models.keys(), "error": error.to_dict(),
                **self._settle(current)}

    def separate_piece(self, task_id: str, attempt: int, model: str, repo: str | None,
                       precision: str, plan, piece, window, mean, std):
        """One piece of a track another worker leads; abortable like an attempt, and shown in
        `poll` under the lead's task id."""
        current = self._enter(task_id, attempt)
        try:
            separator = self.models.get(model, repo)
            with self.strategies.turns.turn(current):
                return self.strategies.run_piece(separator.model, precision, current, plan,
                                                 piece, window, mean, std)
        except KeyboardInterrupt:
            raise SeparationAborted("stopped on request") from None
        finally:
            self._leave(current)

    # -- one attempt ----------------------------------------------------------------------------
    def _enter(self, task_id: str, number: int) -> Attempt:
        """The attempt takes its place in this worker, and in the model's line (in arrival order)."""
        current = self._attempts[task_id] = Attempt(task_id, number)
        if (task_id, number) in self._early_aborts:
            current.abort.set()
        self.strategies.turns.join(current)
        return current

    def _leave(self, current: Attempt) -> None:
        self.strategies.turns.leave(current)
        self._attempts.pop(current.task_id, None)

    def _pipeline(self, task: TaskSpec, current: Attempt, reuse_from: str | None,
                  upload: UploadSource | None, helpers: list[LentWorker]) -> dict:
        with attempt_files(task, self.config, self.stamp, upload) as files:
            if reuse_from and (reused := files.reuse(reuse_from, current.number)):
                return reused
            step = task.ensemble or {}
            if step.get("step") == "combine":
                return self._combine(task, current, files)
            separator = self.models.for_task(task.options)
            places = files.places
            source = step.get("source")  # a chain step's: a stem of the part it reads, or the rest
            inputs = (part_input(source, places.input_path, self.config.input) if source
                      else contextlib.nullcontext(places.input_path))
            with inputs as path, self.strategies.separate(
                    task, current, separator, path, places.scratch, files.duration_s,
                    helpers) as separated:
                current.phase = "writing"
                result = files.publish(separated, current, {"ensemble_part": step or None})
        logger.info("task %s attempt %d: separated %.1f s of audio in %.2f s", task.task_id,
                    current.number, files.duration_s, sum(current.timings.values()))
        return result

    def _combine(self, task: TaskSpec, current: Attempt, files) -> dict:
        """An ensemble's last step: its parts' stems combined into the task's
        (`separation.combine`), published with what each part was."""
        with current.timed("combine_s"):
            separated, parts = combine(task.ensemble, self.config.input)
        current.phase = "writing"
        ensemble = {"preset": task.ensemble.get("preset"), "parts": parts,
                    "stems": task.ensemble["stems"]}
        return files.publish(separated, current, {"ensemble": ensemble})

    def _settle(self, current: Attempt) -> dict:
        """The worker's memory after an attempt (what the pool's recycle rule judges): its RSS,
        free heap handed back first at most every few seconds (at once when over the ceiling),
        and the attempt's sample at rest, if one was taken as it left the model."""
        rss = self._process.memory_info().rss
        over = self._ceiling_bytes is not None and rss > self._ceiling_bytes
        if self._release_memory is not None and self._release_memory(force=over):
            rss = self._process.memory_info().rss
        return {"rss_bytes": rss, "rest_rss_bytes": current.rest_rss_bytes}
