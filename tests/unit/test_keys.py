"""API keys without a service: names and caps checked, no public address without a key."""
from __future__ import annotations

import pytest

from raydemucs.core.errors import ConfigError

from support import run_cli, service_config


def test_no_start_on_a_public_address_without_keys(tmp_path):
    from raydemucs.http.deploy import start_http

    config = service_config(tmp_path, http={"host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="not loopback: add an API key first"):
        start_http(config)


def test_key_names_and_caps_are_checked(tmp_path):
    for args, words in [(["../x"], "key name"), (["ok", "--max-queued", "0"], "1 or more")]:
        refused = run_cli("keys", "add", *args, env={"RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path)})
        assert refused.returncode == 2 and words in refused.stderr
    assert run_cli("keys", "add", "twice", env={"RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path)}
                   ).returncode == 0
    again = run_cli("keys", "add", "twice", env={"RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path)})
    assert again.returncode == 2 and "exists" in again.stderr
    assert oct((tmp_path / "api-keys.json").stat().st_mode & 0o777) == "0o600"

