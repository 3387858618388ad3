"""Typed configuration: code defaults < configs/default.yaml < profile or file < environment < flags.

Every key lives in a section dataclass below; YAML files and `RAYDEMUCS_<SECTION>_<KEY>`
variables may only override keys that exist. The Node.js service's variables keep their names
and units: `MAX_WORKERS`, `TASK_TIMEOUT` (milliseconds) and `LOG_LEVEL`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..models.runtimes import check_pool
from .errors import ConfigError, InvalidInput

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
FORMATS = ("wav", "mp3", "flac")
WAV_DEPTHS = ("int16", "int24", "float32")
CLIP_MODES = ("rescale", "clamp", "none")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
RUNTIMES = ("auto", "eager", "openvino")
DEFAULT_POOL = "default"
POOL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
RAY_BUILTIN_RESOURCES = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory_mb"}


def _opt(default, *, min=None, max=None, choices=None, doc=""):
    return field(default=default, metadata={"min": min, "max": max, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class WorkersConfig:
    max_workers: int = _opt(2, min=1, max=1024, doc="worker actors (MAX_WORKERS)")
    num_cpus: float = _opt(1.0, min=0.0, max=256.0, doc="Ray CPUs per worker; torch threads follow")
    num_gpus: float = _opt(0.0, min=0.0, max=16.0, doc="Ray GPUs per worker (fractions share one)")
    memory_mb: int = _opt(2048, min=0, max=1 << 20, doc="Ray memory reserved per worker")
    max_models: int = _opt(2, min=1, max=16, doc="models kept loaded per worker")
    prefetch: int = _opt(1, min=0, max=64, doc="tasks a busy worker holds beyond the running one: "
                         "they decode ahead (and with batch_size > 1 fill its forward passes)")
    batch_size: int = _opt(1, min=1, max=256, doc="segments per forward pass, from every track "
                           "the worker holds (GPU workers; 1: one at a time)")
    runtime: str = _opt("eager", choices=RUNTIMES, doc="how CPU workers run HTDemucs's network: "
                        "eager (torch), openvino (the extra raydemucs[openvino]), auto: "
                        "openvino where it is installed (docs/precision.md)")
    max_rss_mb: int = _opt(0, min=0, max=1 << 24, doc="recycle a worker whose RSS after a task "
                           "is above this (0: no fixed limit)")
    release_memory: bool = _opt(True, doc="after a task (at most every 5 s), hand the C heap's "
                                "free pages back to the system (glibc's malloc_trim)")
    max_rss_growth: float = _opt(0.5, min=0.0, max=100.0, doc="recycle a worker whose RSS after a "
                                 "task is this fraction above its RSS after its first (0: never)")
    min_free_memory_mb: int = _opt(256, min=0, max=1 << 24, doc="pause dispatch below this free memory")
    max_missed_pings: int = _opt(6, min=1, max=1000, doc="unanswered health polls before a replace")


@dataclass(frozen=True)
class TasksConfig:
    timeout_s: float = _opt(900.0, min=0.001, max=7 * 86400.0, doc="per attempt (TASK_TIMEOUT in ms)")
    max_retries: int = _opt(3, min=0, max=100, doc="retries after a retryable failure")
    retry_backoff_s: float = _opt(2.0, min=0.0, max=3600.0, doc="first retry delay, doubled each time")
    retry_backoff_max_s: float = _opt(60.0, min=0.0, max=86400.0, doc="longest retry delay")
    abort_grace_s: float = _opt(10.0, min=0.0, max=3600.0, doc="wait after an abort before killing")
    split_over_s: float | None = _opt(120.0, min=0.0, max=7 * 86400.0, doc="split longer tracks "
                                      "across idle workers of their pool (null: never)")
    max_pieces: int = _opt(4, min=2, max=64, doc="most workers one track is split across")


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
    device: str = _opt("auto", choices=DEVICES, doc="run on a pool of this device (a pool runs "
                       "on cuda when its workers have GPUs); auto: the model's pool, whatever it is")
    shifts: int = _opt(1, min=0, max=100, doc="--shifts")
    overlap: float = _opt(0.25, min=0.0, max=0.99, doc="--overlap")
    segment: float | None = _opt(None, min=0.1, max=3600.0, doc="--segment seconds")
    two_stems: str | None = _opt(None, doc="--two-stems STEM")
    format: str = _opt("wav", choices=FORMATS, doc="wav, mp3 (--mp3) or flac (--flac)")
    wav_depth: str = _opt("int16", choices=WAV_DEPTHS, doc="--int24 / --float32")
    mp3_bitrate: int = _opt(320, min=8, max=320, doc="--mp3-bitrate")
    mp3_preset: int = _opt(2, min=2, max=7, doc="--mp3-preset")
    clip_mode: str = _opt("rescale", choices=CLIP_MODES, doc="--clip-mode")
    precision: str = _opt("fp32", choices=PRECISIONS, doc="--precision: fp32 (demucs's own), bf16 "
                          "(CPUs with AVX512-BF16 or AMX, GPUs) or fp16 (GPUs)")
    stream_over_s: float | None = _opt(600.0, min=0.0, max=7 * 86400.0,
                                       doc="inputs longer than this stream (bounded memory)")

    def streams(self, duration_s: float) -> bool:
        """Whether an input of `duration_s` is separated streamed, in bounded memory."""
        return self.stream_over_s is not None and duration_s > self.stream_over_s


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


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP front door (a Ray Serve application beside the scheduler)."""

    enabled: bool = _opt(False, doc="start it with the service (or `start --http`)")
    host: str = _opt("127.0.0.1", doc="address it binds; anything but loopback needs API keys")
    port: int = _opt(8000, min=1, max=65535, doc="port it listens on")
    num_replicas: int = _opt(1, min=1, max=64, doc="ingress replicas (they hold no state)")
    allow_paths: bool = _opt(False, doc="let requests name an input path on the cluster's shared "
                             "file system (`input`); URIs such as s3:// are always allowed")
    chunk_mb: float = _opt(1.0, min=0.0625, max=64.0, doc="size of the chunks an upload is "
                           "streamed to the service's store in")


