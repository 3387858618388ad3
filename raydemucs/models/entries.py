"""What a model is: its architecture, stems, sample rate, licence, source, size, sha256 and
published score, from the catalogue shipped in the package (`catalogue.yaml`), an operator's
catalogue file laid over it (`models.catalogue`), or a model directory, where `NAME.ckpt` with
`NAME.yaml` beside it (the community layout) is read next to Demucs's bags.

No torch here, and no pickle is ever opened: the client and the scheduler describe models too.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import InvalidInput, ModelNotFound
from ..core.names import printable
from .roformer.config import ARCHITECTURES as ROFORMERS
from .roformer.config import parse_config, read_yaml

DEMUCS_ARCHITECTURES = ("htdemucs", "hdemucs", "demucs", "demucs_bag")
ARCHITECTURES = DEMUCS_ARCHITECTURES + ROFORMERS
UNKNOWN_LICENCE = "unknown"
FILE_KINDS = ("ckpt", "yaml")


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """One file of a downloadable model: where it is published and what it must be."""

    url: str
    sha256: str | None = None
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a model is. `directory`: the model directory it was found in (None: the catalogue);
    `files`: a downloadable model's `ckpt` and `yaml`."""

    name: str
    architecture: str
    licence: str = UNKNOWN_LICENCE
    stems: tuple[str, ...] | None = None
    sample_rate: int | None = None
    size: int | None = None
    sha256: str | None = None
    score: dict | None = None
    source: str | None = None
    directory: str | None = None
    files: dict[str, ModelFile] = dataclasses.field(default_factory=dict)

    def to_dict(self, public: bool = False) -> dict:
        """Plain fields; `public`: a local model's source is its directory's name only, never a
        server path."""
        return {"name": self.name, "architecture": self.architecture,
                "stems": list(self.stems) if self.stems else None,
                "sample_rate": self.sample_rate, "licence": self.licence,
                "source": self.where(public), "size": self.size, "sha256": self.sha256,
                "score": self.score}

    def where(self, public: bool = False) -> str:
        if self.directory is not None:
            return f"local {Path(self.directory).name if public else self.directory}"
        if "ckpt" in self.files:
            return self.files["ckpt"].url
        return self.source or f"https://huggingface.co/{hub_repo_id(self.name)}"


def hub_repo_id(name: str) -> str:
    """The Hugging Face repository demucs downloads model `name` from (`demucs.hf`'s naming)."""
    namespace, _, short = name.rpartition("/")
    if short == "htdemucs":
        repo = "HTDemucs"
    elif short.startswith("htdemucs_"):
        repo = "HTDemucs-" + short[len("htdemucs_"):]
    else:
        repo = "Demucs-" + short
    return f"{namespace or 'adefossez'}/{repo}"


# -- the catalogue --------------------------------------------------------------------------------
def _entry(name: str, raw: Any, where: str) -> ModelInfo:
    """One catalogue entry, checked: a known architecture, a licence, well-formed files."""
    if not isinstance(raw, dict):
        raise ModelNotFound(f"{where}: entry {name!r} must be a mapping")
    fields = {key: raw.get(key) for key in ("architecture", "stems", "sample_rate", "licence",
                                             "score", "source") if raw.get(key) is not None}
    check_architecture(name, fields.get("architecture"), where)
    files = raw.get("files") or {}
    if set(files) - set(FILE_KINDS) or (files and set(files) != set(FILE_KINDS)):
        raise ModelNotFound(f"{where}: entry {name!r}'s files must be ckpt and yaml")
    try:
        files = {kind: ModelFile(**spec) for kind, spec in files.items()}
    except TypeError:
        raise ModelNotFound(f"{where}: entry {name!r}'s files take url, sha256 and size "
                            "only") from None
    ckpt = files.get("ckpt")
    return ModelInfo(name=name, stems=tuple(fields.pop("stems", ())) or None, files=files,
                     sha256=ckpt and ckpt.sha256, size=ckpt and ckpt.size,
                     **{key: fields[key] for key in fields})


