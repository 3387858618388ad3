"""The model catalogue: which names exist and where a worker would load each from, with errors
that say what to do when offline.

Nothing here imports torch or demucs's modules (the client checks models before it queues): the
files demucs reads are read here directly, as demucs lays them out (tests compare each reading
with demucs's own).
"""
from __future__ import annotations

import importlib.util
import os
import pickletools
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import yaml

from ..core.config import ModelsConfig
from ..core.errors import InvalidInput, ModelNotFound
from ..core.names import printable
from .downloads import check_download, fetch_model
from .entries import (
    ModelInfo,
    catalogue,
    check_licence,
    community_model,
    file_sha256,
    hub_repo_id,
    licence_note,
)
from .roformer.config import load_config

OFFLINE_MODEL = "demucs_unittest"
HUB_PROBE_TIMEOUT_S = 3.0
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
DEMUCS_CLASSES = {"demucs.htdemucs HTDemucs": "htdemucs", "demucs.hdemucs HDemucs": "hdemucs",
                  "demucs.demucs Demucs": "demucs"}
STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
              "BINSTRING", "STRING")


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for error messages."""
    return " ".join(str(exc).split()).rstrip(".")[:300] or type(exc).__name__


# -- files as demucs lays them out ---------------------------------------------------------------
def remote_root() -> Path:
    """demucs's `remote/` folder: the bags it can download and `files.txt` (read, not imported)."""
    spec = importlib.util.find_spec("demucs")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("demucs is not installed (pip install demucs)")
    return Path(spec.submodule_search_locations[0]) / "remote"


