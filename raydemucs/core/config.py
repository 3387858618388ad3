"""Typed configuration: code defaults < configs/default.yaml < profile or file < environment < flags.

Every key lives in a section model below; YAML files and `RAYDEMUCS_<SECTION>_<KEY>` variables
may only override keys that exist. The Node.js service's variables keep their names and units:
`MAX_WORKERS`, `TASK_TIMEOUT` (milliseconds) and `LOG_LEVEL`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from ..ensembles.presets import shipped_presets
from .config_errors import refusal
from .config_types import Float, Int, MaybeFloat, MaybeText, Section, Text, Texts
from .errors import ConfigError, InvalidInput
from .inputs import allowed_roots, check_prefix, check_root, listed
from .pools import PoolConfig, Pools, worker_pools

T = TypeVar("T", bound=BaseModel)
InputPrefixes = Annotated[tuple[Annotated[str, AfterValidator(check_prefix)], ...],
                          BeforeValidator(listed)]
InputRoots = Annotated[tuple[Annotated[str, AfterValidator(check_root)], ...],
                       BeforeValidator(allowed_roots)]
WEEK_S, TEN_YEARS_S = 7 * 86400.0, 10 * 365 * 86400.0


class WorkersConfig(Section):
    """The worker actors: how many, what each asks of Ray, when one is recycled."""

    max_workers: Int = Field(2, ge=1, le=1024, description="worker actors (MAX_WORKERS)")
    num_cpus: Float = Field(1.0, ge=0.0, le=256.0,
                            description="Ray CPUs per worker; torch threads follow")
    num_gpus: Float = Field(0.0, ge=0.0, le=16.0,
                            description="Ray GPUs per worker (fractions share one)")
    memory_mb: Int = Field(2048, ge=0, le=1 << 20, description="Ray memory reserved per worker; "
                           "also a ceiling on its RSS after a task (0: none)")
    max_models: Int = Field(2, ge=1, le=16, description="models kept loaded per worker")
    prefetch: Int = Field(1, ge=0, le=64, description="tasks a busy worker holds beyond the "
                          "running one: they decode ahead (and with batch_size > 1 fill its "
                          "forward passes)")
    batch_size: Int = Field(1, ge=1, le=256, description="segments per forward pass, from every "
                            "track the worker holds (GPU workers; 1: one at a time)")
    lend_cores: bool = Field(True, description="idle CPU workers lend their cores to the busy "
                             "ones on their node (extra torch threads) until they get a task")
    runtime: Literal["auto", "eager", "openvino"] = Field(
        "eager", description="how CPU workers run HTDemucs's network: eager (torch), openvino "
        "(the extra raydemucs[openvino]), auto: openvino where it is installed (docs/precision.md)")
    max_rss_mb: Int = Field(0, ge=0, le=1 << 24, description="recycle a worker whose RSS after a "
                            "task is above this, or above memory_mb when that is lower "
                            "(0: memory_mb's ceiling only)")
    release_memory: bool = Field(True, description="after a task (at most every 5 s), hand the C "
                                 "heap's free pages back to the system (glibc's malloc_trim)")
    max_rss_growth: Float = Field(0.5, ge=0.0, le=100.0, description="recycle a worker that "
                                  "leaks: its RSS at rest this fraction above its RSS at rest "
                                  "after tasks of similar length, 3 samples in a row (0: never)")
    min_free_memory_mb: Int = Field(256, ge=0, le=1 << 24,
                                    description="pause dispatch below this free memory")
    max_missed_pings: Int = Field(6, ge=1, le=1000,
                                  description="unanswered health polls before a replace")


class TasksConfig(Section):
    """Each task's attempts: timeout, retries and their backoff, splitting long tracks."""

    timeout_s: Float = Field(900.0, ge=0.001, le=WEEK_S,
                             description="per attempt (TASK_TIMEOUT in ms)")
    max_retries: Int = Field(3, ge=0, le=100, description="retries after a retryable failure")
    retry_backoff_s: Float = Field(2.0, ge=0.0, le=3600.0,
                                   description="first retry delay, doubled each time")
    retry_backoff_max_s: Float = Field(60.0, ge=0.0, le=86400.0,
                                       description="longest retry delay")
    abort_grace_s: Float = Field(10.0, ge=0.0, le=3600.0,
                                 description="wait after an abort before killing")
    split_over_s: MaybeFloat = Field(120.0, ge=0.0, le=WEEK_S, description="split longer tracks "
                                     "across idle workers of their pool (null: never)")
    max_pieces: Int = Field(4, ge=2, le=64, description="most workers one track is split across")