@dataclass(frozen=True)
class WebhooksConfig:
    """Calls to a task's `webhook_url` when it ends (Standard Webhooks, signed, retried)."""

    max_attempts: int = _opt(8, min=1, max=100, doc="attempts per event before it is dead")
    timeout_s: float = _opt(10.0, min=0.1, max=600.0, doc="per attempt, the whole call")
    retry_backoff_s: float = _opt(15.0, min=0.0, max=86400.0, doc="first retry delay, four times "
                                  "longer each time, with jitter (8 attempts: about a day)")
    allow_private: bool = _opt(False, doc="allow loopback, link-local and private addresses "
                               "(tests, a laptop); checked after DNS resolution")
    max_in_flight: int = _opt(64, min=1, max=10000, doc="deliveries sent at once")


@dataclass(frozen=True)
class RetentionConfig:
    """How long the service keeps what it holds: uploaded inputs, the stems it keeps, old records."""

    uploads_ttl_s: float | None = _opt(7 * 86400.0, min=0.0, max=10 * 365 * 86400.0,
                                       doc="an uploaded input, after the last task using it "
                                       "(null: keep)")
    results_ttl_s: float | None = _opt(7 * 86400.0, min=0.0, max=10 * 365 * 86400.0,
                                       doc="the stems the service keeps, after their task ended "
                                       "(null: keep)")
    records_ttl_s: float | None = _opt(None, min=0.0, max=10 * 365 * 86400.0,
                                       doc="finished tasks' journal rows (null: keep)")
    sweep_interval_s: float = _opt(600.0, min=0.05, max=86400.0, doc="longest wait between sweeps")


@dataclass(frozen=True)
class PoolConfig:
    """One pool of workers: the models routed to it, what each worker asks of Ray, its size.

    `num_cpus`, `num_gpus`, `memory_mb`, `max_workers`, `batch_size` and `prefetch` left out
    (None) are the `workers` section's; `Config.worker_pools()` fills them in.
    """

    name: str = _opt(DEFAULT_POOL, doc="worker actors are SERVICE:NAME-worker-i")
    models: tuple = _opt((), doc="models routed here; empty: every model no other pool lists")
    num_cpus: float | None = _opt(None, min=0.0, max=256.0, doc="as workers.num_cpus")
    num_gpus: float | None = _opt(None, min=0.0, max=16.0, doc="as workers.num_gpus")
    memory_mb: int | None = _opt(None, min=0, max=1 << 20, doc="as workers.memory_mb")
    resources: dict = field(default_factory=dict, metadata={"doc": "custom Ray resources"})
    min_workers: int = _opt(0, min=0, max=1024, doc="workers kept even when idle")
    max_workers: int | None = _opt(None, min=1, max=1024, doc="as workers.max_workers")
    batch_size: int | None = _opt(None, min=1, max=256, doc="as workers.batch_size")
    prefetch: int | None = _opt(None, min=0, max=64, doc="as workers.prefetch")
    idle_timeout_s: float = _opt(300.0, min=0.0, max=7 * 86400.0,
                                 doc="remove a worker idle this long, down to min_workers")

    @property
    def device(self) -> str:
        """Where its workers run the model: `cuda` when they have GPUs, else `cpu`."""
        return "cuda" if self.num_gpus else "cpu"

    @property
    def tasks_per_worker(self) -> int:
        """How many tasks one worker holds at once: the running one and `prefetch` more."""
        return 1 + self.prefetch


