"""`raydemucs models` says what each model is, and `submit` refuses a model the catalogue can
judge (here a licence not allowed; the other refusals: test_catalogue.py) with exit 2 and one
line, before anything is queued."""
from __future__ import annotations

import json

from test_catalogue import MEL_YAML, community

from raydemucs.client.render import model_line
from raydemucs.models.catalogue import list_models

from support import run_cli


def test_models_lists_what_each_model_in_a_directory_is(tmp_path):
    sha = community(tmp_path / "models", "kim", MEL_YAML)
    listed = run_cli("models", "--repo", tmp_path / "models", "--json")
    assert listed.returncode == 0, listed.stderr
    [kim] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert kim == {"name": "kim", "architecture": "mel_band_roformer", "stems": ["vocals"],
                   "sample_rate": 44100, "licence": "unknown",
                   "source": f"local {tmp_path / 'models'}", "sha256": sha, "score": None,
                   "size": (tmp_path / "models" / "kim.ckpt").stat().st_size, "servable": True}
    text = [model_line(model) for model in list_models()]  # what `raydemucs models` prints
    assert any(line.startswith("mel_band_roformer_kj  mel_band_roformer, vocals, 44100 Hz, "
                               "licence unknown: no licence granted, 913.1 MB, sha256 87201f4d31af, "
                               "SDR 10.98 dB vocals on MVSEP multisong, https://") for line in text)


def test_submit_refuses_what_the_catalogue_can_judge_with_exit_2(tmp_path, audio):
    song = audio("song.wav", seconds=0.5)
    community(tmp_path / "models", "kim", MEL_YAML)
    env = {"RAY_ADDRESS": "127.0.0.1:1", "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state"),
           "RAYDEMUCS_MODELS_ALLOW_LICENCES": "MIT,GPL-3.0"}
    result = run_cli("submit", song, "-n", "kim", "--repo", tmp_path / "models", env=env)
    assert (result.returncode, result.stderr.strip()) == (2, (
        "error: model 'kim' is under licence 'unknown', which this service does not serve "
        "(models.allow_licences: MIT, GPL-3.0)"))
    assert not (tmp_path / "state").exists()  # nothing queued, no service started
