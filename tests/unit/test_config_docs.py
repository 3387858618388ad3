"""What the config tells about itself: docs/configuration.md, the JSON schema, `config show`."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from raydemucs.core.config import SECTIONS, Config, load_config, profile_path, read_yaml
from raydemucs.core.config_reference import reference_markdown
from raydemucs.core.pools import PoolConfig

from support import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_are_the_generated_reference():
    """Regenerate with `python -m raydemucs config reference > docs/configuration.md`."""
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == reference_markdown()


def test_the_reference_lists_every_key_with_its_description():
    text = reference_markdown()
    for name, model in [*SECTIONS.items(), ("pools", PoolConfig)]:
        assert f"## `{name}`" in text
        for key, field in model.model_fields.items():
            assert field.description and f"| `{key}` |" in text and field.description in text


@pytest.mark.parametrize("profile", ["default", "dev", "prod", "test"])
def test_the_schema_accepts_every_shipped_profile(profile):
    jsonschema.validate(read_yaml(profile_path(profile)), Config.model_json_schema())


def test_the_schema_refuses_what_the_config_refuses():
    schema = Config.model_json_schema()
    for bad in ({"workers": {"max_workers": 0}}, {"separation": {"format": "ogg"}},
                {"gpu": {}}, {"pools": [{"models": ["htdemucs"]}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_config_show_prints_every_layer_as_yaml_or_json(tmp_path):
    env = {"MAX_WORKERS": "3", "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path)}
    shown = run_cli("config", "show", "--profile", "dev", env=env)
    assert shown.returncode == 0, shown.stderr
    expected = load_config("dev", environ=env)
    assert Config.from_dict(yaml.safe_load(shown.stdout)) == expected
    assert expected.workers.max_workers == 3 and expected.service.log_level == "debug"
    as_json = run_cli("config", "show", "--json", env=env)
    assert json.loads(as_json.stdout) == load_config(environ=env).to_dict()


def test_config_show_refuses_a_bad_value_in_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: {max_retries: -1}\n")
    refused = run_cli("config", "show", "--config", bad)
    assert refused.returncode == 2
    assert refused.stderr == f"error: {bad}: tasks.max_retries=-1 is out of range [0, 100]\n"


def test_config_schema_and_reference_print_what_the_models_give():
    schema = run_cli("config", "schema")
    assert json.loads(schema.stdout) == Config.model_json_schema()
    assert run_cli("config", "reference").stdout == reference_markdown()
