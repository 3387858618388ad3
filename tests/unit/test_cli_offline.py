"""The CLI without a service: help, the model list, exit 3 when no Ray answers."""
from __future__ import annotations

from support import run_cli


def test_no_service_and_no_ray_exit_3(tmp_path, audio):
    env = {"RAY_ADDRESS": "127.0.0.1:1", "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state")}
    result = run_cli("submit", audio("song.wav", seconds=0.5), "-n", "demucs_unittest", env=env,
                     timeout=120)
    assert result.returncode == 3 and "error:" in result.stderr


def test_models_and_help():
    listed = run_cli("models")
    assert listed.returncode == 0 and "htdemucs" in listed.stdout.split()
    assert "demucs_unittest" in listed.stdout.split()
    for command in ("submit", "status", "wait", "cancel", "start", "stop", "models"):
        assert run_cli(command, "--help").returncode == 0