SECTIONS = {
    "workers": WorkersConfig,
    "tasks": TasksConfig,
    "input": InputConfig,
    "separation": SeparationConfig,
    "service": ServiceConfig,
    "storage": StorageConfig,
    "http": HttpConfig,
    "webhooks": WebhooksConfig,
    "retention": RetentionConfig,
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
    http: HttpConfig = field(default_factory=HttpConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    pools: tuple[PoolConfig, ...] = ()

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["pools"] = [{**pool, "models": list(pool["models"])} for pool in data["pools"]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        return apply_overrides(cls(), data, source="dict")

    @property
    def state_path(self) -> Path:
        return Path(self.service.state_dir).expanduser()

    def worker_pools(self) -> tuple[PoolConfig, ...]:
        """The pools to run, sizes left out taken from `workers`; with none declared, one pool
        named `default` of exactly `workers.max_workers` workers (serving every model)."""
        workers = self.workers
        declared = self.pools or (PoolConfig(min_workers=workers.max_workers),)
        pools = tuple(dataclasses.replace(
            pool, num_cpus=_either(pool.num_cpus, workers.num_cpus),
            num_gpus=_either(pool.num_gpus, workers.num_gpus),
            memory_mb=_either(pool.memory_mb, workers.memory_mb),
            max_workers=_either(pool.max_workers, workers.max_workers),
            batch_size=_either(pool.batch_size, workers.batch_size),
            prefetch=_either(pool.prefetch, workers.prefetch)) for pool in declared)
        for pool in pools:
            if pool.min_workers > pool.max_workers:
                raise ConfigError(f"pools[{pool.name}].min_workers={pool.min_workers} is above its "
                                  f"max_workers={pool.max_workers}; allowed: 0 to max_workers")
        return pools


def _either(value, default):
    return default if value is None else value


def route(pools: tuple[PoolConfig, ...], model: str, device: str = "auto",
          precision: str = "fp32") -> PoolConfig:
    """The pool that serves `model`: the one listing it, else the one listing no models;
    InvalidInput when there is neither, or when that pool does not run on `device` or cannot run
    `precision` (fp16 on a CPU pool)."""
    pool = (next((pool for pool in pools if model in pool.models), None)
            or next((pool for pool in pools if not pool.models), None))
    if pool is None:
        served = "; ".join(f"{pool.name}: {', '.join(pool.models)}" for pool in pools)
        raise InvalidInput(f"no worker pool serves model {model!r} (pools and their models: {served})")
    if device not in ("auto", pool.device):
        raise InvalidInput(f"model {model!r} runs on pool {pool.name!r}, whose workers use "
                           f"{pool.device}, not {device} (a pool uses cuda when its num_gpus is "
                           "above 0: set workers.num_gpus or a GPU pool)")
    check_pool(precision, pool.device)
    return pool


def _field_types(section_cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section_cls)}


def coerce(section: str, key: str, value: Any, source: str) -> Any:
    """Convert `value` to the declared type of `section.key` and check its range."""
    return _coerce_field(SECTIONS[section], section, key, value, source)


def _coerce_field(owner, prefix: str, key: str, value: Any, source: str) -> Any:
    """Convert `value` to the declared type of field `key` of dataclass `owner` and check it;
    errors call it `prefix.key`."""
    fields = _field_types(owner)
    if key not in fields:
        raise ConfigError(f"{source}: unknown key '{prefix}.{key}'; allowed: {', '.join(fields)}")
    meta, declared = fields[key].metadata, str(fields[key].type)
    name = f"{prefix}.{key}"
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
        if "None" in declared:
            return None
        raise ConfigError(f"{source}: {name} may not be empty")
    try:
        if declared.startswith("bool"):
            value = _boolean(value)
        elif declared.startswith("int"):
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


def _boolean(value: Any) -> bool:
    """A YAML or environment boolean: true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}
    if isinstance(value, (str, int)) and str(value).lower() in words:
        return words[str(value).lower()]
    raise ValueError


def apply_overrides(config: Config, data: Mapping[str, Any], source: str) -> Config:
    """Return `config` with `{section: {key: value}}` applied, each value checked."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    sections: dict[str, Any] = {}
    for section, values in data.items():
        if section == "pools":
            sections["pools"] = parse_pools(values, source)
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section}'; allowed: "
                              f"{', '.join(SECTIONS)}, pools")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        checked = {key: coerce(section, key, value, source) for key, value in values.items()}
        sections[section] = dataclasses.replace(getattr(config, section), **checked)
    return dataclasses.replace(config, **sections)


