"""The models a service serves over HTTP: its default model, those its pools name and those of
its model directory (`separation.repo`), each described as the catalogue tells (never with a
server path), with the pool that runs it and whether its licence is allowed."""
from __future__ import annotations

from ..core.config import Config
from ..core.errors import InvalidInput, ModelNotFound
from ..core.pools import PoolConfig, route
from .catalogue import describe, model_names


def served_models(config: Config, pools: tuple[PoolConfig, ...]) -> list[dict]:
    """Each served model's public description, `pool`, `device`, `default`, `local` (from the
    model directory) and `servable` (its licence allowed); a model that cannot be described or
    that no pool runs is left out."""
    default, models = config.separation, config.models
    local = set(model_names(default.repo)) if default.repo else set()
    names = dict.fromkeys([default.model, *(m for pool in pools for m in pool.models), *sorted(local)])
    served = []
    for name in names:
        repo = default.repo if name == default.model or name in local else None
        try:
            info = describe(name, repo, models.catalogue)
            pool = route(pools, name, architecture=info.architecture)
        except (InvalidInput, ModelNotFound):
            continue
        allowed = not models.allow_licences or info.licence in models.allow_licences
        served.append({**info.to_dict(public=True), "pool": pool.name, "device": pool.device,
                       "default": name == default.model, "local": repo is not None,
                       "servable": allowed})
    return served
