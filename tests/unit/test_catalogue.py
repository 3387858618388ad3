"""The model catalogue: what each model is (shipped entries, an operator's file, a model
directory in the community layout next to Demucs's bags), and what is refused at submit with one
line: an unknown model or architecture, a YAML with another Python tag, a sha256 that does not
match the catalogue, a licence the operator does not allow."""
from __future__ import annotations

import hashlib
import re

import pytest
import yaml

from raydemucs.core.config import ModelsConfig
from raydemucs.core.errors import InvalidInput, ModelNotFound
from raydemucs.models.catalogue import check_model_name, describe, list_models, model_names
from raydemucs.models.entries import ARCHITECTURES, shipped

from support import save_tiny_htdemucs

BS_YAML = """\
audio:
  chunk_size: 16384
  sample_rate: 44100
model:
  dim: 8
  depth: 1
  stereo: true
  num_stems: 1
  freqs_per_bands: !!python/tuple
    - 2
    - 3
training:
  instruments: [vocals, other]
  target_instrument: vocals
"""
MEL_YAML = BS_YAML.replace("freqs_per_bands: !!python/tuple\n    - 2\n    - 3", "num_bands: 4")


def community(folder, name: str, text: str, weights: bytes = b"weights") -> str:
    """`NAME.ckpt` (a real PyTorch file) with `NAME.yaml` beside it; the ckpt's sha256."""
    import io

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"w": torch.frombuffer(bytearray(weights), dtype=torch.uint8)}, buffer)
    (folder / f"{name}.ckpt").write_bytes(buffer.getvalue())
    (folder / f"{name}.yaml").write_text(text)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def test_shipped_entries_say_what_each_model_is():
    entries = shipped()
    assert {"htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q",
            "mdx_extra_q", "bs_roformer_viperx_317", "mel_band_roformer_kj"} <= set(entries)
    for info in entries.values():
        assert info.architecture in ARCHITECTURES and info.licence and info.sample_rate == 44100
    htdemucs = describe("htdemucs").to_dict()
    assert htdemucs["licence"] == "MIT" and htdemucs["score"]["sdr"] == 9.0
    assert htdemucs["stems"] == ["drums", "bass", "other", "vocals"]
    for name in ("bs_roformer_viperx_317", "mel_band_roformer_kj"):
        info = entries[name]
        assert info.architecture in ("bs_roformer", "mel_band_roformer") and info.score["sdr"] > 10
        for file in info.files.values():
            assert file.url.startswith("https://") and re.fullmatch("[0-9a-f]{64}", file.sha256)
        assert info.to_dict()["sha256"] == info.files["ckpt"].sha256 and info.size > 10**8
        assert info.licence == "unknown: no licence granted"


def test_a_model_directory_reads_the_community_layout_beside_demucs_bags(tmp_path):
    repo = save_tiny_htdemucs(tmp_path / "models")
    sha = community(repo, "kim", MEL_YAML)
    community(repo, "viper", BS_YAML.replace("training:", "licence: GPL-3.0\ntraining:"))
    community(repo, "noted", BS_YAML)
    (repo / "noted.licence").write_text("MIT\nthe text of the licence\n")
    assert model_names(str(repo)) == ["kim", "noted", "tiny", "tinysig", "viper"]
    kim = describe("kim", str(repo)).to_dict(public=True)
    assert kim == {"name": "kim", "architecture": "mel_band_roformer", "stems": ["vocals"],
                   "sample_rate": 44100, "licence": "unknown", "source": "local models",
                   "size": (repo / "kim.ckpt").stat().st_size, "sha256": sha, "score": None}
    assert describe("kim", str(repo)).to_dict()["source"] == f"local {repo}"
    assert describe("viper", str(repo)).architecture == "bs_roformer"
    assert describe("viper", str(repo)).licence == "GPL-3.0"
    assert describe("noted", str(repo)).licence == "MIT"
    tiny = describe("tiny", str(repo))
    assert tiny.architecture == "demucs" and tiny.sha256 == hashlib.sha256(
        next(repo.glob("tinysig*.th")).read_bytes()).hexdigest()
    listed = {model["name"]: model for model in list_models(str(repo))}
    assert listed["kim"]["servable"] and listed["tiny"]["source"] == f"local {repo}"


