"""SeparatorWorker: one process, models loaded once, attempts abortable and observable.

What an attempt does, in order: find its places (`raydemucs.worker.files`), check the input again,
separate it the way that fits (`raydemucs.separation.strategies`), write the stems (`raydemucs.separation.encode`)
into its output folder atomically (`raydemucs.storage.folders`).
"""
from __future__ import annotations

import collections
import functools
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import psutil

from .. import __version__
from ..audio.checks import validate_input
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
from ..core.task import TaskSpec
from ..models.loading import ModelCache, check_options
from ..models.runtimes import check_device
from ..models.runtimes import runtime_of, worker_runtime
from ..separation.attempt import Attempt
from ..separation.encode import stem_saver
from ..separation.engine import is_out_of_memory, sub_models
from ..separation.strategies import Strategies
from ..storage.folders import Folder, LocalFolder, write_outputs
from . import health
from .files import attempt_places

logger = logging.getLogger(__name__)


def worker_device(num_gpus: float) -> str:
    """A worker's device follows its pool: `cuda` when Ray gave it GPUs (and torch sees one)."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target`, or copy it across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@functools.lru_cache(maxsize=1)
def _node_id() -> str:
    """The Ray node, or the host name outside a cluster (a plain worker in a test)."""
    return node_id() or socket.gethostname()


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


class SeparatorWorker:
    """Separates with models it keeps loaded; `abort` and `poll` are thread-safe.

    Several attempts may be in a worker at once (the scheduler's prefetch, or a batch): the model
    runs one at a time unless the worker batches, while the others decode or write.
    """

    def __init__(self, worker_id: str, config: dict):
        self.config = Config.from_dict(config)
        configure_logging(self.config.service.log_level, self.config.service.log_format)
        import torch

        threads = max(1, round(self.config.workers.num_cpus))
        torch.set_num_threads(threads)
        self.worker_id = worker_id
        self.device = worker_device(self.config.workers.num_gpus)
        self.models = ModelCache(self.config.workers.max_models, self.device)
        self.strategies = Strategies(self.device, self.config.workers.batch_size,
                                     worker_runtime(self.config.workers.runtime, self.device))
        self._models_lock = threading.Lock()
        self._attempts: dict[str, Attempt] = {}
        self._early_aborts: collections.deque = collections.deque(maxlen=64)
        self.tasks_done = 0
        self.tasks_failed = 0
        self.started_at = time.time()
        self._process = psutil.Process()
        self._release_memory = health.MemoryReleases()
        self._process.cpu_percent(None)
        self.load_error: str | None = None
        self._load_default()
        logger.info("%s ready on %s (%s) with %d threads (pid %d)", worker_id, self.device,
                    self.strategies.runtime, threads, os.getpid())

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
        return {"worker_id": self.worker_id, "pid": os.getpid(), "node": _node_id(),
                "device": self.device, "models": self.models.keys(), "stems": self.models.stems(),
                "load_error": self.load_error, **health.sample(self._process, self.device)}

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

    def poll(self) -> dict:
        """Attempts in flight, their progress, and health figures; cheap enough to call often."""
        attempts = [a.to_dict() for a in list(self._attempts.values())]
        return {"worker_id": self.worker_id, "pid": os.getpid(), "tasks": attempts,
                "tasks_done": self.tasks_done, "tasks_failed": self.tasks_failed,
                "models": self.models.keys(), "stems": self.models.stems(),
                "uptime_s": time.time() - self.started_at,
                **health.sample(self._process, self.device)}

    def separate(self, spec: dict, attempt: int, reuse_from: str | None = None,
                 upload: bytes | None = None, helpers: list | None = None) -> dict:
        """Run one attempt; never raises: returns `{"ok": True, "outputs", ...}` or an error.

        `reuse_from` names another task's folder with stems for the same input, model and
        options (the result cache): they are linked in instead of separating again. `upload`
        holds the input's bytes for a task submitted with them; its stems come back as bytes.
        `helpers` are idle workers lent for this attempt: the track is split across them.
        """
        task = TaskSpec.from_dict(spec)
        current = self._enter(task.task_id, attempt)
        try:
            result = self._separate(task, current, reuse_from, upload, helpers or [])
            self.tasks_done += 1
            return {"ok": True, "models": self.models.keys(), **result, **self._settle()}
        except (Exception, KeyboardInterrupt) as exc:  # KeyboardInterrupt: how an abort arrives
            error = _error_of(exc, current, task.task_id)
        finally:
            self._leave(current)
        self.tasks_failed += 1
        return {"ok": False, "models": self.models.keys(), "error": error.to_dict(),
                **self._settle()}

    def _settle(self) -> dict:
        """After an attempt: free memory back to the system (at most every few seconds), and the
        RSS left (what the pool's recycle rule judges)."""
        if self.config.workers.release_memory:
            self._release_memory()
        return {"rss_bytes": self._process.memory_info().rss}

    def separate_piece(self, task_id: str, attempt: int, model: str, repo: str | None,
                       precision: str, plan, piece, window, mean, std):
        """One piece of a track another worker leads; abortable like an attempt, and shown in
        `poll` under the lead's task id."""
        current = self._enter(task_id, attempt)
        try:
            with self._models_lock:
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
        current = self._attempts[task_id] = Attempt(task_id, number)
        if (task_id, number) in self._early_aborts:
            current.abort.set()
        self.strategies.turns.join(current)
        return current

    def _leave(self, current: Attempt) -> None:
        self.strategies.turns.leave(current)
        self._attempts.pop(current.task_id, None)

    def _separate(self, task: TaskSpec, current: Attempt, reuse_from: str | None,
                  upload: bytes | None, helpers: list) -> dict:
        max_bytes = int(self.config.input.max_file_mb * 2**20)
        with attempt_places(task, self.config.storage, max_bytes, upload) as places:
            previous = places.previous_manifest()
            if previous and previous.get("task_id") != task.task_id and not task.force:
                raise InvalidInput(f"{task.output_location} already holds the stems of task "
                                   f"{previous.get('task_id')}; pass --force to replace them")
            duration_s = validate_input(places.input_path, self.config.input)
            places.folder.sweep()  # what an earlier, killed attempt of this task left
            source = LocalFolder(reuse_from) if reuse_from else None
            if source is not None and source.complete():
                result = self._reuse(task, current.number, source, places.folder, duration_s)
            else:
                result = self._separate_into(task, current, places, duration_s, helpers)
            return {**result, **places.deliver(result["outputs"])}

    def _manifest_base(self, task: TaskSpec, attempt: int, duration_s: float) -> dict:
        return {"task_id": task.task_id, "project": task.project, "file_id": task.file_id,
                "input": {"path": task.input_path, "duration_s": duration_s,
                          "sha256": task.input_sha256},
                "model": task.options.model, "options": task.to_dict()["options"],
                "attempt": attempt, "worker": self.worker_id, "node": _node_id(),
                "device": self.device, "raydemucs_version": __version__, "created_at": time.time()}

    def _reuse(self, task: TaskSpec, attempt: int, source: LocalFolder, folder: Folder,
               duration_s: float) -> dict:
        """Link the stems of an earlier task with the same cache key into this task's folder."""
        previous = source.manifest()
        stems = {name: source.path / entry["file"] for name, entry in previous["stems"].items()}
        manifest = {**self._manifest_base(task, attempt, duration_s),
                    "samplerate": previous.get("samplerate"), "cached_from": previous["task_id"],
                    "timings": {}}
        started = time.time()
        outputs = write_outputs(folder, stems, task.options.format, link_or_copy, manifest)
        logger.info("task %s attempt %d: reused the stems of task %s", task.task_id, attempt,
                    previous["task_id"])
        return {"outputs": outputs, "timings": {"write_s": time.time() - started},
                "duration_s": duration_s, "cached_from": previous["task_id"]}

    def _separate_into(self, task: TaskSpec, current: Attempt, places, duration_s: float,
                       helpers: list) -> dict:
        options = task.options
        with self._models_lock:
            separator = self.models.get(options.model, options.repo)
        check_options(separator.model, options)
        check_device(options.precision, self.device)
        timings: dict = {}
        with self.strategies.separate(task, current, separator, places.input_path,
                                      places.scratch, duration_s, helpers, timings) as separated:
            current.phase = "writing"
            manifest = {**self._manifest_base(task, current.number, duration_s),
                        "samplerate": separator.samplerate, "streamed": separated.streamed,
                        "runtime": runtime_of(sub_models(separator.model)[0], self.device,
                                              self.strategies.runtime),
                        "pieces": separated.pieces, "peak_rss_bytes": current.peak_rss_bytes,
                        "timings": timings}
            started = time.time()
            outputs = write_outputs(places.folder, separated.stems, options.format,
                                    stem_saver(options, separator.samplerate), manifest)
        timings["write_s"] = time.time() - started
        logger.info("task %s attempt %d: separated %.1f s of audio in %.2f s", task.task_id,
                    current.number, duration_s, sum(timings.values()))
        return {"outputs": outputs, "timings": timings, "duration_s": duration_s}