class InputConfig(Section):
    """What an input may be."""

    max_file_mb: Float = Field(100.0, ge=0.001, le=1 << 20, description="largest input file")
    max_duration_s: Float = Field(3 * 3600.0, ge=1.0, le=WEEK_S, description="longest input")
    min_duration_s: Float = Field(0.1, ge=0.0, le=3600.0, description="shortest input")
    max_samplerate: Int = Field(192000, ge=8000, le=1 << 20, description="highest sample rate "
                                "an input may declare (Hz)")
    max_channels: Int = Field(8, ge=1, le=64, description="most channels an input may declare "
                              "(the model takes the first two, as demucs does)")


class SeparationConfig(Section):
    """Per-task separation options; names and meaning follow `python -m demucs.separate`."""

    model: Text = Field("htdemucs", description="-n: model name")
    repo: MaybeText = Field(None, description="--repo: local folder of models")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="run on a pool of this device (a pool runs on cuda when its workers "
        "have GPUs); auto: the model's pool, whatever it is")
    shifts: Int = Field(1, ge=0, le=100, description="--shifts")
    overlap: Float = Field(0.25, ge=0.0, le=0.99, description="--overlap")
    segment: MaybeFloat = Field(None, ge=0.1, le=3600.0, description="--segment seconds")
    two_stems: MaybeText = Field(None, description="--two-stems STEM")
    format: Literal["wav", "mp3", "flac"] = Field(
        "wav", description="wav, mp3 (--mp3) or flac (--flac)")
    wav_depth: Literal["int16", "int24", "float32"] = Field(
        "int16", description="--int24 / --float32")
    mp3_bitrate: Int = Field(320, ge=8, le=320, description="--mp3-bitrate")
    mp3_preset: Int = Field(2, ge=2, le=7, description="--mp3-preset")
    clip_mode: Literal["rescale", "clamp", "none"] = Field("rescale", description="--clip-mode")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="--precision: fp32 (demucs's own), bf16 (CPUs with AVX512-BF16 or "
        "AMX, GPUs) or fp16 (GPUs)")
    stream_over_s: MaybeFloat = Field(600.0, ge=0.0, le=WEEK_S, description="inputs longer than "
                                      "this stream (bounded memory)")

    def streams(self, duration_s: float) -> bool:
        """Whether an input of `duration_s` is separated streamed, in bounded memory."""
        return self.stream_over_s is not None and duration_s > self.stream_over_s


class ModelsConfig(Section):
    """The model catalogue: entries beyond the shipped ones, where downloads go, which licences
    the service serves (docs/models.md)."""

    catalogue: MaybeText = Field(None, description="a YAML file of catalogue entries laid over "
                                 "the shipped ones by name (raydemucs/models/catalogue.yaml's "
                                 "format): add a model, or pin a sha256")
    cache_dir: Text = Field("~/.cache/raydemucs/models", description="where each node keeps the "
                            "catalogue models it downloaded (a model's files are checked by "
                            "sha256 before they are used)")
    allow_licences: Texts = Field((), description="licences served, as the catalogue spells "
                                  "them (MIT, GPL-3.0, unknown, ...): a model under another is "
                                  "refused at submit and not listed as servable; empty: every "
                                  "licence")
    download_timeout_s: Float = Field(60.0, ge=0.1, le=3600.0, description="longest wait for the "
                                      "next bytes of a model download")


class ServiceConfig(Section):
    """The service itself: its name, where it keeps its state, logs, polling, shutdown."""

    name: Text = Field("raydemucs", description="actor name prefix; several services may share "
                       "a cluster")
    state_dir: Text = Field("~/.raydemucs", description="journal and service files (on the head "
                            "node)")
    output_dir: Text = Field("separated", description="default output directory")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", description="text, or json for log "
                                                "shippers")
    poll_interval_s: Float = Field(0.5, ge=0.01, le=60.0,
                                   description="progress and health polling")
    shutdown_grace_s: Float = Field(60.0, ge=0.0, le=86400.0,
                                    description="drain time for running tasks")
    dashboard_host: Text = Field("127.0.0.1", description="where a locally started Ray serves "
                                 "its dashboard")


class StorageConfig(Section):
    """Remote inputs and outputs (s3://, gs://, ... through fsspec); credentials stay in each
    node's environment, never in the config."""

    endpoint_url: MaybeText = Field(None, description="S3-compatible endpoint (MinIO, Ceph, R2); "
                                    "null: AWS")
    kept_uri: MaybeText = Field(None, description="where the stems of uploaded tasks (every "
                                "HTTP task) are kept: a URI (s3://bucket/prefix, any fsspec "
                                "store) the workers write them to and the HTTP API reads them "
                                "from; null: the results folder under the state directory on "
                                "the node that ran the task, read there")


