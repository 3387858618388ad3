"""Worker pools: the models (by name or by architecture) each serves and what each worker asks
of Ray; the rules of the list (unique names, no model or architecture in two pools, one catch-all
at most); sizes left out, taken from the `workers` section; and the route from a model to its
pool."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from ..models.entries import ARCHITECTURES
from ..models.runtimes import check_pool
from .config_types import Float, Int, MaybeFloat, MaybeInt, Section
from .errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    from .config import WorkersConfig

DEFAULT_POOL = "default"
POOL_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
RAY_BUILTIN_RESOURCES = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory_mb"}
FROM_WORKERS = ("num_cpus", "num_gpus", "memory_mb", "max_workers", "batch_size", "prefetch")


def _model_names(models: Any) -> tuple[str, ...]:
    if models is None:
        return ()
    if not isinstance(models, (list, tuple)) or not all(
            isinstance(model, str) and model.strip() for model in models):
        raise PydanticCustomError("allowed", "; allowed: a list of model names")
    if len(set(models)) != len(models):
        raise PydanticCustomError("allowed", " lists a model twice")
    return tuple(models)


def _architectures(names: Any) -> tuple[str, ...]:
    names = _model_names(names)
    unknown = next((name for name in names if name not in ARCHITECTURES), None)
    if unknown:
        raise PydanticCustomError("allowed", f" names architecture {unknown!r}; known: "
                                  f"{', '.join(ARCHITECTURES)}")
    return names


def _custom_resource(name: str) -> str:
    if name in RAY_BUILTIN_RESOURCES:
        raise PydanticCustomError("ray_resource", "one of Ray's own resources",
                                  {"use": RAY_BUILTIN_RESOURCES[name]})
    return name


ResourceName = Annotated[str, StringConstraints(min_length=1), AfterValidator(_custom_resource)]
Amount = Annotated[float, Field(strict=True, ge=0)]


class PoolConfig(Section):
    """One pool of workers: the models routed to it, what each worker asks of Ray, its size.

    `num_cpus`, `num_gpus`, `memory_mb`, `max_workers`, `batch_size` and `prefetch` left out
    (null) are the `workers` section's; `Config.worker_pools()` fills them in.
    """

    name: str = Field(pattern=POOL_NAME, description="up to 32 lowercase letters, digits, '-' "
                      "and '_', starting with a letter or digit (its workers are "
                      "SERVICE:NAME-worker-i)")
    models: Annotated[tuple[str, ...], BeforeValidator(_model_names)] = Field(
        (), description="models routed here by name")
    architectures: Annotated[tuple[str, ...], BeforeValidator(_architectures)] = Field(
        (), description="models of these architectures routed here (htdemucs, hdemucs, demucs, "
        "demucs_bag, bs_roformer, mel_band_roformer) unless another pool names them; with "
        "`models` empty too: every model no other pool takes")
    num_cpus: MaybeFloat = Field(None, ge=0.0, le=256.0, description="as workers.num_cpus")
    num_gpus: MaybeFloat = Field(None, ge=0.0, le=16.0, description="as workers.num_gpus")
    memory_mb: MaybeInt = Field(None, ge=0, le=1 << 20, description="as workers.memory_mb")
    resources: dict[ResourceName, Amount] = Field(
        default_factory=dict, description="custom Ray resources a node must offer "
        "(Ray's own: num_cpus, num_gpus, memory_mb)")
    min_workers: Int = Field(0, ge=0, le=1024, description="workers kept even when idle")
    max_workers: MaybeInt = Field(None, ge=1, le=1024, description="as workers.max_workers")
    batch_size: MaybeInt = Field(None, ge=1, le=256, description="as workers.batch_size")
    prefetch: MaybeInt = Field(None, ge=0, le=64, description="as workers.prefetch")
    idle_timeout_s: Float = Field(300.0, ge=0.0, le=7 * 86400.0,
                                  description="remove a worker idle this long, down to min_workers")

    @property
    def device(self) -> str:
        """Where its workers run the model: `cuda` when they have GPUs, else `cpu`."""
        return "cuda" if self.num_gpus else "cpu"

    @property
    def threads(self) -> int:
        return worker_threads(self.num_cpus)

    @property
    def tasks_per_worker(self) -> int:
        """How many tasks one worker holds at once: the running one and `prefetch` more."""
        return 1 + self.prefetch


def worker_threads(num_cpus: float) -> int:
    """The torch threads of a worker given `num_cpus` Ray CPUs (at least one)."""
    return max(1, round(num_cpus))


def _one_owner_per_model(pools: tuple[PoolConfig, ...]) -> tuple[PoolConfig, ...]:
    """Unique names, no model or architecture in two pools, at most one pool that lists
    neither."""
    names = [pool.name for pool in pools]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise PydanticCustomError("refused", f"two pools are named {twice!r}; names must be unique")
    owners: dict[tuple[str, str] | None, str] = {}  # (kind, name) -> pool; None -> catch-all
    for pool in pools:
        keys = ([("model", model) for model in pool.models]
                + [("architecture", arch) for arch in pool.architectures]) or [None]
        for key in keys:
            if key in owners:
                raise PydanticCustomError("refused", (
                    f"{key[0]} {key[1]!r} is listed by pools {owners[key]!r} and {pool.name!r}"
                    if key else f"pools {owners[key]!r} and {pool.name!r} both list no "
                    "models; at most one pool may take every other model"))
            owners[key] = pool.name
    return pools


Pools = Annotated[tuple[PoolConfig, ...], AfterValidator(_one_owner_per_model)]


def worker_pools(declared: tuple[PoolConfig, ...], workers: WorkersConfig) -> tuple[PoolConfig, ...]:
    """The pools to run, sizes left out taken from `workers`; with none declared, one pool
    named `default` of exactly `workers.max_workers` workers (serving every model)."""
    declared = declared or (PoolConfig(name=DEFAULT_POOL, min_workers=workers.max_workers),)
    pools = tuple(pool.model_copy(update={key: getattr(workers, key) for key in FROM_WORKERS
                                          if getattr(pool, key) is None}) for pool in declared)
    for pool in pools:
        if pool.min_workers > pool.max_workers:
            raise ConfigError(f"pools[{pool.name}].min_workers={pool.min_workers} is above its "
                              f"max_workers={pool.max_workers}; allowed: 0 to max_workers")
    return pools


def route(pools: tuple[PoolConfig, ...], model: str, device: str = "auto",
          precision: str = "fp32", architecture: str | None = None) -> PoolConfig:
    """The pool that serves `model`: the one listing it, else the one listing its
    `architecture`, else the one listing neither models nor architectures; InvalidInput when
    there is none, or when that pool does not run on `device` or cannot run `precision` (fp16 on
    a CPU pool)."""
    pool = (next((pool for pool in pools if model in pool.models), None)
            or next((pool for pool in pools if architecture in pool.architectures), None)
            or next((pool for pool in pools if not (pool.models or pool.architectures)), None))
    if pool is None:
        served = "; ".join(f"{pool.name}: {', '.join(pool.models + pool.architectures)}"
                           for pool in pools)
        raise InvalidInput(f"no worker pool serves model {model!r} (pools and their models: {served})")
    if device not in ("auto", pool.device):
        raise InvalidInput(f"model {model!r} runs on pool {pool.name!r}, whose workers use "
                           f"{pool.device}, not {device} (a pool uses cuda when its num_gpus is "
                           "above 0: set workers.num_gpus or a GPU pool)")
    check_pool(precision, pool.device)
    return pool
