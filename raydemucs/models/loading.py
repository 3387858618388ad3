"""Loaded models: demucs's `Separator`, or a RoFormer checkpoint (`NAME.ckpt` with its `NAME.yaml`
in a model directory), built once per worker, its weights on the worker's device, kept in a small
LRU; and the checks only a loaded model can make (segment, two-stems, precision, what its
architecture runs)."""
from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.config import ModelsConfig
from ..core.errors import InvalidInput, ModelNotFound
from ..core.names import printable
from ..separation.engine import architecture_of
from .catalogue import (
    OFFLINE_MODEL,
    check_model_name,
    check_two_stems,
    model_directory,
    one_line,
    roformer_files,
)
from .runtimes import check_device


def _load_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"a checkpoint is not a Demucs model (it has no {one_line(exc)} entry)"
    if isinstance(exc, (EOFError, pickle.UnpicklingError)):
        return f"a checkpoint is corrupt ({one_line(exc)})"
    return one_line(exc)


@dataclass(frozen=True)
class Loaded:
    """A loaded model as a worker holds it (what `demucs.api.Separator` offers the engine)."""

    model: object
    samplerate: int
    audio_channels: int


def load_roformer_model(checkpoint: Path, config: Path, device: str) -> Loaded:
    """A RoFormer checkpoint, loaded strictly, as the engine runs it."""
    from ..separation.architectures.roformer import RoformerModel
    from .roformer.loading import load_roformer

    network, settings = load_roformer(checkpoint, config, device)
    model = RoformerModel(network, settings)
    return Loaded(model, model.samplerate, model.channels)


def load_separator(name: str, repo: str | None, device: str):
    """The model `name` with its weights moved to `device` once: a RoFormer from `repo`, else a
    `demucs.api.Separator`."""
    from demucs.api import Separator

    if found := roformer_files(name, repo):
        return load_roformer_model(*found, device)
    check_model_name(name, repo)
    try:
        separator = Separator(model=name, repo=Path(repo).expanduser() if repo else None,
                              device=device, progress=False)
    except SystemExit:  # demucs.utils.fatal exits; never let it end a worker
        raise ModelNotFound(f"model {name!r} could not be loaded: demucs gave up (its reason "
                            "is in the worker's log)") from None
    except Exception as exc:
        hint = "" if repo else (" Without internet, pass --repo DIR holding the model's .yaml "
                                f"and .th files, or use -n {OFFLINE_MODEL}.")
        source = f"repo {printable(repo)}" if repo else "the model hub"
        raise ModelNotFound(f"model {name!r} could not be loaded from {source}: "
                            f"{_load_reason(exc)}.{hint}") from None
    separator.model.to(device)
    return separator


def check_options(model, options) -> None:
    """Options that only the loaded model can judge: segment length, the two-stems name, and
    what its architecture cannot run."""
    architecture = architecture_of(model)
    limit = architecture.max_segment_s()
    if options.segment is not None and options.segment > limit:
        raise InvalidInput(f"segment {options.segment:g} s is longer than this model allows "
                           f"({limit:g} s)")
    check_two_stems(options.two_stems, options.model, list(architecture.sources))
    architecture.check_options(options)


class ModelCache:
    """Loaded separators by (name, repo), least recently used dropped beyond `max_models`.

    Thread-safe: attempts and `poll` run on threads of their own. One model loads at a time, and
    outside the lock that `keys` and `stems` take, so that a poll is answered during a load.
    `on_drop(model)` is told of each model dropped (what was built for it can go too);
    `catalogue` (the `models` section) says where a catalogue model is downloaded to.
    """

    def __init__(self, max_models: int, device: str,
                 on_drop: Callable[[object], None] = lambda model: None,
                 catalogue: ModelsConfig | None = None):
        self.max_models = max_models
        self.device = device
        self.on_drop = on_drop
        self.catalogue = catalogue or ModelsConfig()
        self._separators: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loading = threading.Lock()

    def get(self, name: str, repo: str | None):
        key = (name, repo)
        with self._lock:
            if key in self._separators:
                self._separators.move_to_end(key)
                return self._separators[key]
        with self._loading:
            with self._lock:
                if key in self._separators:  # loaded by another thread while this one waited
                    return self._separators[key]
            directory = model_directory(name, repo, self.catalogue)  # a download, verified
            separator = load_separator(name, directory, self.device)
            with self._lock:
                self._separators[key] = separator
                dropped = [self._separators.popitem(last=False)[1]
                           for _ in range(len(self._separators) - self.max_models)]
        for old in dropped:
            self.on_drop(old.model)
        return separator

    def for_task(self, options):
        """The separator for a task's model, once it and this worker's device can run the
        task's options (segment, two-stems, precision)."""
        separator = self.get(options.model, options.repo)
        check_options(separator.model, options)
        check_device(options.precision, self.device)
        return separator

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._separators)

    def stems(self) -> dict[str, list[str]]:
        """The stems each loaded model makes, by model name."""
        with self._lock:
            return {name: list(separator.model.sources)
                    for (name, _), separator in self._separators.items()}
