"""A RoFormer checkpoint's YAML: the safe loader with its one Python tag, the architecture rule,
the options raydemucs runs, and the settings of the reference chunked inference."""
from __future__ import annotations

import pytest
import yaml

from raydemucs.core.errors import ModelNotFound
from raydemucs.models.roformer.config import load_config, parse_config

from support import write_roformer

MEL = {"model": {"dim": 8, "depth": 1, "num_bands": 4, "stereo": True},
       "training": {"instruments": ["vocals"]}, "audio": {"chunk_size": 8192}}


def one_line_refusal(call, *fragments) -> str:
    with pytest.raises(ModelNotFound) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "/tmp" not in message and "/work" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_a_written_checkpoint_yaml_reads_back_with_its_tuples(tmp_path):
    write_roformer(tmp_path, "bs", "bs_roformer")
    assert "!!python/tuple" in (tmp_path / "bs.yaml").read_text()
    config = load_config(tmp_path / "bs.yaml")
    assert config.architecture == "bs_roformer"
    assert config.kwargs["freqs_per_bands"] == (2, 2, 4, 4, 8, 8, 16, 16, 32, 37)
    assert (config.samplerate, config.channels, config.stems) == (44100, 2, ("vocals", "other"))
    assert (config.chunk_size, config.num_overlap, config.batch_size) == (16384, 2, 2)
    assert (config.step, config.border, config.fade_size) == (8192, 8192, 1638)


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['true']",
                                 "!!python/name:os.system", "!!python/object:builtins.dict {}",
                                 "!custom 1"])
def test_any_tag_but_the_tuple_is_refused_with_one_line(tmp_path, tag):
    path = tmp_path / "evil.yaml"
    path.write_text(f"model:\n  dim: {tag}\n  depth: 1\n")
    one_line_refusal(lambda: load_config(path), "evil.yaml", "is not allowed")


def test_a_missing_or_unreadable_yaml_is_one_line(tmp_path):
    one_line_refusal(lambda: load_config(tmp_path / "gone.yaml"), "gone.yaml is missing")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    one_line_refusal(lambda: load_config(tmp_path / "bad.yaml"), "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    one_line_refusal(lambda: load_config(tmp_path / "list.yaml"), "no `model:` section")


def test_the_architecture_is_the_training_repos_model_type_else_its_band_option():
    assert parse_config(MEL, "m.yaml").architecture == "mel_band_roformer"
    chosen = {**MEL, "training": {**MEL["training"], "model_type": "mel_band_roformer"}}
    assert parse_config(chosen, "m.yaml").architecture == "mel_band_roformer"
    neither = {**MEL, "model": {"dim": 8, "depth": 1}}
    one_line_refusal(lambda: parse_config(neither, "n.yaml"), "training.model_type")
    other = {**MEL, "training": {"instruments": ["vocals"], "model_type": "htdemucs"}}
    one_line_refusal(lambda: parse_config(other, "o.yaml"), "'htdemucs'", "bs_roformer")


@pytest.mark.parametrize("option, message", [
    ({"hyper_connections": 4}, "'hyper_connections' is not one raydemucs knows"),
    ({"skip_connection": True}, "skip_connection: True is not supported"),
    ({"use_pope": True}, "use_pope"),
])
def test_options_the_networks_do_not_run_are_refused(option, message):
    data = {**MEL, "model": {**MEL["model"], **option}}
    one_line_refusal(lambda: parse_config(data, "x.yaml"), message)


def test_an_option_of_the_other_architecture_is_refused():
    both = {**MEL, "model": {**MEL["model"], "freqs_per_bands": (2, 2)}}
    one_line_refusal(lambda: parse_config(both, "x.yaml"), "does not say its architecture")
    chosen = {**MEL, "training": {**MEL["training"], "model_type": "bs_roformer"}}
    one_line_refusal(lambda: parse_config(chosen, "x.yaml"), "'num_bands'", "for bs_roformer")


def test_training_only_options_are_accepted():
    options = {"sage_attention": True, "use_torch_checkpoint": False, "flash_attn": False,
               "skip_connection": False, "attn_dropout": 0.1, "zero_dc": True}
    config = parse_config({**MEL, "model": {**MEL["model"], **options}}, "x.yaml")
    assert config.kwargs["sage_attention"] is True


def test_stems_are_the_target_else_the_instruments_and_match_num_stems():
    target = {**MEL, "training": {"instruments": ["vocals", "other"],
                                  "target_instrument": "vocals"}}
    config = parse_config(target, "t.yaml")
    assert (config.stems, config.instruments) == (("vocals",), ("vocals", "other"))
    many = {**MEL, "training": {"instruments": ["vocals", "other"]}}
    one_line_refusal(lambda: parse_config(many, "m.yaml"), "num_stems is 1", "names 2 stems")
    one_line_refusal(lambda: parse_config({**MEL, "training": {}}, "e.yaml"),
                     "training.instruments")


def test_inference_settings_default_and_are_checked():
    config = parse_config(MEL, "d.yaml")
    assert (config.samplerate, config.num_overlap, config.batch_size) == (44100, 4, 1)
    chunked = {**MEL, "inference": {"chunk_size": 4096, "num_overlap": 2}}
    assert parse_config(chunked, "c.yaml").chunk_size == 4096
    for bad in ({"inference": {"num_overlap": 0}}, {"audio": {}},
                {"audio": {"chunk_size": 8192, "num_channels": 1}}):
        one_line_refusal(lambda: parse_config({**MEL, **bad}, "b.yaml"), "b.yaml")


def test_the_tuple_tag_reads_as_a_tuple_and_safe_yaml_is_unchanged(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.dump({**MEL, "model": {**MEL["model"], "multi_stft_resolutions_"
                               "window_sizes": (4096, 2048)}}, Dumper=yaml.Dumper))
    assert load_config(path).kwargs["multi_stft_resolutions_window_sizes"] == (4096, 2048)
