"""doctor's checks that need no Ray: models in a repo or a cache, a closed Ray port."""
from __future__ import annotations

import socket

import yaml

from raydemucs.client.doctor import check_model, run_checks
from raydemucs.core.config import SeparationConfig

from support import by_name, failed


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_model_in_a_repo_passes(tiny_repo):
    assert check_model(SeparationConfig(model="tiny", repo=str(tiny_repo))).ok


def test_a_hub_model_passes_only_when_cached_or_downloadable(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    options = SeparationConfig(model="htdemucs")
    missing = check_model(options)
    assert not missing.ok and "not in the local model caches" in missing.detail
    snapshot = tmp_path / "hf" / "models--adefossez--HTDemucs" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    (snapshot / "htdemucs.yaml").write_text(yaml.safe_dump({"models": ["955717e8"]}))
    (snapshot / "955717e8.safetensors").write_bytes(b"weights")
    cached = check_model(options)
    assert cached.ok and "Hugging Face cache" in cached.detail


def test_no_ray_at_a_closed_port(doctor_config):
    checks = run_checks(doctor_config(), f"127.0.0.1:{closed_port()}")
    assert set(failed(checks)) == {"ray"}
    assert "no Ray cluster reachable" in by_name(checks)["ray"].detail