@pytest.mark.parametrize("text, refusal", [
    (BS_YAML.replace("!!python/tuple", "!!python/object/apply:os.system"),
     "kim.yaml: tag !!python/object/apply:os.system is not allowed (of Python's tags, only "
     "!!python/tuple)"),
    (BS_YAML.replace("freqs_per_bands", "band_sizes"), "kim.yaml does not say its architecture"),
    (BS_YAML.replace("training:", "training:\n  model_type: scnet"),
     "kim.yaml: architecture 'scnet' is not one raydemucs runs"),
    (BS_YAML.replace("depth: 1", "depth: 1\n  use_pope: true"),
     "kim.yaml: model option use_pope: True is not supported"),
    ("audio: {}\n", "kim.yaml has no `model:` section"),
])
def test_a_bad_checkpoint_yaml_is_refused_at_submit_with_one_line(tmp_path, text, refusal):
    community(tmp_path, "kim", text)
    with pytest.raises(ModelNotFound) as refused:
        check_model_name("kim", str(tmp_path))
    assert refusal in str(refusal) and refusal in str(refused.value)
    assert "\n" not in str(refused.value)
    assert {"name": "kim", "error": str(refused.value).rstrip(".")} in list_models(str(tmp_path))


def test_a_truncated_checkpoint_is_refused_at_submit(tmp_path):
    community(tmp_path, "kim", MEL_YAML)
    (tmp_path / "kim.ckpt").write_bytes((tmp_path / "kim.ckpt").read_bytes()[:-20])
    with pytest.raises(ModelNotFound, match="kim.ckpt is not a PyTorch file"):
        check_model_name("kim", str(tmp_path))


def test_a_local_checkpoint_that_the_catalogue_pins_differently_is_refused(tmp_path):
    sha = community(tmp_path / "models", "kim", MEL_YAML)
    pinned = tmp_path / "catalogue.yaml"
    entry = {"architecture": "mel_band_roformer", "licence": "MIT", "files": {
        "ckpt": {"url": "https://example.org/kim.ckpt", "sha256": sha},
        "yaml": {"url": "https://example.org/kim.yaml", "sha256": "0" * 64}}}
    pinned.write_text(yaml.safe_dump({"models": {"kim": entry}}))
    models = ModelsConfig(catalogue=str(pinned))
    assert check_model_name("kim", str(tmp_path / "models"), models).sha256 == sha
    entry["files"]["ckpt"]["sha256"] = "f" * 64
    pinned.write_text(yaml.safe_dump({"models": {"kim": entry}}))
    with pytest.raises(ModelNotFound, match=r"kim.ckpt in repo .* is not the catalogue's kim "
                       r"\(sha256 [0-9a-f]{12}\.\.\., the catalogue says ffffffffffff\.\.\.\)"):
        check_model_name("kim", str(tmp_path / "models"), models)


def test_an_operator_catalogue_adds_models_and_bad_entries_are_one_line(tmp_path):
    extra = tmp_path / "catalogue.yaml"
    extra.write_text(yaml.safe_dump({"models": {"mine": {"architecture": "htdemucs",
                                                         "licence": "CC-BY-4.0"}}}))
    assert describe("mine", None, str(extra)).licence == "CC-BY-4.0"
    assert describe("htdemucs", None, str(extra)).licence == "MIT"  # the shipped ones stay
    extra.write_text(yaml.safe_dump({"models": {"mine": {"architecture": "vit"}}}))
    with pytest.raises(ModelNotFound, match="model 'mine' has architecture 'vit'"):
        describe("mine", None, str(extra))
    with pytest.raises(ModelNotFound, match="unknown model 'nosuch'; available: .*htdemucs"):
        check_model_name("nosuch", None)


def test_licences_the_operator_does_not_allow_are_refused_and_not_servable(tmp_path):
    community(tmp_path, "kim", MEL_YAML)
    models = ModelsConfig(allow_licences=["MIT"])
    assert check_model_name("htdemucs", None, models).licence == "MIT"
    with pytest.raises(InvalidInput, match=r"^model 'kim' is under licence 'unknown', which this "
                       r"service does not serve \(models.allow_licences: MIT\)$"):
        check_model_name("kim", str(tmp_path), models)
    assert [m["servable"] for m in list_models(str(tmp_path), models)] == [False]
    assert [m["servable"] for m in list_models(str(tmp_path))] == [True]  # default: every licence
