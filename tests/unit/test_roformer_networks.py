"""raydemucs's RoFormer networks against the reference (the networks the community checkpoints
were trained with, tests/roformer_reference.py): one config builds both, each loads the other's
random state dict strictly, and both give the same stems."""
from __future__ import annotations

import pytest
import torch

from raydemucs.models.roformer.config import parse_config
from raydemucs.models.roformer.loading import NETWORKS

from roformer_reference import reference_class
from support import TINY_ROFORMER, TINY_ROFORMER_OWN

OPTION_SETS = {  # beyond the tiny network: the options published checkpoints set
    "bs_roformer": [{}, {"linear_transformer_depth": 1, "mask_estimator_depth": 2,
                         "mlp_expansion_factor": 2, "zero_dc": False, "flash_attn": False},
                    {"stereo": False, "num_stems": 1, "depth": 2, "sage_attention": True,
                     "skip_connection": False, "use_torch_checkpoint": False}],
    "mel_band_roformer": [{}, {"mask_estimator_depth": 2, "zero_dc": False, "flash_attn": False,
                               "num_bands": 12, "match_input_audio_length": True},
                          {"stereo": False, "num_stems": 1, "depth": 2, "heads": 1,
                           "linear_transformer_depth": 0}],
}
CASES = [(arch, options) for arch, sets in OPTION_SETS.items() for options in sets]


def config_of(architecture: str, **options):
    model = {**TINY_ROFORMER, **TINY_ROFORMER_OWN[architecture], **options}
    stems = ["vocals", "other"][:model["num_stems"]]
    return parse_config({"model": model, "audio": {"chunk_size": 4096},
                         "training": {"instruments": stems}}, f"{architecture}.yaml")


def stems_of(network, mix):
    with torch.inference_mode():
        out = network.eval()(mix)
    return out if out.dim() == 4 else out.unsqueeze(1)  # the reference drops a lone stem's axis


def randomized(network):
    """`network` with every parameter drawn at random (norm gains too, not just their ones)."""
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn_like(parameter) * parameter.std().nan_to_num(0.1)
                                .clamp(min=0.1))
    return network


@pytest.mark.parametrize("architecture, options", CASES)
def test_the_reference_and_ours_load_each_others_weights_and_agree(architecture, options):
    config = config_of(architecture, **options)
    torch.manual_seed(0)
    reference = randomized(reference_class(architecture)(**config.kwargs))
    ours = NETWORKS[architecture](**config.network_kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    mix = 0.3 * torch.randn(2, config.channels, 4096)
    expected = stems_of(reference, mix)
    assert expected.shape == (2, len(config.stems), config.channels, 4096)
    torch.testing.assert_close(stems_of(ours, mix), expected, rtol=5e-6, atol=5e-6)

    randomized(ours)
    reference.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(stems_of(ours, mix), stems_of(reference, mix), rtol=5e-6,
                               atol=5e-6)


PUBLISHED = {  # the networks of published checkpoints' YAMLs (ZFTurbo's and viperx's configs)
    "bs_roformer": {"dim": 512, "depth": 12, "stereo": True, "num_stems": 1,
                    "time_transformer_depth": 1, "freq_transformer_depth": 1,
                    "freqs_per_bands": (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8
                    + (48,) * 8 + (128, 129), "stft_hop_length": 441,
                    "mask_estimator_depth": 2},
    "mel_band_roformer": {"dim": 384, "depth": 6, "stereo": True, "num_stems": 4,
                          "time_transformer_depth": 1, "freq_transformer_depth": 1,
                          "num_bands": 60, "stft_hop_length": 441, "mask_estimator_depth": 2},
}


@pytest.mark.parametrize("architecture", list(PUBLISHED))
def test_published_networks_have_the_checkpoints_keys_and_shapes(architecture):
    options = PUBLISHED[architecture]
    with torch.device("meta"):  # shapes without the weights' memory
        ours = NETWORKS[architecture](**options).state_dict()
        reference = reference_class(architecture)(**options).state_dict()
    assert {key: tuple(t.shape) for key, t in ours.items()} == \
        {key: tuple(t.shape) for key, t in reference.items()}


@pytest.mark.parametrize("architecture", list(OPTION_SETS))
def test_bf16_autocast_runs_with_the_spectrum_in_fp32(architecture):
    config = config_of(architecture)
    torch.manual_seed(1)
    network = NETWORKS[architecture](**config.network_kwargs).eval()
    mix = 0.3 * torch.randn(1, 2, 4096)
    exact = stems_of(network, mix)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = stems_of(network, mix)
    assert low.dtype == torch.float32 and low.isfinite().all()
    snr_db = 10 * torch.log10(exact.pow(2).sum() / (exact - low).pow(2).sum())
    print(f"{architecture} bf16 SNR {snr_db:.1f} dB")
    assert snr_db > 20