def remote_checkpoints() -> dict[str, str]:
    """`{signature: file name}` of the checkpoints `files.txt` lists, as demucs parses it."""
    found = {}
    for line in (remote_root() / "files.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "root:")):
            found[line.split("-", 1)[0]] = line.rsplit("/", 1)[-1]
    return found


def torch_hub_dir() -> Path:
    """Where `torch.hub` keeps downloads (`torch.hub.get_dir()`), without importing torch."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "torch" / "hub"


def repo_contents(repo: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """`(checkpoints by signature, bags by name)` of a local folder, as demucs's `LocalRepo` and
    `BagOnlyRepo` see it (`SIG.th` or `SIG-CHECKSUM.th`, and `NAME.yaml`); a `NAME.yaml` beside
    a `NAME.ckpt` is that checkpoint's config, not a bag (`community_checkpoints`)."""
    checkpoints, bags = {}, {}
    for file in _files(repo):
        if file.suffix == ".th":
            signature = file.stem.rsplit("-", 1)[0]
            if signature in checkpoints:
                raise ModelNotFound(f"model repo {printable(repo)} holds two checkpoints for "
                                    f"signature {signature!r}; keep one")
            checkpoints[signature] = file
        elif file.suffix == ".yaml" and not file.with_suffix(".ckpt").is_file():
            bags[file.stem] = file
    return checkpoints, bags


def community_checkpoints(repo: Path) -> dict[str, Path]:
    """`NAME.ckpt` files with their `NAME.yaml` beside them (the community layout), by name."""
    return {file.stem: file for file in _files(repo)
            if file.suffix == ".ckpt" and file.with_suffix(".yaml").is_file()}


def _files(repo: Path) -> list[Path]:
    if not repo.is_dir():
        raise ModelNotFound(f"model repo {printable(repo)} is not a directory")
    try:
        return sorted(repo.iterdir())
    except OSError as exc:
        raise ModelNotFound(f"model repo {printable(repo)} cannot be read: {one_line(exc)}") from None


def _bag_signatures(bag_file: Path) -> list[str]:
    """The checkpoint signatures a bag's YAML lists (loaded safely)."""
    try:
        bag = yaml.safe_load(bag_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelNotFound(f"bag {printable(bag_file)} is not readable YAML: "
                            f"{one_line(exc)}") from None
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


def _repo_model_files(name: str, repo: Path, community: dict[str, Path]) -> list[Path]:
    """The checkpoints of Demucs model `name` in `repo` (a checkpoint or a bag), each whole."""
    checkpoints, bags = repo_contents(repo)
    if name in checkpoints:
        signatures = [name]
    elif name in bags:
        signatures = _bag_signatures(bags[name])
    elif (repo / f"{name}.ckpt").is_file():
        raise ModelNotFound(f"{name}.ckpt in repo {printable(repo)} has no {name}.yaml beside it "
                            "(the training config it is read with)")
    else:
        available = ", ".join(sorted(set(checkpoints) | set(bags) | set(community))) or "none"
        raise ModelNotFound(f"unknown model {name!r} in repo {printable(repo)}; available: "
                            f"{available}")
    for sig in signatures:
        if sig not in checkpoints:
            raise ModelNotFound(f"bag {name!r} in repo {printable(repo)} names checkpoint "
                                f"{sig!r}, but there is no {printable(sig)}.th")
        _check_checkpoint(checkpoints[sig])
    return [checkpoints[sig] for sig in signatures]


def checkpoint_architecture(path: Path) -> str | None:
    """The architecture of the Demucs class a checkpoint names, told from its pickle's opcodes
    (`pickletools.genops` parses, never runs); None when it names none of demucs's."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = next((name for name in archive.namelist() if name.endswith("/data.pkl")),
                           None)
            data = archive.read(pickled) if pickled else b""
    except (OSError, zipfile.BadZipFile):
        return None  # a legacy (non-zip) checkpoint: told once a worker loads it
    strings, memo = [], {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in STRING_OPS:
                strings.append(arg)
            elif op.name in ("BINPUT", "LONG_BINPUT", "MEMOIZE") and strings:
                memo[arg if op.name != "MEMOIZE" else len(memo)] = strings[-1]
            elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
                strings.append(memo[arg])
            found = (arg if op.name == "GLOBAL" else " ".join(strings[-2:])
                     if op.name == "STACK_GLOBAL" else None)
            if found in DEMUCS_CLASSES:
                return DEMUCS_CLASSES[found]
    except ValueError:
        return None
    return None


def _demucs_architecture(files: list[Path]) -> str:
    """One class's architecture for a checkpoint or a bag of one kind; else `demucs_bag`."""
    found = {checkpoint_architecture(file) for file in files}
    if len(found) == 1 and None not in found:
        return found.pop()
    return "demucs" if len(files) == 1 else "demucs_bag"


def _describe_local(name: str, repo: Path, entries: dict[str, ModelInfo]) -> ModelInfo:
    """Model `name` in directory `repo`: `NAME.ckpt` with `NAME.yaml` (checked against the
    catalogue's sha256 when it lists the name), else a Demucs checkpoint or bag."""
    community = community_checkpoints(repo)
    if name in community:
        _check_checkpoint(community[name])
        info = community_model(name, community[name])
        pinned = entries.get(name)
        if pinned and pinned.sha256 and pinned.sha256 != info.sha256:
            raise ModelNotFound(f"{name}.ckpt in repo {printable(repo)} is not the catalogue's "
                                f"{name} (sha256 {info.sha256[:12]}..., the catalogue says "
                                f"{pinned.sha256[:12]}...)")
        return info
    files = _repo_model_files(name, repo, community)
    return ModelInfo(name=name, architecture=_demucs_architecture(files),
                     licence=licence_note(repo / f"{name}.licence"), directory=str(repo),
                     size=sum(file.stat().st_size for file in files),
                     sha256=file_sha256(files[0]) if len(files) == 1 else None)


# -- names and sources ---------------------------------------------------------------------------
def check_two_stems(stem: str | None, model: str, stems) -> None:
    """Refuse a two-stems name that `model` does not make (`stems`: its stems; None: not known
    yet, for the worker that loads it to judge)."""
    if stem is not None and stems is not None and stem not in stems:
        raise InvalidInput(f"two-stems {stem!r} is not a stem of model {model}; choose "
                           f"one of {', '.join(stems)}")


def remote_models() -> list[str]:
    """Names demucs can download (bags first); `demucs_unittest` ships inside the package."""
    bags = sorted(p.stem for p in remote_root().glob("*.yaml"))
    return bags + [OFFLINE_MODEL]


def describe(name: str, repo: str | None = None, catalogue_file: str | None = None) -> ModelInfo:
    """What model `name` is: from directory `repo` when one is given, else from the catalogue
    (the shipped entries and those of `catalogue_file`) or demucs's own list; `ModelNotFound`
    when no source has it or its files are broken."""
    if not name:
        raise ModelNotFound("the model name is empty")
    entries = catalogue(catalogue_file)
    if repo:
        return _describe_local(name, Path(repo).expanduser(), entries)
    if name in entries:
        return entries[name]
    if name.startswith("hf://"):
        return ModelInfo(name=name, architecture="demucs",
                         source=f"https://huggingface.co/{hub_repo_id(name[len('hf://'):])}")
    if name in remote_models():
        return ModelInfo(name=name, architecture="demucs_bag", licence="MIT")
    raise ModelNotFound(f"unknown model {name!r}; available: "
                        f"{', '.join(sorted(set(entries) | set(remote_models())))}")


def check_model_name(name: str, repo: str | None, models: ModelsConfig | None = None) -> ModelInfo:
    """Fail fast, before queueing, on a model that no source has, whose files are broken or
    whose licence `models.allow_licences` leaves out; what the model is."""
    models = models or ModelsConfig()
    info = describe(name, repo, models.catalogue)
    check_licence(info, models.allow_licences)
    if info.files:
        check_download(info, models)
    return info


def model_directory(name: str, repo: str | None, models: ModelsConfig) -> str | None:
    """The directory a worker loads model `name` from: `repo` when given; for a downloadable
    catalogue model, the one it is downloaded into on first use (each file verified by sha256
    before it is used); else None (demucs's own sources)."""
    info = None if repo else catalogue(models.catalogue).get(name)
    if info is None or not info.files:
        return repo  # the loader judges the rest
    return str(fetch_model(info, models))


def roformer_files(name: str, repo: str | Path | None) -> tuple[Path, Path] | None:
    """`NAME.ckpt` and `NAME.yaml` in model directory `repo` (the community layout), when a
    `NAME.ckpt` is there; else None (a Demucs model, or none)."""
    if not repo or Path(name).name != name or name.startswith("."):
        return None     # a name that is no plain file name is no checkpoint's
    folder = Path(repo).expanduser()
    checkpoint = folder / f"{name}.ckpt"
    return (checkpoint, folder / f"{name}.yaml") if checkpoint.is_file() else None


def architecture_of(name: str, repo: str | None, catalogue_file: str | None = None) -> str | None:
    """Model `name`'s architecture, for routing (a checkpoint's YAML is read, the checkpoint is
    not hashed); None when it cannot be told (the worker that loads it reports why)."""
    try:
        found = roformer_files(name, repo)
        if found and found[1].is_file():
            return load_config(found[1]).architecture
        return describe(name, repo, catalogue_file).architecture
    except ModelNotFound:
        return None


def model_names(repo: str | None = None, catalogue_file: str | None = None) -> list[str]:
    """The models of directory `repo`, else of the catalogue and demucs's list."""
    if repo:
        path = Path(repo).expanduser()
        checkpoints, bags = repo_contents(path)
        return sorted(set(checkpoints) | set(bags) | set(community_checkpoints(path)))
    return list(dict.fromkeys([*catalogue(catalogue_file), *remote_models()]))


def list_models(repo: str | None = None, models: ModelsConfig | None = None) -> list[dict]:
    """Each model's description (`to_dict`) with `servable` (its licence allowed), or `error`:
    why it cannot be served."""
    models = models or ModelsConfig()
    listed = []
    for name in model_names(repo, models.catalogue):
        try:
            info = describe(name, repo, models.catalogue)
        except ModelNotFound as exc:
            listed.append({"name": name, "error": one_line(exc)})
            continue
        allowed = not models.allow_licences or info.licence in models.allow_licences
        listed.append({**info.to_dict(), "servable": allowed})
    return listed


def model_source(name: str, repo: str | None, hub_timeout_s: float = HUB_PROBE_TIMEOUT_S,
                 models: ModelsConfig | None = None) -> str:
    """Where a worker on this machine would load `name` from; `ModelNotFound` if from nowhere."""
    info = check_model_name(name, repo, models)
    if name == OFFLINE_MODEL:
        return "ships inside demucs (untrained; for tests)"
    if repo:
        return f"found in {repo}"
    if info.files:
        return (f"downloaded on first use from {info.where()} into models.cache_dir on each "
                "worker node, checked by sha256 before it is loaded")
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
    from huggingface_hub import try_to_load_from_cache

    repo_id, short = hub_repo_id(name), name.rpartition("/")[2]
    bag = try_to_load_from_cache(repo_id, f"{short}.yaml")
    if not isinstance(bag, str):
        return False
    signatures = yaml.safe_load(Path(bag).read_text())["models"]
    return all(isinstance(try_to_load_from_cache(repo_id, f"{sig}.safetensors"), str)
               for sig in signatures)


def _in_torch_cache(name: str) -> bool:
    files = remote_checkpoints()
    bag = remote_root() / f"{name}.yaml"
    signatures = yaml.safe_load(bag.read_text())["models"] if bag.is_file() else [name]
    folder = torch_hub_dir() / "checkpoints"
    return all(sig in files and (folder / files[sig]).is_file() for sig in signatures)


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
