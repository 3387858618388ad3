"""`load_roformer`: a checkpoint and its YAML loaded strictly with `weights_only`, and every bad
pair refused with one line that names files, never paths."""
from __future__ import annotations

import pathlib

import pytest
import torch
import yaml

from raydemucs.core.errors import ModelNotFound
from raydemucs.models.roformer.loading import load_roformer

from roformer_reference import reference_class
from support import write_roformer


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roformers")
    write_roformer(folder, "bs", "bs_roformer")
    return write_roformer(folder, "mel", "mel_band_roformer", num_stems=1,
                          training={"instruments": ["vocals", "other"],
                                    "target_instrument": "vocals"})


def refused(tmp_path, ckpt, config, *fragments):
    with pytest.raises(ModelNotFound) as caught:
        load_roformer(ckpt, config)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def edited_yaml(repo, tmp_path, name, **model):
    data = yaml.load((repo / f"{name}.yaml").read_text(), Loader=yaml.Loader)
    data["model"].update(model)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.dump(data, Dumper=yaml.Dumper))
    return path


@pytest.mark.parametrize("name", ["bs", "mel"])
def test_a_written_checkpoint_loads_and_separates_as_the_reference(repo, name):
    network, config = load_roformer(repo / f"{name}.ckpt", repo / f"{name}.yaml")
    assert not network.training
    reference = reference_class(config.architecture)(**config.kwargs).eval()
    reference.load_state_dict(torch.load(repo / f"{name}.ckpt", weights_only=True))
    mix = 0.3 * torch.randn(1, 2, config.chunk_size)
    with torch.inference_mode():
        ours, theirs = network(mix), reference(mix)
    assert ours.shape == (1, len(config.stems), 2, config.chunk_size)
    torch.testing.assert_close(ours, theirs.view(ours.shape), rtol=5e-6, atol=5e-6)


def test_a_state_dict_kept_under_state_dict_loads(repo, tmp_path):
    state = torch.load(repo / "bs.ckpt", weights_only=True)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.ckpt")
    network, _ = load_roformer(tmp_path / "wrapped.ckpt", repo / "bs.yaml")
    assert network.state_dict().keys() == state.keys()


def test_a_yaml_and_checkpoint_that_disagree_are_refused_with_the_first_key(repo, tmp_path):
    deeper = edited_yaml(repo, tmp_path, "bs", depth=2)
    refused(tmp_path, repo / "bs.ckpt", deeper, "bs.yaml and bs.ckpt disagree",
            "lacks layers.1.0.layers.0.0.rotary_embed.freqs [4]")
    wider = edited_yaml(repo, tmp_path, "mel", dim=24)
    refused(tmp_path, repo / "mel.ckpt", wider, "disagree", "in the checkpoint")
    state = torch.load(repo / "bs.ckpt", weights_only=True)
    torch.save({**state, "extra.weight": torch.zeros(3)}, tmp_path / "extra.ckpt")
    refused(tmp_path, tmp_path / "extra.ckpt", repo / "bs.yaml", "unexpected extra.weight [3]")


def test_missing_truncated_or_code_carrying_checkpoints_are_refused(repo, tmp_path):
    refused(tmp_path, tmp_path / "gone.ckpt", repo / "bs.yaml", "gone.ckpt is missing")
    data = (repo / "bs.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[:len(data) // 2])
    refused(tmp_path, tmp_path / "cut.ckpt", repo / "bs.yaml", "cut.ckpt is not a readable")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    torch.save({"x": Payload()}, tmp_path / "code.ckpt")
    refused(tmp_path, tmp_path / "code.ckpt", repo / "bs.yaml", "code.ckpt is not a readable")
    assert not marker.exists()
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    refused(tmp_path, tmp_path / "list.ckpt", repo / "bs.yaml", "no state dict")


def test_an_option_value_the_network_cannot_take_is_one_line(repo, tmp_path):
    bands = edited_yaml(repo, tmp_path, "bs", freqs_per_bands=(2, 2, 4))
    refused(tmp_path, repo / "bs.ckpt", bands, "bs.yaml: freqs_per_bands must be")
