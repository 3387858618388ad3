"""API keys without a service: names, caps, roles and ceilings checked, ids as owners, no public
address without a key; the state directory's modes and synced renames."""
from __future__ import annotations

import json
import os

import pytest

from raydemucs.core.errors import ConfigError, InvalidInput
from raydemucs.core.keys import Ceilings, KeyStore
from raydemucs.storage.uploads import UploadStore
from raydemucs.webhooks.signing import load_secret

from support import run_cli, service_config, store_upload, write_audio


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



def test_a_key_has_an_id_a_role_and_ceilings_and_old_entries_keep_their_name_as_owner(tmp_path):
    env = {"RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path)}
    added = run_cli("keys", "add", "ops", "--role", "operator", "--max-priority", "high",
                    "--max-shifts", "2", "--max-overlap", "0.5", "--input", "s3://songs/ops/",
                    "--input", "gs://more/", env=env)
    assert added.returncode == 0, added.stderr
    (entry,) = KeyStore(tmp_path).table().entries
    assert entry.owner == entry.id and entry.id.startswith("key_") and entry.role == "operator"
    assert entry.ceilings == Ceilings("high", 2, 0.5)
    assert entry.inputs == ["s3://songs/ops/", "gs://more/"]
    listed = run_cli("keys", "list", "--json", env=env).stdout
    (shown,) = [json.loads(line) for line in listed.splitlines()]
    assert "sha256" not in shown and entry.sha256 not in listed
    assert shown == {"name": "ops", "created_at": entry.created_at, "max_queued": None,
                     "id": entry.id, "role": "operator", "max_priority": "high", "max_shifts": 2,
                     "max_overlap": 0.5, "inputs": ["s3://songs/ops/", "gs://more/"]}
    written = json.loads((tmp_path / "api-keys.json").read_text())
    old = {key: written["keys"][0][key] for key in ("name", "sha256", "created_at")}
    (tmp_path / "api-keys.json").write_text(json.dumps({"keys": [old]}))  # before ids
    (before_ids,) = KeyStore(tmp_path).table().entries
    assert before_ids.owner == "ops" and before_ids.role == "tenant"
    assert before_ids.ceilings == Ceilings("normal")


def test_key_options_out_of_range_are_refused(tmp_path):
    for options, words in [({"role": "admin"}, "--role"), ({"max_shifts": 101}, "--max-shifts"),
                           ({"max_overlap": 1.5}, "--max-overlap"), ({"inputs": [""]}, "--input"),
                           ({"max_priority": "0"}, "--max-priority")]:
        with pytest.raises(InvalidInput, match=words):
            KeyStore(tmp_path).add("k", **options)
    refused = run_cli("keys", "add", "k", "--max-priority", "urgent",
                      env={"RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path)})
    assert refused.returncode == 2 and "--max-priority" in refused.stderr, refused.stderr
    assert not (tmp_path / "api-keys.json").exists()


def test_the_state_directory_and_its_files_are_private_and_their_names_synced(tmp_path,
                                                                               monkeypatch):
    """Under umask 0o022: a fresh state directory is 0700 and the keys and secret files 0600;
    each file's directory is synced after the file is renamed or linked into place."""
    synced = []
    fsync = os.fsync

    def recording(descriptor):
        synced.append(os.fstat(descriptor).st_ino)
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    umask = os.umask(0o022)
    try:
        state = tmp_path / "fresh" / "state"
        KeyStore(state).add("one")
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        assert synced[-1] == state.stat().st_ino
        synced.clear()
        load_secret(state)
        assert synced[-1] == state.stat().st_ino
        assert oct((state / "webhook-secret").stat().st_mode & 0o777) == "0o600"
        assert oct((state / "api-keys.json").stat().st_mode & 0o777) == "0o600"
        source = write_audio(tmp_path / "a.wav", seconds=0.5)
        uploads = UploadStore(state)
        synced.clear()
        kept = store_upload(uploads, source)
        assert synced[-1] == uploads.inputs.stat().st_ino
        assert (uploads.inputs / kept["sha256"]).is_file()
    finally:
        os.umask(umask)
