"""`doctor` on a healthy setup, and on each broken one it claims to detect."""
from __future__ import annotations

import time

import pytest
import torch

from raydemucs.client.doctor import run_checks

from support import by_name, failed


def test_a_healthy_setup_with_a_running_service_passes(make_service, ray_cluster):
    manager = make_service(workers={"max_workers": 1})
    checks = run_checks(manager.config, ray_cluster)
    assert failed(checks) == {}
    names = [check.name for check in checks]
    assert names == ["python", "demucs", "torch", "decoder", "flac", "ffmpeg", "memory", "model",
                     "output dir", "state dir", "ray", "resources", "service"]
    assert "worker-0" in by_name(checks)["service"].detail


def test_no_ffmpeg_on_path_is_fine_pyav_decodes(doctor_config, ray_cluster, tmp_path, monkeypatch):
    import av
    import soundfile

    monkeypatch.setenv("PATH", str(tmp_path))
    checks = run_checks(doctor_config(), ray_cluster)
    assert failed(checks) == {}
    assert "ffmpeg is not on PATH; optional" in by_name(checks)["ffmpeg"].detail
    assert f"PyAV {av.__version__} with FFmpeg {av.ffmpeg_version_info}" in \
        by_name(checks)["decoder"].detail
    assert f"libsndfile {soundfile.__libsndfile_version__}" in by_name(checks)["flac"].detail


def test_an_output_dir_under_a_regular_file_is_not_writable(doctor_config, ray_cluster, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    config = doctor_config(service={"output_dir": str(tmp_path / "file" / "out")})
    checks = run_checks(config, ray_cluster)
    assert set(failed(checks)) == {"output dir"}
    assert "is not a directory" in by_name(checks)["output dir"].detail


def test_an_unwritable_state_dir(doctor_config, ray_cluster, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    checks = run_checks(doctor_config(service={"state_dir": str(tmp_path / "file")}), ray_cluster)
    assert set(failed(checks)) == {"state dir"}


@pytest.mark.parametrize("model,repo,message", [
    ("htdemucs_nope", None, "unknown model 'htdemucs_nope'"),
    ("tiny", "empty", "unknown model 'tiny' in repo"),
    ("tiny", "missing", "is not a directory"),
])
def test_an_unknown_model_or_a_bad_repo(doctor_config, ray_cluster, tmp_path, model, repo, message):
    (tmp_path / "empty").mkdir()
    separation = {"model": model, "repo": str(tmp_path / repo) if repo else None}
    checks = run_checks(doctor_config(separation=separation), ray_cluster)
    assert set(failed(checks)) == {"model"}
    assert message in by_name(checks)["model"].detail


def test_too_few_cpus_for_max_workers(doctor_config, ray_cluster):
    checks = run_checks(doctor_config(workers={"max_workers": 8, "num_cpus": 1.0}), ray_cluster)
    assert set(failed(checks)) == {"resources"}
    assert by_name(checks)["resources"].detail.endswith("room for 4")


def test_a_service_whose_workers_cannot_load_the_model(make_service, ray_cluster, tmp_path):
    repo = tmp_path / "broken"
    repo.mkdir()
    torch.save({"not": "a demucs model"}, repo / "broken.th")  # whole, so only loading fails
    manager = make_service(workers={"max_workers": 1},
                           separation={"model": "broken", "repo": str(repo)})
    deadline = time.monotonic() + 120
    while manager.get_status()["workers"][0]["state"] == "starting":
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.2)
    checks = run_checks(manager.config, ray_cluster)
    assert set(failed(checks)) == {"service"}
    assert "worker-0 could not load its model" in by_name(checks)["service"].detail