def read_catalogue(text: str, where: str) -> dict[str, ModelInfo]:
    """The entries of a catalogue file (`models: {NAME: {...}}`)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ModelNotFound(f"{where} is not valid YAML ({str(exc).splitlines()[0]})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ModelNotFound(f"{where} must hold `models:`, a mapping of model names to entries")
    return {str(name): _entry(str(name), raw, where) for name, raw in models.items()}


@functools.lru_cache(maxsize=1)
def shipped() -> dict[str, ModelInfo]:
    """The catalogue shipped in the package."""
    text = resources.files("raydemucs.models").joinpath("catalogue.yaml").read_text("utf-8")
    return read_catalogue(text, "the shipped catalogue")


@functools.lru_cache(maxsize=8)
def _operator_catalogue(path: str, stamp: tuple[int, int]) -> dict[str, ModelInfo]:
    return read_catalogue(Path(path).read_text("utf-8"), f"models.catalogue {printable(path)}")


def catalogue(file: str | None = None) -> dict[str, ModelInfo]:
    """The shipped entries, with those of the operator's catalogue `file` laid over by name."""
    if not file:
        return shipped()
    path = Path(file).expanduser()
    stamp = _stamp(path)
    if stamp is None:
        raise ModelNotFound(f"models.catalogue {printable(file)} cannot be read")
    return {**shipped(), **_operator_catalogue(str(path), stamp)}


def check_architecture(name: str, architecture: Any, where: str) -> str:
    if architecture not in ARCHITECTURES:
        raise ModelNotFound(f"{where}: model {name!r} has architecture {architecture!r}, "
                            f"which this engine does not run; known: {', '.join(ARCHITECTURES)}")
    return architecture


def check_licence(info: ModelInfo, allowed: tuple[str, ...]) -> None:
    """Refuse a model whose licence the operator does not allow (`()`: every licence)."""
    if allowed and info.licence not in allowed:
        raise InvalidInput(f"model {info.name!r} is under licence {info.licence!r}, which this "
                           f"service does not serve (models.allow_licences: {', '.join(allowed)})")


# -- the community layout: NAME.ckpt with NAME.yaml beside it -------------------------------------
def licence_note(note: Path, default: str = UNKNOWN_LICENCE) -> str:
    """The first line of a `NAME.licence` file beside a model, else `default`."""
    if not note.is_file():
        return default
    first = note.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return printable(first[0].strip()) if first else default


def community_model(name: str, ckpt: Path) -> ModelInfo:
    """A `NAME.ckpt` with `NAME.yaml` beside it, described from the YAML and the file (read again
    only when one of its files changed)."""
    stamps = tuple(_stamp(ckpt.with_suffix(suffix)) for suffix in (".ckpt", ".yaml", ".licence"))
    return _community_model(name, ckpt, stamps)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=256)
def _community_model(name: str, ckpt: Path, stamps: tuple) -> ModelInfo:
    data = read_yaml(ckpt.with_suffix(".yaml"))
    config = parse_config(data, f"{name}.yaml")  # refuses an architecture or option not run here
    licence = str(data.get("licence") or data.get("license") or UNKNOWN_LICENCE)
    return ModelInfo(name=name, architecture=config.architecture,
                     licence=licence_note(ckpt.with_suffix(".licence"), licence),
                     stems=config.stems, sample_rate=config.samplerate,
                     size=ckpt.stat().st_size, sha256=file_sha256(ckpt), directory=str(ckpt.parent))


# -- hashes, cached by (path, mtime, size) --------------------------------------------------------
_hashes: dict[tuple[str, int, int], str] = {}
_hashing = threading.Lock()


def file_sha256(path: Path) -> str:
    """The file's sha256, computed once per (path, mtime, size) in this process."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _hashing:
        if key not in _hashes:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            _hashes[key] = digest.hexdigest()
        return _hashes[key]