class HttpConfig(Section):
    """The HTTP front door (a Ray Serve application beside the scheduler)."""

    enabled: bool = Field(False, description="start it with the service (or `start --http`)")
    host: Text = Field("127.0.0.1", description="address it binds; anything but loopback needs "
                       "API keys")
    port: Int = Field(8000, ge=1, le=65535, description="port it listens on")
    allowed_hosts: Texts = Field(
        ("localhost", "127.0.0.1", "[::1]"), description="the names a request's `Host` header "
        "may give (any port), `host` besides; any other gets 421 (DNS rebinding): list the "
        "names clients use on a public address (in a variable: comma-separated)")
    num_replicas: Int = Field(1, ge=1, le=64, description="ingress replicas (they hold no state)")
    inputs: InputPrefixes = Field((), description="storage a request's `input` may name: URI "
                                  "prefixes such as s3://bucket/folder/, or a whole scheme such "
                                  "as s3://, matched on whole segments (empty: uploads only); "
                                  "http(s) ones are fetched from public addresses only")
    allow_paths: InputRoots = Field((), description="root directories on the cluster's shared "
                                    "file system a request's `input` may name a path under "
                                    "(symlinks resolved; never the service's state or output "
                                    "directories; empty: none)")
    chunk_mb: Float = Field(1.0, ge=0.0625, le=64.0, description="size of the chunks an upload "
                            "is streamed to the service's store in")
    max_json_kb: Float = Field(64.0, ge=1.0, le=4096.0, description="a JSON body's limit (413 "
                               "past it, whatever its Content-Length says)")
    read_timeout_s: Float = Field(30.0, ge=0.1, le=3600.0, description="longest wait for the next "
                                  "bytes of a request's body (408 past it)")
    body_timeout_s: Float = Field(900.0, ge=1.0, le=86400.0, description="longest time a request's "
                                  "body may take to arrive, all of it (408 past it)")
    max_uploads_per_key: Int = Field(4, ge=1, le=1000, description="uploads one API key (or the "
                                     "open door) may send at once, across replicas (429 past it)")
    max_streams_per_key: Int = Field(16, ge=1, le=10000, description="event streams one API key "
                                     "(or the open door) may hold open at once, across replicas "
                                     "(429 past it)")
    max_streams: Int = Field(1000, ge=1, le=10000, description="event streams the service holds "
                             "open at once (503 past it); their waits run on the scheduler apart "
                             "from every other call")


class WebhooksConfig(Section):
    """Calls to a task's `webhook_url` when it ends (Standard Webhooks, signed, retried)."""

    max_attempts: Int = Field(8, ge=1, le=100, description="attempts per event before it is dead")
    timeout_s: Float = Field(10.0, ge=0.1, le=600.0, description="per attempt, the whole call")
    retry_backoff_s: Float = Field(15.0, ge=0.0, le=86400.0, description="first retry delay, four "
                                   "times longer each time, with jitter (8 attempts: about a day)")
    allow_private: bool = Field(False, description="allow loopback, link-local and private "
                                "addresses (tests, a laptop); checked after DNS resolution")
    max_in_flight: Int = Field(64, ge=1, le=10000, description="deliveries sent at once")


class RetentionConfig(Section):
    """How long the service keeps what it holds: uploaded inputs, the stems it keeps, old records."""

    uploads_ttl_s: MaybeFloat = Field(WEEK_S, ge=0.0, le=TEN_YEARS_S, description="an uploaded "
                                      "input, after the last task using it (null: keep)")
    results_ttl_s: MaybeFloat = Field(WEEK_S, ge=0.0, le=TEN_YEARS_S, description="the stems the "
                                      "service keeps, after their task ended (null: keep)")
    records_ttl_s: MaybeFloat = Field(None, ge=0.0, le=TEN_YEARS_S, description="finished tasks' "
                                      "journal rows (null: keep)")
    sweep_interval_s: Float = Field(600.0, ge=0.05, le=86400.0,
                                    description="longest wait between sweeps")


def _presets(value: Any) -> Any:
    """Each preset's spec well formed (its models are judged against the pools when used)."""
    from ..ensembles.spec import MAX_PARTS, check_spec

    for name, spec in (value or {}).items() if isinstance(value, Mapping) else ():
        try:
            check_spec(spec, MAX_PARTS)
        except InvalidInput as exc:
            raise PydanticCustomError("refused", f"ensembles.presets.{name}: {exc}") from None
    return value


class EnsemblesConfig(Section):
    """Several models as one task: named specs a task may ask for (docs/ensembles.md)."""

    presets: Annotated[dict[Text, dict], AfterValidator(_presets)] = Field(
        default_factory=shipped_presets, description="name -> {parts, stems}: the presets a task "
        "may name (`--preset`, the HTTP field `preset`, the page's select); shipped: blend, "
        "vocals-then-rest, roformer-vocals (configs/default.yaml)")
    max_parts: Int = Field(4, ge=1, le=16, description="most parts (model runs) in one ensemble")
    parts_dir: MaybeText = Field(None, description="where ensemble parts' stems are cached, by "
                                 "content hash; every worker must reach it (one node or a shared "
                                 "filesystem); null: STATE_DIR/ensembles")


