"""Typed configuration: code defaults < configs/default.yaml < profile or file < environment < flags.

Every key lives in a section dataclass below; YAML files and `RAYDEMUCS_<SECTION>_<KEY>`
variables may only override keys that exist. The Node.js service's variables keep their names
and units: `MAX_WORKERS`, `TASK_TIMEOUT` (milliseconds) and `LOG_LEVEL`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
FORMATS = ("wav", "mp3", "flac")
WAV_DEPTHS = ("int16", "int24", "float32")
CLIP_MODES = ("rescale", "clamp", "none")
DEVICES = ("auto", "cpu", "cuda")


def _opt(default, *, min=None, max=None, choices=None, doc=""):
    return field(default=default, metadata={"min": min, "max": max, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class WorkersConfig:
    max_workers: int = _opt(2, min=1, max=1024, doc="worker actors (MAX_WORKERS)")
    num_cpus: float = _opt(1.0, min=0.0, max=256.0, doc="Ray CPUs per worker; torch threads follow")
    num_gpus: float = _opt(0.0, min=0.0, max=16.0, doc="Ray GPUs per worker (fractions share one)")
    memory_mb: int = _opt(2048, min=0, max=1 << 20, doc="Ray memory reserved per worker")
    max_models: int = _opt(2, min=1, max=16, doc="models kept loaded per worker")
    prefetch: int = _opt(1, min=0, max=4, doc="tasks queued inside a busy worker (decode ahead)")
    batch_size: int = _opt(1, min=1, max=256, doc="segments per forward pass, from up to this "
                           "many tasks at once (GPU workers; 1: off)")
    max_rss_mb: int = _opt(0, min=0, max=1 << 24, doc="recycle a worker above this RSS (0: never)")
    min_free_memory_mb: int = _opt(256, min=0, max=1 << 24, doc="pause dispatch below this free memory")
    max_missed_pings: int = _opt(6, min=1, max=1000, doc="unanswered health polls before a replace")


@dataclass(frozen=True)
class TasksConfig:
    timeout_s: float = _opt(900.0, min=0.001, max=7 * 86400.0, doc="per attempt (TASK_TIMEOUT in ms)")
    max_retries: int = _opt(3, min=0, max=100, doc="retries after a retryable failure")
    retry_backoff_s: float = _opt(2.0, min=0.0, max=3600.0, doc="first retry delay, doubled each time")
    retry_backoff_max_s: float = _opt(60.0, min=0.0, max=86400.0, doc="longest retry delay")
    abort_grace_s: float = _opt(10.0, min=0.0, max=3600.0, doc="wait after an abort before killing")


@dataclass(frozen=True)
class InputConfig:
    max_file_mb: float = _opt(100.0, min=0.001, max=1 << 20, doc="largest input file")
    max_duration_s: float = _opt(3 * 3600.0, min=1.0, max=7 * 86400.0, doc="longest input")
    min_duration_s: float = _opt(0.1, min=0.0, max=3600.0, doc="shortest input")


@dataclass(frozen=True)
class SeparationConfig:
    """Per-task separation options; names and meaning follow `python -m demucs.separate`."""

    model: str = _opt("htdemucs", doc="-n: model name")
    repo: str | None = _opt(None, doc="--repo: local folder of models")
    device: str = _opt("auto", choices=DEVICES, doc="auto = cuda when the worker has a GPU")
    shifts: int = _opt(1, min=0, max=100, doc="--shifts")
    overlap: float = _opt(0.25, min=0.0, max=0.99, doc="--overlap")
    segment: float | None = _opt(None, min=0.1, max=3600.0, doc="--segment seconds")
    two_stems: str | None = _opt(None, doc="--two-stems STEM")
    format: str = _opt("wav", choices=FORMATS, doc="wav, mp3 (--mp3) or flac (--flac)")
    wav_depth: str = _opt("int16", choices=WAV_DEPTHS, doc="--int24 / --float32")
    mp3_bitrate: int = _opt(320, min=8, max=320, doc="--mp3-bitrate")
    mp3_preset: int = _opt(2, min=2, max=7, doc="--mp3-preset")
    clip_mode: str = _opt("rescale", choices=CLIP_MODES, doc="--clip-mode")
    stream_over_s: float | None = _opt(600.0, min=0.0, max=7 * 86400.0,
                                       doc="inputs longer than this stream (bounded memory)")


@dataclass(frozen=True)
class ServiceConfig:
    name: str = _opt("raydemucs", doc="actor name prefix; several services may share a cluster")
    state_dir: str = _opt("~/.raydemucs", doc="journal and service files (on the head node)")
    output_dir: str = _opt("separated", doc="default output directory")
    log_level: str = _opt("info", choices=LOG_LEVELS, doc="LOG_LEVEL")
    log_format: str = _opt("text", choices=LOG_FORMATS, doc="text, or json for log shippers")
    poll_interval_s: float = _opt(0.5, min=0.01, max=60.0, doc="progress and health polling")
    shutdown_grace_s: float = _opt(60.0, min=0.0, max=86400.0, doc="drain time for running tasks")
    dashboard_host: str = _opt("127.0.0.1", doc="where a locally started Ray serves its dashboard")


@dataclass(frozen=True)
class StorageConfig:
    """Remote inputs and outputs (s3://, gs://, ... through fsspec); credentials stay in each
    node's environment, never in the config."""

    endpoint_url: str | None = _opt(None, doc="S3-compatible endpoint (MinIO, Ceph, R2); null: AWS")


SECTIONS = {
    "workers": WorkersConfig,
    "tasks": TasksConfig,
    "input": InputConfig,
    "separation": SeparationConfig,
    "service": ServiceConfig,
    "storage": StorageConfig,
}

LEGACY_ENV = {
    "MAX_WORKERS": ("workers", "max_workers", 1.0),
    "TASK_TIMEOUT": ("tasks", "timeout_s", 0.001),
    "LOG_LEVEL": ("service", "log_level", None),
}


@dataclass(frozen=True)
class Config:
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    input: InputConfig = field(default_factory=InputConfig)
    separation: SeparationConfig = field(default_factory=SeparationConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        return apply_overrides(cls(), data, source="dict")

    @property
    def state_path(self) -> Path:
        return Path(self.service.state_dir).expanduser()


def _field_types(section_cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section_cls)}


def coerce(section: str, key: str, value: Any, source: str) -> Any:
    """Convert `value` to the declared type of `section.key` and check its range."""
    fields = _field_types(SECTIONS[section])
    if key not in fields:
        raise ConfigError(f"{source}: unknown key '{section}.{key}'; allowed: {', '.join(fields)}")
    meta, declared = fields[key].metadata, str(fields[key].type)
    name = f"{section}.{key}"
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
        if "None" in declared:
            return None
        raise ConfigError(f"{source}: {name} may not be empty")
    try:
        if declared.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif declared.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        kind = declared.split(" ")[0]
        raise ConfigError(f"{source}: {name}={value!r} is not a valid {kind}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{source}: {name}={value!r}; allowed: {', '.join(meta['choices'])}")
    low, high = meta["min"], meta["max"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{source}: {name}={value!r} is out of range [{low}, {high}]")
    return value


def apply_overrides(config: Config, data: Mapping[str, Any], source: str) -> Config:
    """Return `config` with `{section: {key: value}}` applied, each value checked."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    sections = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section}'; allowed: {', '.join(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        checked = {key: coerce(section, key, value, source) for key, value in values.items()}
        sections[section] = dataclasses.replace(getattr(config, section), **checked)
    return dataclasses.replace(config, **sections)


def profile_path(name: str) -> Path:
    """Path of a shipped profile (`default`, `dev`, `prod`, `test`)."""
    path = Path(str(resources.files("raydemucs") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown profile '{name}'; shipped profiles: {', '.join(shipped)}")
    return path


def read_yaml(path: Path) -> dict:
    """Load a YAML config file safely; an empty file is an empty mapping."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return data or {}


def env_overrides(environ: Mapping[str, str]) -> dict:
    """Overrides from `MAX_WORKERS`, `TASK_TIMEOUT` (ms), `LOG_LEVEL` and `RAYDEMUCS_<SECTION>_<KEY>`."""
    out: dict[str, dict] = {}
    for var, (section, key, scale) in LEGACY_ENV.items():
        if environ.get(var):
            value: Any = environ[var]
            if scale is not None:
                try:
                    value = float(value) * scale
                except ValueError:
                    raise ConfigError(f"environment: {var}={value!r} is not a number") from None
            out.setdefault(section, {})[key] = value.lower() if var == "LOG_LEVEL" else value
    for var, value in environ.items():
        if not var.startswith("RAYDEMUCS_"):
            continue
        rest = var[len("RAYDEMUCS_"):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(f"environment: {var} names no config section; allowed: "
                              + ", ".join(f"RAYDEMUCS_{s.upper()}_*" for s in SECTIONS))
        out.setdefault(section, {})[rest[len(section) + 1:]] = value
    return out


def load_config(profile: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Build the effective config: defaults, default.yaml, a profile or file, env, then flags."""
    if profile and config_file:
        raise ConfigError("give either a profile or a config file, not both")
    config = apply_overrides(Config(), read_yaml(profile_path("default")), "default.yaml")
    if profile:
        config = apply_overrides(config, read_yaml(profile_path(profile)), f"profile {profile}")
    if config_file:
        config = apply_overrides(config, read_yaml(Path(config_file)), str(config_file))
    environ = os.environ if environ is None else environ
    config = apply_overrides(config, env_overrides(environ), "environment")
    return apply_overrides(config, overrides or {}, "flags")
