"""Finding and loading Demucs models, with errors that say what to do when offline."""
from __future__ import annotations

import pickle
import threading
import urllib.error
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path

import yaml

from .errors import InvalidInput, ModelNotFound
from .names import printable

OFFLINE_MODEL = "demucs_unittest"
HUB_PROBE_TIMEOUT_S = 3.0
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()).rstrip(".")[:300] or type(exc).__name__


def _local_repo(repo: Path):
    """demucs's view of a local folder: its checkpoints by signature and its bags by name."""
    from demucs.repo import BagOnlyRepo, LocalRepo, ModelLoadingError

    if not repo.is_dir():
        raise ModelNotFound(f"model repo {printable(repo)} is not a directory")
    try:
        models = LocalRepo(repo)
        return models, BagOnlyRepo(repo, models)
    except (ModelLoadingError, OSError) as exc:
        raise ModelNotFound(f"model repo {printable(repo)} cannot be read: {_one_line(exc)}") from None


def _local_repo_models(repo: Path) -> list[str]:
    models, bags = _local_repo(repo)
    return sorted(set(models.list_model()) | set(bags.list_model()))


def _bag_signatures(bag_file: Path) -> list[str]:
    """The checkpoint signatures a bag's YAML lists (loaded safely)."""
    try:
        bag = yaml.safe_load(bag_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelNotFound(f"bag {printable(bag_file)} is not readable YAML: "
                            f"{_one_line(exc)}") from None
    signatures = bag.get("models") if isinstance(bag, dict) else None
    if not (isinstance(signatures, list) and signatures
            and all(isinstance(sig, str) for sig in signatures)):
        raise ModelNotFound(f"bag {printable(bag_file)} must hold 'models:', a list of checkpoint "
                            "signatures")
    return signatures


def _check_checkpoint(path: Path) -> None:
    """A checkpoint is a PyTorch file: a whole zip archive, or a legacy pickle."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(ZIP_MAGIC))
        whole = zipfile.is_zipfile(path) if magic == ZIP_MAGIC else magic.startswith(PICKLE_MAGIC)
    except OSError as exc:
        raise ModelNotFound(f"checkpoint {printable(path)} cannot be read: {exc.strerror}") from None
    if not whole:
        raise ModelNotFound(f"checkpoint {printable(path)} is not a PyTorch file (corrupt, "
                            "truncated or something else)")


def _check_repo_model(name: str, repo: Path) -> None:
    """`name` is a checkpoint or a bag in `repo`, and every checkpoint it needs is there and whole."""
    models, bags = _local_repo(repo)
    if models.has_model(name):
        signatures = [name]
    elif bags.has_model(name):
        signatures = _bag_signatures(Path(bags.list_model()[name]))
    else:
        available = ", ".join(_local_repo_models(repo)) or "none"
        raise ModelNotFound(f"unknown model {name!r} in repo {printable(repo)}; available: "
                            f"{available}")
    for sig in signatures:
        if not models.has_model(sig):
            raise ModelNotFound(f"bag {name!r} in repo {printable(repo)} names checkpoint "
                                f"{sig!r}, but there is no {printable(sig)}.th")
        _check_checkpoint(Path(models.list_model()[sig]))


def remote_models() -> list[str]:
    """Names demucs can download (bags first); `demucs_unittest` ships inside the package."""
    from demucs.pretrained import REMOTE_ROOT

    bags = sorted(p.stem for p in REMOTE_ROOT.glob("*.yaml"))
    return bags + [OFFLINE_MODEL]


def list_models(repo: str | None = None) -> list[str]:
    return _local_repo_models(Path(repo).expanduser()) if repo else remote_models()


def check_model_name(name: str, repo: str | None) -> None:
    """Fail fast, before queueing, on a model that no source has or whose files are broken."""
    if not name:
        raise ModelNotFound("the model name is empty")
    if name == OFFLINE_MODEL or (name.startswith("hf://") and not repo):
        return
    if repo:
        _check_repo_model(name, Path(repo).expanduser())
        return
    available = remote_models()
    if name not in available:
        raise ModelNotFound(f"unknown model {name!r} among demucs's pretrained models; "
                            f"available: {', '.join(available)}")


def model_source(name: str, repo: str | None, hub_timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str:
    """Where a worker on this machine would load `name` from; `ModelNotFound` if from nowhere."""
    check_model_name(name, repo)
    if name == OFFLINE_MODEL:
        return "ships inside demucs (untrained; for tests)"
    if repo:
        return f"found in {repo}"
    cache = cached_in(name)
    if cache:
        return f"in the local {cache}"
    if hub_reachable(hub_timeout_s):
        return ("not downloaded yet; each worker node fetches it from the Hugging Face hub on "
                "first use (needs internet there)")
    raise ModelNotFound(f"{name} is not in the local model caches and the Hugging Face hub "
                        "cannot be reached (offline, or HF_HUB_OFFLINE is set); pass --repo DIR, "
                        f"use -n {OFFLINE_MODEL}, or see `python -m raydemucs doctor`")


def cached_in(name: str) -> str | None:
    """Which local cache holds every file of model `name`, if any."""
    if _in_hf_cache(name.removeprefix("hf://")):
        return "Hugging Face cache"
    if not name.startswith("hf://") and _in_torch_cache(name):
        return "torch hub cache (legacy demucs downloads)"
    return None


def _in_hf_cache(name: str) -> bool:
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
    from huggingface_hub import try_to_load_from_cache

    namespace, _, short = name.rpartition("/")
    repo_id = f"{namespace or DEFAULT_NAMESPACE}/{hf_repo_name(short)}"
    bag = try_to_load_from_cache(repo_id, f"{short}.yaml")
    if not isinstance(bag, str):
        return False
    signatures = yaml.safe_load(Path(bag).read_text())["models"]
    return all(isinstance(try_to_load_from_cache(repo_id, f"{sig}.safetensors"), str)
               for sig in signatures)


def _in_torch_cache(name: str) -> bool:
    import torch.hub
    from demucs.pretrained import REMOTE_ROOT, _parse_remote_files

    urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
    bag = REMOTE_ROOT / f"{name}.yaml"
    signatures = yaml.safe_load(bag.read_text())["models"] if bag.is_file() else [name]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return all(sig in urls and (folder / urls[sig].rsplit("/", 1)[1]).is_file()
               for sig in signatures)


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face endpoint answers within `timeout_s` (never when offline is set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    answers: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=timeout_s).close()
            answers.append(True)
        except urllib.error.HTTPError:
            answers.append(True)
        except (OSError, ValueError):
            answers.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # name lookups ignore the timeout
    thread.start()
    thread.join(timeout_s)
    return bool(answers and answers[0])


def _load_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"a checkpoint is not a Demucs model (it has no {_one_line(exc)} entry)"
    if isinstance(exc, (EOFError, pickle.UnpicklingError)):
        return f"a checkpoint is corrupt ({_one_line(exc)})"
    return _one_line(exc)


def load_separator(name: str, repo: str | None, device: str):
    """A `demucs.api.Separator` holding the model, its weights moved to `device` once."""
    from demucs.api import Separator

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