class Config(BaseModel):
    """The whole configuration: one model per section, and the worker pools."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    separation: SeparationConfig = Field(default_factory=SeparationConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    ensembles: EnsemblesConfig = Field(default_factory=EnsemblesConfig)
    pools: Pools = Field((), description="sets of workers, each serving some models on its own "
                         "resources; none: one pool of workers.max_workers takes every model")

    def to_dict(self) -> dict:
        """Plain values (lists, not tuples): YAML, JSON and Ray carry it as it is."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        return validated(cls, data, "dict")

    @property
    def state_path(self) -> Path:
        return Path(self.service.state_dir).expanduser()

    @property
    def parts_root(self) -> str:
        """Where ensemble parts' stems are cached (`ensembles.parts_dir`)."""
        return str(Path(self.ensembles.parts_dir or self.state_path / "ensembles").expanduser())

    def worker_pools(self) -> tuple[PoolConfig, ...]:
        """The pools to run, sizes left out taken from `workers` (see `pools.worker_pools`)."""
        return worker_pools(self.pools, self.workers)


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in Config.model_fields.items() if name != "pools"}

LEGACY_ENV = {
    "MAX_WORKERS": ("workers", "max_workers", 1.0),
    "TASK_TIMEOUT": ("tasks", "timeout_s", 0.001),
    "LOG_LEVEL": ("service", "log_level", None),
}


def validated(model: type[T], data: Any, source: str, path: tuple = ()) -> T:
    """`data` as a `model`, or one ConfigError line that names `source` and the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        root = {path[0]: data} if path else data
        raise refusal(Config, root, exc.errors()[0], source, path) from None


def coerce(section: str, key: str, value: Any, source: str) -> Any:
    """Convert `value` to the declared type of `section.key` and check its range."""
    return getattr(validated(SECTIONS[section], {key: value}, source, (section,)), key)


def apply_overrides(config: Config, data: Any, source: str) -> Config:
    """`config` with `{section: {key: value}}` laid over it (a `pools` list replaces the pools)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    merged = config.to_dict()
    for section, values in data.items():
        if section == "pools" and values is None:
            merged["pools"] = []
        elif isinstance(values, Mapping) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        elif values is not None:
            merged[section] = values
    return validated(Config, merged, source)


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


class _EnvLayout(BaseSettings):
    """How `RAYDEMUCS_<SECTION>_<KEY>` reads: the first word after the prefix names the section,
    the rest is its key (which may hold '_')."""

    model_config = SettingsConfigDict(env_prefix="RAYDEMUCS_", env_nested_delimiter="_",
                                      env_nested_max_split=1)


_EnvSections = create_model(
    "_EnvSections", __base__=_EnvLayout, **{name: (dict[str, str], {}) for name in SECTIONS})


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping rather than os.environ (its
    own providers override `_load_env_vars` the same way)."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        super().__init__(_EnvSections)

    def _load_env_vars(self) -> Mapping[str, str]:
        return {name.lower(): value for name, value in self.environ.items()}


def env_overrides(environ: Mapping[str, str]) -> dict:
    """Overrides from `MAX_WORKERS`, `TASK_TIMEOUT` (ms), `LOG_LEVEL` and `RAYDEMUCS_<SECTION>_<KEY>`."""
    ours = {var: value for var, value in environ.items() if var.startswith("RAYDEMUCS_")}
    for var in ours:
        if not any(var[len("RAYDEMUCS_"):].lower().startswith(f"{s}_") for s in SECTIONS):
            raise ConfigError(f"environment: {var} names no config section; allowed: "
                              + ", ".join(f"RAYDEMUCS_{s.upper()}_*" for s in SECTIONS))
    out: dict[str, dict] = {section: {} for section in SECTIONS}
    for var, (section, key, scale) in LEGACY_ENV.items():
        if environ.get(var):
            out[section][key] = _legacy_value(var, environ[var], scale)
    for section, values in _EnvSource(ours)().items():
        out[section].update(values)
    return {section: values for section, values in out.items() if values}


def _legacy_value(var: str, value: str, scale: float | None) -> Any:
    """A Node.js service variable in our units: a number scaled (ms to s), or a lowercase word."""
    if scale is None:
        return value.lower()
    try:
        return float(value) * scale
    except ValueError:
        raise ConfigError(f"environment: {var}={value!r} is not a number") from None


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
