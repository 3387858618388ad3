"""`raydemucs models` says what each model is, and `submit` refuses a model the catalogue can
judge (a licence not allowed, a YAML with another Python tag) with exit 2 and one line, before
anything is queued."""
from __future__ import annotations

import json

from test_catalogue import BS_YAML, MEL_YAML, community

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
    text = run_cli("models").stdout.splitlines()
    assert any(line.startswith("mel_band_roformer_kj  mel_band_roformer, vocals, 44100 Hz, "
                               "licence unknown: no licence granted, 913.1 MB, sha256 87201f4d31af, "
                               "SDR 10.98 dB vocals on MVSEP multisong, https://") for line in text)


def test_submit_refuses_what_the_catalogue_can_judge_with_exit_2(tmp_path, audio):
    song = audio("song.wav", seconds=0.5)
    community(tmp_path / "models", "kim", MEL_YAML)
    community(tmp_path / "models", "evil", BS_YAML.replace("!!python/tuple",
                                                            "!!python/object/apply:os.system"))
    env = {"RAY_ADDRESS": "127.0.0.1:1", "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state"),
           "RAYDEMUCS_MODELS_ALLOW_LICENCES": "MIT,GPL-3.0"}
    for name, line in [("kim", "error: model 'kim' is under licence 'unknown', which this service "
                        "does not serve (models.allow_licences: MIT, GPL-3.0)"),
                       ("evil", "error: evil.yaml: tag !!python/object/apply:os.system is not "
                        "allowed (of Python's tags, only !!python/tuple)")]:
        result = run_cli("submit", song, "-n", name, "--repo", tmp_path / "models", env=env)
        assert (result.returncode, result.stderr.strip()) == (2, line)
    assert not (tmp_path / "state").exists()  # nothing queued, no service started
