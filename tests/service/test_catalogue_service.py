"""The catalogue over HTTP, on a real service: GET /v1/models says what each model is without a
server path; a model under a licence the operator does not allow is refused at submit with one
line; a RoFormer task goes to the pool that takes RoFormers (`pools[].architectures`)."""
from __future__ import annotations

import hashlib

import pytest

from support import HttpService, save_tiny_htdemucs, wait_for, write_audio, write_roformer


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    """Model directory: a tiny HTDemucs bag, a Mel-Band RoFormer (licence unknown) and a
    BS-RoFormer under GPL-3.0; licence `unknown` allowed; RoFormers on their own pool."""
    root = tmp_path_factory.mktemp("catalogue")
    repo = save_tiny_htdemucs(root / "models")
    write_roformer(repo, "kim", "mel_band_roformer")
    write_roformer(repo, "viper", "bs_roformer")
    (repo / "viper.licence").write_text("GPL-3.0\n")
    pools = [{"name": "roformer", "architectures": ["bs_roformer", "mel_band_roformer"],
              "min_workers": 1, "max_workers": 1},
             {"name": "main", "min_workers": 0, "max_workers": 1}]
    started = HttpService(root, serve_port, separation={"model": "tiny", "repo": str(repo)},
                          models={"allow_licences": ["unknown"]}, pools=pools,
                          workers={"prefetch": 0})
    started.repo = repo
    yield started
    started.close()


def upload(service, path, **fields):
    return service.client.post("/v1/tasks", files={"file": (path.name, path.read_bytes())},
                               data=fields)


def test_models_say_what_each_model_is_and_never_a_server_path(service):
    answer = service.client.get("/v1/models")
    models = {model["name"]: model for model in answer.json()["models"]}
    assert sorted(models) == ["kim", "tiny", "tinysig", "viper"]
    kim = models["kim"]
    assert {key: kim[key] for key in ("architecture", "stems", "sample_rate", "licence", "source",
                                      "size", "sha256", "score", "pool", "servable")} == {
        "architecture": "mel_band_roformer", "stems": ["vocals", "other"], "sample_rate": 44100,
        "licence": "unknown", "source": "local models",
        "size": (service.repo / "kim.ckpt").stat().st_size, "score": None, "pool": "roformer",
        "sha256": hashlib.sha256((service.repo / "kim.ckpt").read_bytes()).hexdigest(),
        "servable": True}
    assert (models["viper"]["pool"], models["viper"]["licence"]) == ("roformer", "GPL-3.0")
    assert models["viper"]["servable"] is False
    assert (models["tiny"]["pool"], models["tiny"]["architecture"]) == ("main", "htdemucs")
    assert str(service.repo.parent) not in answer.text


def test_a_licence_not_allowed_is_refused_at_submit_with_one_line(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=0.5)
    answer = upload(service, song, model="viper")
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == {"type": "InvalidInput", "message": (
        "model 'viper' is under licence 'GPL-3.0', which this service does not serve "
        "(models.allow_licences)")}
    assert service.stored() == []


def test_a_roformer_task_runs_on_the_roformer_pool(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=0.5)
    answer = upload(service, song, model="kim")
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["task_id"]
    worker = wait_for(lambda: service.manager.get_status(task_id)["worker"], timeout_s=120)
    assert worker == "roformer-worker-0"  # the pool that takes RoFormers, before any load
    record = service.manager.wait(task_id, timeout=120)
    assert sorted(record["outputs"]) == ["other", "vocals"]  # the YAML's instruments
    stem = service.client.get(f"/v1/tasks/{task_id}/stems/vocals")
    assert stem.status_code == 200 and stem.content[:4] == b"RIFF"
