"""Configuration: defaults, profiles, environment (with the Node.js names and units), flags."""
from __future__ import annotations

import dataclasses

import pytest

from raydemucs.config import SECTIONS, Config, load_config, profile_path, read_yaml
from raydemucs.errors import ConfigError


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
        assert set(values) <= {f.name for f in dataclasses.fields(SECTIONS[section])}
    load_config(profile, environ={})


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


def test_config_round_trips_through_a_dict():
    config = load_config("prod", environ={})
    assert Config.from_dict(config.to_dict()) == config
