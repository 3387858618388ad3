"""SeparatorWorker: one process, models loaded once, one task at a time, abortable, observable."""
from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import __version__, health
from .audio import decode, validate_input
from .batching import SharedBatcher
from .config import Config
from .errors import (InternalError, InvalidInput, ModelNotFound, OutOfMemory, RayDemucsError,
                     SeparationAborted)
from .logs import configure_logging
from .longtrack import separate_piece
from .models import ModelCache, check_options, default_segment_s
from .outputs import output_is_complete, pick_stems, read_manifest, remove_staging, write_outputs
from .pieces import separate_across_workers
from .places import attempt_places
from .streaming import save_any, separate_file
from .task import TaskSpec

logger = logging.getLogger("raydemucs.worker")

OOM_TEXTS = ("out of memory", "can't allocate memory")
DEPTH_KWARGS = {"int16": {"bits_per_sample": 16}, "int24": {"bits_per_sample": 24},
                "float32": {"as_float": True}}


def resolve_device(device: str, num_gpus: float) -> str:
    import torch

    if device == "auto":
        return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return device


def expected_chunks(model, length: int, options) -> int:
    """How many segment forward passes `apply_model` will run (for progress)."""
    from demucs.apply import BagOfModels

    models = model.models if isinstance(model, BagOfModels) else [model]
    total = 0
    for sub in models:
        segment = options.segment or float(sub.segment)
        stride = max(1, int((1 - options.overlap) * int(sub.samplerate * segment)))
        padded = length + (sub.samplerate // 2 if options.shifts else 0)
        total += math.ceil(padded / stride) * max(1, options.shifts)
    return total


@dataclass(eq=False)
class Attempt:
    """One task attempt inside a worker: its abort flag, phase and segment counts."""

    task_id: str
    number: int
    abort: threading.Event = field(default_factory=threading.Event)
    phase: str = "preparing"  # preparing, waiting (for the model), separating, writing
    chunks_done: int = 0
    chunks_expected: int = 1
    segment_s: float | None = None
    peak_rss_bytes: int | None = None  # the worker's peak while this attempt held the model

    def progress(self) -> float:
        return min(0.99, self.chunks_done / self.chunks_expected)

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "attempt": self.number, "phase": self.phase,
                "progress": self.progress()}


class ModelTurns:
    """The model runs one attempt at a time, in the order the attempts arrived.

    A plain lock would let a prefetched attempt whose input decodes faster overtake the one ahead
    of it, breaking the scheduler's priorities and its view of which attempt is running.
    """

    def __init__(self):
        self._changed = threading.Condition()
        self._line: list[Attempt] = []

    def join(self, current: Attempt) -> None:
        with self._changed:
            self._line.append(current)

    def leave(self, current: Attempt) -> None:
        with self._changed:
            if current in self._line:
                self._line.remove(current)
                self._changed.notify_all()

    def wait_for_turn(self, current: Attempt) -> None:
        """Block until `current` is first in line; raise KeyboardInterrupt if it is aborted first."""
        with self._changed:
            while self._line[0] is not current:
                if current.abort.is_set():
                    raise KeyboardInterrupt
                self._changed.wait(0.1)
        if current.abort.is_set():
            raise KeyboardInterrupt