def parse_pools(entries: Any, source: str) -> tuple[PoolConfig, ...]:
    """Check a `pools` list (each entry a mapping of `PoolConfig` keys) and the pools together:
    unique names, no model in two pools, at most one pool that lists no models."""
    if entries is None:
        return ()
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{source}: pools must be a list of mappings, got {type(entries).__name__}")
    pools = tuple(_parse_pool(index, entry, source) for index, entry in enumerate(entries))
    names = [pool.name for pool in pools]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise ConfigError(f"{source}: two pools are named {twice!r}; names must be unique")
    owners: dict[str | None, str] = {}  # model -> pool; None -> the pool that lists none
    for pool in pools:
        for model in pool.models or (None,):
            if model in owners:
                claim = (f"model {model!r} is listed by pools {owners[model]!r} and {pool.name!r}"
                         if model else f"pools {owners[model]!r} and {pool.name!r} both list no "
                         "models; at most one pool may take every other model")
                raise ConfigError(f"{source}: {claim}")
            owners[model] = pool.name
    return pools


def _parse_pool(index: int, entry: Any, source: str) -> PoolConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{source}: pools[{index}] must be a mapping of pool keys, "
                          f"got {type(entry).__name__}")
    if "name" not in entry:
        raise ConfigError(f"{source}: pools[{index}] has no name")
    name = _coerce_field(PoolConfig, f"pools[{index}]", "name", entry["name"], source)
    if not POOL_NAME.fullmatch(name):
        raise ConfigError(f"{source}: pools[{index}].name={name!r}; allowed: up to 32 lowercase "
                          "letters, digits, '-' and '_', starting with a letter or digit")
    label = f"pools[{name}]"
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "models":
            values[key] = _pool_models(label, value, source)
        elif key == "resources":
            values[key] = _pool_resources(label, value, source)
        else:
            values[key] = _coerce_field(PoolConfig, label, key, value, source)
    return PoolConfig(**values)


def _pool_models(label: str, models: Any, source: str) -> tuple[str, ...]:
    if models is None:
        return ()
    if not isinstance(models, (list, tuple)) or not all(
            isinstance(model, str) and model.strip() for model in models):
        raise ConfigError(f"{source}: {label}.models={models!r}; allowed: a list of model names")
    if len(set(models)) != len(models):
        raise ConfigError(f"{source}: {label}.models={list(models)!r} lists a model twice")
    return tuple(models)


def _pool_resources(label: str, resources: Any, source: str) -> dict[str, float]:
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise ConfigError(f"{source}: {label}.resources={resources!r}; allowed: a mapping of "
                          "custom Ray resource names to amounts")
    checked = {}
    for key, amount in resources.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source}: {label}.resources has a key {key!r}; allowed: names")
        name = f"{label}.resources.{key}"
        if key in RAY_BUILTIN_RESOURCES:
            raise ConfigError(f"{source}: {name} is one of Ray's own resources; "
                              f"use {label}.{RAY_BUILTIN_RESOURCES[key]}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                or not math.isfinite(amount) or amount < 0:
            raise ConfigError(f"{source}: {name}={amount!r}; allowed: a number >= 0")
        checked[key] = float(amount)
    return checked


def profile_path(name: str) -> Path:
    """Path of a shipped profile (`default`, `dev`, `prod`, `test`)."""
    path = Path(str(resources.files("raydemucs.configs") / f"{name}.yaml"))
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
    config = apply_overrides(config, overrides or {}, "flags")
    config.worker_pools()  # pool sizes taken from `workers` are checked once every layer is in
    return config
