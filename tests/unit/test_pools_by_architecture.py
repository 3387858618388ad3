"""Pools by architecture: a pool may take every model of some architectures (RoFormers on their
own GPU workers), with the rules of models: no architecture in two pools, a model named by a
pool goes there first, the catch-all takes the rest."""
from __future__ import annotations

import pytest

from raydemucs.core.config import load_config
from raydemucs.core.errors import ConfigError, InvalidInput
from raydemucs.core.pools import route

ROFORMER_POOL = {"name": "roformer", "architectures": ["bs_roformer", "mel_band_roformer"],
                 "num_gpus": 1.0, "min_workers": 0}


def test_models_of_an_architecture_go_to_its_pool_unless_a_pool_names_them():
    pools = load_config(overrides={"pools": [
        ROFORMER_POOL, {"name": "kim", "models": ["kim"], "num_gpus": 0.5}, {"name": "cpu"}]},
        environ={}).worker_pools()
    roformer, kim, cpu = pools
    assert route(pools, "viper", architecture="bs_roformer") is roformer
    assert route(pools, "mel_band_roformer_kj", "cuda", architecture="mel_band_roformer") is roformer
    assert route(pools, "kim", architecture="mel_band_roformer") is kim  # named: its pool
    assert route(pools, "htdemucs", architecture="htdemucs") is cpu
    assert route(pools, "unknown") is cpu
    with pytest.raises(InvalidInput, match="no worker pool serves model 'htdemucs' .*roformer: "
                       "bs_roformer, mel_band_roformer"):
        route(pools[:2], "htdemucs", architecture="htdemucs")
    with pytest.raises(InvalidInput, match="runs on pool 'roformer', whose workers use cuda"):
        route(pools, "viper", "cpu", architecture="bs_roformer")


@pytest.mark.parametrize("pools, words", [
    ([{"name": "r", "architectures": ["scnet"]}],
     ["pools[r].architectures", "names architecture 'scnet'", "known: htdemucs"]),
    ([{"name": "r", "architectures": "bs_roformer"}], ["pools[r].architectures", "a list"]),
    ([ROFORMER_POOL, {"name": "b", "architectures": ["bs_roformer"]}],
     ["architecture 'bs_roformer' is listed by pools 'roformer' and 'b'"]),
    ([ROFORMER_POOL, {"name": "a"}, {"name": "b"}], ["pools 'a' and 'b' both list no models"]),
])
def test_bad_architecture_pools_name_the_key_and_what_is_allowed(pools, words):
    with pytest.raises(ConfigError) as error:
        load_config(overrides={"pools": pools}, environ={})
    for word in words:
        assert word in str(error.value)
