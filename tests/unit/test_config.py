"""Configuration: defaults, profiles, environment (with the Node.js names and units), flags."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from raydemucs.core.config import (
    SECTIONS,
    Config,
    coerce,
    load_config,
    profile_path,
    read_yaml,
)
from raydemucs.core.errors import ConfigError, InvalidInput


def test_defaults_match_the_node_service():
    config = load_config(environ={})
    assert config.workers.max_workers == 2
    assert config.tasks.timeout_s == 900.0
    assert config.service.log_level == "info"
    assert config.input.max_file_mb == 100.0


def test_default_yaml_lists_every_key_with_the_code_default():
    data = read_yaml(profile_path("default"))
    assert data == Config().to_dict()


@pytest.mark.parametrize("profile", ["dev", "prod", "test"])
def test_profiles_only_override_known_keys(profile):
    data = read_yaml(profile_path(profile))
    for section, values in data.items():
        assert set(values) <= set(SECTIONS[section].model_fields)
    load_config(profile, environ={})


def test_the_profiles_and_the_model_catalogue_ship_in_the_wheel(tmp_path):
    root = Path(__file__).resolve().parents[2]
    assert sorted(p.name for p in (root / "configs").glob("*.yaml")) == [
        "default.yaml", "dev.yaml", "prod.yaml", "test.yaml"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("raydemucs-*.whl"))
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".yaml")}
    assert shipped == {f"raydemucs/configs/{name}.yaml" for name in ("default", "dev", "prod", "test")
                       } | {"raydemucs/models/catalogue.yaml"}


def test_dev_profile_is_one_worker_with_debug_logs():
    config = load_config("dev", environ={})
    assert config.workers.max_workers == 1 and config.service.log_level == "debug"


def test_environment_uses_the_node_names_and_units():
    config = load_config(environ={"MAX_WORKERS": "4", "TASK_TIMEOUT": "1500", "LOG_LEVEL": "DEBUG"})
    assert config.workers.max_workers == 4
    assert config.tasks.timeout_s == 1.5
    assert config.service.log_level == "debug"


def test_raydemucs_variables_reach_any_key():
    config = load_config(environ={"RAYDEMUCS_SEPARATION_SHIFTS": "3",
                                  "RAYDEMUCS_WORKERS_NUM_GPUS": "0.5",
                                  "RAYDEMUCS_SEPARATION_SEGMENT": "none"})
    assert config.separation.shifts == 3
    assert config.workers.num_gpus == 0.5
    assert config.separation.segment is None


def test_precedence_defaults_profile_file_environment_flags(tmp_path):
    override = tmp_path / "mine.yaml"
    override.write_text("workers:\n  max_workers: 5\ntasks:\n  max_retries: 7\n")
    config = load_config(config_file=override, environ={"MAX_WORKERS": "6"},
                         overrides={"tasks": {"max_retries": 8}})
    assert config.workers.max_workers == 6 and config.tasks.max_retries == 8
    assert load_config("test", environ={}).separation.model == "demucs_unittest"


@pytest.mark.parametrize("environ, words", [
    ({"MAX_WORKERS": "0"}, ["workers.max_workers", "0", "[1, 1024]"]),
    ({"MAX_WORKERS": "two"}, ["MAX_WORKERS", "two"]),
    ({"TASK_TIMEOUT": "-5"}, ["tasks.timeout_s", "-0.005"]),
    ({"LOG_LEVEL": "loud"}, ["service.log_level", "loud", "debug, info, warning, error"]),
    ({"RAYDEMUCS_SEPARATION_FORMAT": "ogg"}, ["separation.format", "ogg", "wav, mp3, flac"]),
    ({"RAYDEMUCS_WORKERS_NUM_CPUS": "nan"}, ["workers.num_cpus", "nan"]),
    ({"RAYDEMUCS_TASKS_COLOUR": "red"}, ["tasks.colour", "allowed"]),
    ({"RAYDEMUCS_NOPE": "1"}, ["RAYDEMUCS_NOPE"]),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(environ, words):
    with pytest.raises(ConfigError) as error:
        load_config(environ=environ)
    for word in words:
        assert word in str(error.value)


def test_bad_yaml_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("workers: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file=broken, environ={})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("gpu:\n  count: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'gpu'"):
        load_config(config_file=unknown, environ={})
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("workers: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError):
        load_config(config_file=unsafe, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(config_file=tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="unknown profile 'staging'"):
        load_config("staging", environ={})


def test_int_keys_refuse_fractions_and_booleans():
    with pytest.raises(ConfigError):
        load_config(overrides={"workers": {"max_workers": 1.5}}, environ={})
    with pytest.raises(ConfigError):
        load_config(overrides={"workers": {"max_workers": True}}, environ={})


def test_none_means_null_only_where_null_is_allowed():
    assert coerce("separation", "segment", "none", "option") is None
    assert coerce("separation", "clip_mode", "none", "option") == "none"  # a choice, not null
    with pytest.raises(ConfigError, match="^option: service.name may not be empty$"):
        coerce("service", "name", "", "option")


def test_configs_are_frozen():
    config = load_config(environ={})
    with pytest.raises(ValidationError):
        config.workers.max_workers = 3  # type: ignore[misc]


def test_config_round_trips_through_a_dict():
    config = load_config("prod", environ={})
    assert Config.from_dict(config.to_dict()) == config


GPU_POOL = {"name": "gpu", "models": ["htdemucs"], "num_gpus": 0.5, "resources": {"gpu_node": 1},
            "min_workers": 0, "max_workers": 4, "idle_timeout_s": 60}


def test_no_pools_is_one_fixed_pool_of_max_workers_serving_every_model():
    (pool,) = load_config(environ={"MAX_WORKERS": "3"}).worker_pools()
    assert (pool.name, pool.models, pool.min_workers, pool.max_workers) == ("default", (), 3, 3)
    assert (pool.num_cpus, pool.num_gpus, pool.memory_mb) == (1.0, 0.0, 2048)


def test_pools_from_yaml_take_left_out_sizes_from_workers_and_route_by_model(tmp_path):
    from raydemucs.core.pools import route

    path = tmp_path / "pools.yaml"
    path.write_text("workers:\n  num_cpus: 2\npools:\n"
                    "  - {name: gpu, models: [htdemucs], num_gpus: 0.5, resources: {gpu_node: 1},"
                    " max_workers: 4, idle_timeout_s: 60}\n"
                    "  - {name: cpu, min_workers: 1}\n")
    config = load_config(config_file=path, environ={"MAX_WORKERS": "3"})
    gpu, cpu = config.worker_pools()
    assert (gpu.num_cpus, gpu.num_gpus, gpu.resources, gpu.max_workers) == (2.0, 0.5, {"gpu_node": 1.0}, 4)
    assert (cpu.num_gpus, cpu.min_workers, cpu.max_workers, cpu.idle_timeout_s) == (0.0, 1, 3, 300.0)
    assert route((gpu, cpu), "htdemucs") is gpu
    assert route((gpu, cpu), "mdx_extra") is cpu
    with pytest.raises(InvalidInput, match="no worker pool serves model 'mdx_extra'.*gpu: htdemucs"):
        route((gpu,), "mdx_extra")
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("pools, words", [
    ({"name": "gpu"}, ["pools must be a list", "dict"]),
    ([["gpu"]], ["pools[0] must be a mapping"]),
    ([{"models": ["htdemucs"]}], ["pools[0] has no name"]),
    ([{"name": "GPU pool"}], ["pools[0].name='GPU pool'", "lowercase"]),
    ([{"name": "gpu", "num_gpu": 1}], ["unknown key 'pools[gpu].num_gpu'", "num_gpus"]),
    ([{"name": "gpu", "num_gpus": -1}], ["pools[gpu].num_gpus=-1", "[0.0, 16.0]"]),
    ([{"name": "gpu", "max_workers": 0}], ["pools[gpu].max_workers=0", "[1, 1024]"]),
    ([{"name": "gpu", "min_workers": 1.5}], ["pools[gpu].min_workers=1.5", "int"]),
    ([{"name": "gpu", "idle_timeout_s": "soon"}], ["pools[gpu].idle_timeout_s='soon'"]),
    ([{"name": "gpu", "min_workers": 3, "max_workers": 2}],
     ["pools[gpu].min_workers=3", "max_workers=2", "0 to max_workers"]),
    ([{"name": "gpu", "min_workers": 3}], ["pools[gpu].min_workers=3", "max_workers=2"]),
    ([{"name": "gpu", "models": "htdemucs"}], ["pools[gpu].models='htdemucs'", "a list of model names"]),
    ([{"name": "gpu", "models": ["htdemucs", ""]}], ["pools[gpu].models", "a list of model names"]),
    ([{"name": "gpu", "models": ["htdemucs", "htdemucs"]}], ["pools[gpu].models", "twice"]),
    ([{"name": "gpu", "resources": ["gpu_node"]}], ["pools[gpu].resources must be a mapping", "list"]),
    ([{"name": "gpu", "resources": {"gpu_node": -1}}], ["pools[gpu].resources.gpu_node=-1", ">= 0"]),
    ([{"name": "gpu", "resources": {"gpu_node": True}}], ["pools[gpu].resources.gpu_node=True"]),
    ([{"name": "gpu", "resources": {"GPU": 1}}], ["pools[gpu].resources.GPU", "pools[gpu].num_gpus"]),
    ([{"name": "gpu"}, {"name": "gpu", "models": ["x"]}], ["two pools are named 'gpu'"]),
    ([GPU_POOL, {"name": "big", "models": ["htdemucs_ft", "htdemucs"]}],
     ["model 'htdemucs' is listed by pools 'gpu' and 'big'"]),
    ([{"name": "a"}, {"name": "b"}], ["pools 'a' and 'b' both list no models", "at most one"]),
])
def test_bad_pools_name_the_key_the_value_and_what_is_allowed(pools, words):
    with pytest.raises(ConfigError) as error:
        load_config(overrides={"pools": pools}, environ={})
    for word in words:
        assert word in str(error.value)
