"""Finding and loading Demucs models, with errors that say what to do when offline."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from .errors import InvalidInput, ModelNotFound

OFFLINE_MODEL = "demucs_unittest"


def _local_repo_models(repo: Path) -> list[str]:
    from demucs.repo import BagOnlyRepo, LocalRepo, ModelLoadingError

    if not repo.is_dir():
        raise ModelNotFound(f"model repo {repo} is not a directory")
    try:
        models = LocalRepo(repo)
        return sorted(set(models.list_model()) | set(BagOnlyRepo(repo, models).list_model()))
    except (ModelLoadingError, OSError) as exc:
        raise ModelNotFound(f"model repo {repo} cannot be read: {exc}") from None


def remote_models() -> list[str]:
    """Names demucs can download (bags first); `demucs_unittest` ships inside the package."""
    from demucs.pretrained import REMOTE_ROOT

    bags = sorted(p.stem for p in REMOTE_ROOT.glob("*.yaml"))
    return bags + [OFFLINE_MODEL]


def list_models(repo: str | None = None) -> list[str]:
    return _local_repo_models(Path(repo).expanduser()) if repo else remote_models()


def check_model_name(name: str, repo: str | None) -> None:
    """Fail fast, before queueing, on a model name that no source has."""
    if not name or name == OFFLINE_MODEL or (name.startswith("hf://") and not repo):
        if not name:
            raise ModelNotFound("the model name is empty")
        return
    available = list_models(repo)
    if name not in available:
        where = f"in repo {repo}" if repo else "among demucs's pretrained models"
        raise ModelNotFound(f"unknown model {name!r} {where}; available: {', '.join(available)}")


def load_separator(name: str, repo: str | None, device: str):
    """A `demucs.api.Separator` holding the model, its weights moved to `device` once."""
    from demucs.api import Separator

    try:
        separator = Separator(model=name, repo=Path(repo).expanduser() if repo else None,
                              device=device, progress=False)
    except SystemExit as exc:  # demucs.utils.fatal exits; never let it end a worker
        raise ModelNotFound(f"model {name!r} could not be loaded: {exc.code}") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "" if repo else (" Without internet, pass --repo DIR holding the model's .yaml "
                                f"and .th files, or use -n {OFFLINE_MODEL}.")
        source = f"repo {repo}" if repo else "the model hub"
        raise ModelNotFound(f"model {name!r} could not be loaded from {source}: {reason}.{hint}") from None
    separator.model.to(device)
    return separator


def max_segment_s(model) -> float:
    """The longest segment a model accepts (transformer models are bounded by training)."""
    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    if isinstance(model, BagOfModels):
        return model.max_allowed_segment
    if isinstance(model, HTDemucs):
        return float(model.segment)
    return float("inf")


def check_options(model, options) -> None:
    """Options that only the loaded model can judge: segment length and the two-stems name."""
    limit = max_segment_s(model)
    if options.segment is not None and options.segment > limit:
        raise InvalidInput(f"segment {options.segment:g} s is longer than this model allows "
                           f"({limit:g} s)")
    if options.two_stems is not None and options.two_stems not in model.sources:
        raise InvalidInput(f"two-stems {options.two_stems!r} is not a stem of this model; "
                           f"choose one of {', '.join(model.sources)}")


class ModelCache:
    """Loaded separators by (name, repo), least recently used dropped beyond `max_models`."""

    def __init__(self, max_models: int, device: str):
        self.max_models = max_models
        self.device = device
        self._separators: OrderedDict[tuple, object] = OrderedDict()

    def get(self, name: str, repo: str | None):
        key = (name, repo)
        if key in self._separators:
            self._separators.move_to_end(key)
        else:
            self._separators[key] = load_separator(name, repo, self.device)
            while len(self._separators) > self.max_models:
                self._separators.popitem(last=False)
        return self._separators[key]

    def keys(self) -> list[tuple]:
        return list(self._separators)


def default_segment_s(model) -> float:
    """The segment length `apply_model` uses when none is given."""
    from demucs.apply import BagOfModels

    first = model.models[0] if isinstance(model, BagOfModels) else model
    return float(first.segment)