class SeparatorWorker:
    """Separates with models it keeps loaded; `abort` and `poll` are thread-safe.

    Two attempts may be in a worker at once (the scheduler's prefetch): the model runs one at a
    time, while the other decodes its input or writes its stems.
    """

    def __init__(self, worker_id: str, config: dict):
        self.config = Config.from_dict(config)
        configure_logging(self.config.service.log_level, self.config.service.log_format)
        import torch

        threads = max(1, round(self.config.workers.num_cpus))
        torch.set_num_threads(threads)
        self.worker_id = worker_id
        self.device = resolve_device(self.config.separation.device, self.config.workers.num_gpus)
        self.models = ModelCache(self.config.workers.max_models, self.device)
        self._turns = ModelTurns()
        self._batchers: dict[tuple, SharedBatcher] = {}
        self._models_lock = threading.Lock()
        self._attempts: dict[str, Attempt] = {}
        self._early_aborts: collections.deque = collections.deque(maxlen=64)
        self.tasks_done = 0
        self.tasks_failed = 0
        self.started_at = time.time()
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self.load_error: str | None = None
        default = self.config.separation
        try:
            self.models.get(default.model, default.repo)
        except ModelNotFound as exc:
            self.load_error = str(exc)
            logger.error("%s: default model not loaded: %s", worker_id, exc)
        logger.info("%s ready on %s with %d threads (pid %d)", worker_id, self.device, threads,
                    os.getpid())

    def ready(self) -> dict:
        return {"worker_id": self.worker_id, "pid": os.getpid(), "node": _node_id(),
                "device": self.device, "models": self.models.keys(), "load_error": self.load_error,
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

    def poll(self) -> dict:
        """Attempts in flight, their progress, and health figures; cheap enough to call often."""
        attempts = [a.to_dict() for a in list(self._attempts.values())]
        return {"worker_id": self.worker_id, "pid": os.getpid(), "tasks": attempts,
                "tasks_done": self.tasks_done, "tasks_failed": self.tasks_failed,
                "models": self.models.keys(), "uptime_s": time.time() - self.started_at,
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
        current = self._attempts[task.task_id] = Attempt(task.task_id, attempt)
        if (task.task_id, attempt) in self._early_aborts:
            current.abort.set()
        self._turns.join(current)
        try:
            result = self._separate(task, current, reuse_from, upload, helpers or [])
            self.tasks_done += 1
            return {"ok": True, "models": self.models.keys(), **result}
        except RayDemucsError as exc:
            error = exc
        except KeyboardInterrupt:
            error = SeparationAborted("stopped on request")
        except MemoryError:
            error = OutOfMemory("the worker ran out of memory", current.segment_s)
        except Exception as exc:
            if any(text in str(exc).lower() for text in OOM_TEXTS):
                error = OutOfMemory(f"out of memory: {str(exc).splitlines()[0]}", current.segment_s)
            else:
                logger.exception("task %s: unexpected error", task.task_id)
                error = InternalError(f"{type(exc).__name__}: {exc}")
        finally:
            self._turns.leave(current)
            self._attempts.pop(task.task_id, None)
        self.tasks_failed += 1
        return {"ok": False, "models": self.models.keys(), "error": error.to_dict()}

    def _manifest_base(self, task: TaskSpec, attempt: int, duration_s: float) -> dict:
        return {"task_id": task.task_id, "project": task.project, "file_id": task.file_id,
                "input": {"path": task.input_path, "duration_s": duration_s,
                          "sha256": task.input_sha256},
                "model": task.options.model, "options": task.to_dict()["options"],
                "attempt": attempt, "worker": self.worker_id, "node": _node_id(),
                "device": self.device, "raydemucs_version": __version__, "created_at": time.time()}

    def _reuse(self, task: TaskSpec, attempt: int, source: Path, folder: Path,
               duration_s: float) -> dict:
        """Link the stems of an earlier task with the same cache key into this task's folder."""
        previous = read_manifest(source)
        stems = {name: source / entry["file"] for name, entry in previous["stems"].items()}
        manifest = {**self._manifest_base(task, attempt, duration_s),
                    "samplerate": previous.get("samplerate"), "cached_from": previous["task_id"],
                    "timings": {}}
        started = time.time()
        outputs = write_outputs(folder, stems, task.options.format, link_or_copy, manifest)
        logger.info("task %s attempt %d: reused the stems of task %s", task.task_id, attempt,
                    previous["task_id"])
        return {"outputs": outputs, "timings": {"write_s": time.time() - started},
                "duration_s": duration_s, "cached_from": previous["task_id"]}

    @staticmethod
    def _on_chunk(current: Attempt, info: dict) -> None:
        if current.abort.is_set():
            raise KeyboardInterrupt
        current.chunks_expected = info.get("segments", current.chunks_expected)
        if info["state"] == "end":
            current.chunks_done += 1

    @classmethod
    def _on_piece_chunk(cls, current: Attempt, info: dict) -> None:
        """`_on_chunk` counting against the piece's segments, not the whole plan's."""
        cls._on_chunk(current, {**info, "segments": current.chunks_expected})

    @staticmethod
    def _decode(current: Attempt, separator, input_path: Path, options, timings: dict):
        """The whole input at the model's rate and channels (timed)."""
        started = time.time()
        wav = decode(input_path, separator.samplerate, separator.audio_channels)
        timings["decode_s"] = time.time() - started
        current.segment_s = options.segment or default_segment_s(separator.model)
        return wav

    def _separate_in_memory(self, task: TaskSpec, current: Attempt, separator, input_path: Path,
                            timings: dict) -> dict:
        """Decode the whole input, then `Separator.separate_tensor` (demucs's own path)."""
        options = task.options
        wav = self._decode(current, separator, input_path, options, timings)
        current.chunks_expected = expected_chunks(separator.model, wav.shape[-1], options)
        with self._model_turn(current):
            separator.update_parameter(device=self.device, shifts=options.shifts,
                                       overlap=options.overlap, segment=options.segment,
                                       callback=functools.partial(self._on_chunk, current))
            started = time.time()
            _, stems = separator.separate_tensor(wav)
            timings["separate_s"] = time.time() - started
        return stems

    def _separate_across(self, task: TaskSpec, current: Attempt, separator, input_path: Path,
                         helpers: list, timings: dict) -> dict:
        """Decode here, then split the track with `helpers` (see `raydemucs.pieces`)."""
        options = task.options
        wav = self._decode(current, separator, input_path, options, timings)
        with self._model_turn(current):
            started = time.time()
            run_here = functools.partial(self._run_piece, separator.model, current)
            stems, timings["pieces"] = separate_across_workers(
                separator.model, wav, options, helpers, run_here, current.abort, task.task_id,
                current.number)
            timings["separate_s"] = time.time() - started
        return dict(zip(separator.model.sources, stems))

    def _separate_batched(self, task: TaskSpec, current: Attempt, separator, input_path: Path,
                          timings: dict) -> dict:
        """Decode, then share forward passes with the other attempts in this worker."""
        options = task.options
        wav = self._decode(current, separator, input_path, options, timings)
        current.phase = "separating"
        with self._models_lock:
            batcher = self._batchers.get((options.model, options.repo))
            if batcher is None or batcher.batcher.model is not separator.model:
                batcher = self._batchers[options.model, options.repo] = SharedBatcher(
                    separator.model, batch_size=self.config.workers.batch_size, device=self.device)
        started = time.time()
        stems = batcher.separate((task.task_id, current.number), wav, segment=options.segment,
                                 overlap=options.overlap, shifts=options.shifts,
                                 callback=functools.partial(self._on_chunk, current))
        timings["separate_s"] = time.time() - started
        current.peak_rss_bytes = health.peak_rss_bytes()  # shared with the batch's other tasks
        return stems

    def _run_piece(self, model, current: Attempt, plan, piece, window, mean, std):
        current.chunks_expected = current.chunks_done + len(piece.segments)
        return separate_piece(model, plan, piece, window, piece.input_start, mean, std,
                              device=self.device,
                              callback=functools.partial(self._on_piece_chunk, current))

    def separate_piece(self, task_id: str, attempt: int, model: str, repo: str | None, plan,
                       piece, window, mean, std):
        """One piece of a track another worker leads; abortable like an attempt, and shown in
        `poll` under the lead's task id."""
        current = self._attempts[task_id] = Attempt(task_id, attempt)
        if (task_id, attempt) in self._early_aborts:
            current.abort.set()
        self._turns.join(current)
        try:
            with self._models_lock:
                separator = self.models.get(model, repo)
            with self._model_turn(current):
                return self._run_piece(separator.model, current, plan, piece, window, mean, std)
        except KeyboardInterrupt:
            raise SeparationAborted("stopped on request") from None
        finally:
            self._turns.leave(current)
            self._attempts.pop(task_id, None)

    def _separate_streamed(self, task: TaskSpec, current: Attempt, separator, input_path: Path,
                           scratch: Path, timings: dict):
        """Separate in windows with stems streamed to temp files in `scratch` (hidden, beside the
        output folder, swept like a staging folder): memory does not grow with length."""
        options = task.options
        current.segment_s = options.segment or default_segment_s(separator.model)
        with self._model_turn(current):
            started = time.time()
            stems = separate_file(separator.model, input_path, scratch,
                                  segment=options.segment, overlap=options.overlap,
                                  shifts=options.shifts,
                                  device=self.device, two_stems=options.two_stems,
                                  callback=functools.partial(self._on_chunk, current))
            timings["separate_s"] = time.time() - started
        return stems

    @contextlib.contextmanager
    def _model_turn(self, current: Attempt):
        """Hold the model for one attempt (later arrivals wait, abortable), counting its peak RSS."""
        current.phase = "waiting"
        self._turns.wait_for_turn(current)
        try:
            current.phase = "separating"
            health.reset_peak_rss()
            yield
        finally:
            current.peak_rss_bytes = health.peak_rss_bytes()
            self._turns.leave(current)

    def _separate(self, task: TaskSpec, current: Attempt, reuse_from: str | None,
                  upload: bytes | None, helpers: list) -> dict:
        max_bytes = int(self.config.input.max_file_mb * 2**20)
        with attempt_places(task, self.config.storage, max_bytes, upload) as places:
            previous = places.previous_manifest(self.config.storage)
            if previous and previous.get("task_id") != task.task_id and not task.force:
                raise InvalidInput(f"{task.output_folder} already holds the stems of task "
                                   f"{previous.get('task_id')}; pass --force to replace them")
            duration_s = validate_input(places.input_path, self.config.input)
            folder = places.folder
            remove_staging(folder)  # what an earlier, killed attempt of this task left
            if reuse_from and output_is_complete(Path(reuse_from)):
                return self._reuse(task, current.number, Path(reuse_from), folder, duration_s)
            result = self._separate_into(task, current, places.input_path, folder, duration_s,
                                         helpers)
            return {**result, **places.deliver(result["outputs"], self.config.storage)}

    def _separate_into(self, task: TaskSpec, current: Attempt, input_path: Path, folder: Path,
                       duration_s: float, helpers: list) -> dict:
        options = task.options
        with self._models_lock:
            separator = self.models.get(options.model, options.repo)
        check_options(separator.model, options)
        streamed = options.streams(duration_s)
        timings = {}
        with contextlib.ExitStack() as cleanup:
            if streamed:
                scratch = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.scratch"
                cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
                stems = self._separate_streamed(task, current, separator, input_path, scratch,
                                                timings).stems
            elif helpers:
                stems = pick_stems(self._separate_across(task, current, separator, input_path,
                                                         helpers, timings), options.two_stems)
            elif self.config.workers.batch_size > 1:
                stems = pick_stems(self._separate_batched(task, current, separator, input_path,
                                                          timings), options.two_stems)
            else:
                stems = pick_stems(self._separate_in_memory(task, current, separator, input_path,
                                                            timings), options.two_stems)
            current.phase = "writing"
            save = functools.partial(save_any, samplerate=separator.samplerate,
                                     bitrate=options.mp3_bitrate, preset=options.mp3_preset,
                                     clip=options.clip_mode, **DEPTH_KWARGS[options.wav_depth])
            manifest = {**self._manifest_base(task, current.number, duration_s),
                        "samplerate": separator.samplerate, "streamed": streamed,
                        "pieces": timings.pop("pieces", 1),
                        "peak_rss_bytes": current.peak_rss_bytes, "timings": timings}
            started = time.time()
            outputs = write_outputs(folder, stems, options.format, save, manifest)
        timings["write_s"] = time.time() - started
        logger.info("task %s attempt %d: separated %.1f s of audio in %.2f s", task.task_id,
                    current.number, duration_s, sum(timings.values()))
        return {"outputs": outputs, "timings": timings, "duration_s": duration_s}


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target`, or copy it across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@functools.lru_cache(maxsize=1)
def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return socket.gethostname()
