"""A RoFormer checkpoint's training config (`NAME.yaml` beside `NAME.ckpt`), read without torch.

The community checkpoints (Music-Source-Separation-Training, UVR) carry the YAML their training
ran with: `model:` holds the network's constructor arguments, `audio:` the sample rate and chunk
length, `inference:` the overlap and batch of the reference chunked inference, `training:` the
stems. The YAML is read with PyYAML's safe loader plus one tag, `!!python/tuple` (the files use it
for `freqs_per_bands`); any other tag is refused.

The architecture is chosen as the training repo chooses it when the config says so:
`training.model_type` (`bs_roformer` or `mel_band_roformer`); else by the option only one of them
takes: `model.freqs_per_bands` means BS-RoFormer, `model.num_bands` Mel-Band RoFormer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ...core.errors import ModelNotFound

BS_ROFORMER = "bs_roformer"
MEL_BAND_ROFORMER = "mel_band_roformer"
ARCHITECTURES = (BS_ROFORMER, MEL_BAND_ROFORMER)
TUPLE_TAG = "tag:yaml.org,2002:python/tuple"
DEFAULT_SAMPLERATE = 44100
# The training repo has no defaults for these (its demix reads them from `inference:`); absent,
# raydemucs takes the values most of its published configs carry.
DEFAULT_NUM_OVERLAP = 4
DEFAULT_BATCH_SIZE = 1

# Constructor options that shape the weights or the forward pass, by architecture.
SHARED_OPTIONS = frozenset({
    "dim", "depth", "stereo", "num_stems", "time_transformer_depth", "freq_transformer_depth",
    "linear_transformer_depth", "dim_head", "heads", "stft_n_fft", "stft_hop_length",
    "stft_win_length", "stft_normalized", "zero_dc", "mask_estimator_depth",
    "mlp_expansion_factor",
})
OWN_OPTIONS = {
    BS_ROFORMER: frozenset({"freqs_per_bands"}),
    MEL_BAND_ROFORMER: frozenset({"num_bands", "sample_rate"}),
}
# Options without effect on the weights or on inference's output (dropout, losses, gradient
# checkpoints, the attention kernel, an output length that equals a chunk's anyway): accepted,
# and not passed to raydemucs's networks.
INERT_OPTIONS = frozenset({
    "attn_dropout", "ff_dropout", "flash_attn", "sage_attention", "use_torch_checkpoint",
    "dim_freqs_in", "multi_stft_resolution_loss_weight", "multi_stft_resolutions_window_sizes",
    "multi_stft_hop_size", "multi_stft_normalized", "match_input_audio_length",
})
DEFAULT_HOP_LENGTH = 512  # the networks' stft_hop_length when the YAML gives none
# Options accepted at this one value only: another changes the network in a way not built here.
FIXED_OPTIONS = {"skip_connection": False, "use_pope": False, "stft_window_fn": None}


class RoformerYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads `!!python/tuple` (as a tuple) and refuses any other
    tag with one line that names it."""


def _construct_tuple(loader: RoformerYamlLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


def _refuse_tag(loader: RoformerYamlLoader, node: yaml.Node):
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise yaml.constructor.ConstructorError(None, None, f"tag {tag} is not allowed "
                                            "(of Python's tags, only !!python/tuple)")


RoformerYamlLoader.add_constructor(TUPLE_TAG, _construct_tuple)
RoformerYamlLoader.add_constructor(None, _refuse_tag)


@dataclass(frozen=True)
class RoformerConfig:
    """What a RoFormer checkpoint's YAML says: its network and its reference inference.

    `options`: the `model:` constructor arguments as sorted (name, value) pairs (a frozen,
    picklable record); `stems`: what the network outputs, in its order (`training.instruments`,
    or `[training.target_instrument]` when set); `instruments`: all the stems it trained on.
    """

    architecture: str
    options: tuple[tuple[str, Any], ...]
    samplerate: int
    channels: int
    chunk_size: int
    num_overlap: int
    batch_size: int
    stems: tuple[str, ...]
    instruments: tuple[str, ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        """The network's constructor arguments."""
        return dict(self.options)

    @property
    def network_kwargs(self) -> dict[str, Any]:
        """The constructor arguments of raydemucs's network: the options that shape it."""
        return {key: value for key, value in self.options
                if key not in INERT_OPTIONS and key not in FIXED_OPTIONS}

    @property
    def step(self) -> int:
        """Samples between the starts of two chunks (`chunk_size // num_overlap`)."""
        return self.chunk_size // self.num_overlap

    @property
    def border(self) -> int:
        """The reflect padding on each side of a track that is longer than twice this."""
        return self.chunk_size - self.step

    @property
    def fade_size(self) -> int:
        """The samples of a chunk's linear fade in and fade out (a tenth of a chunk)."""
        return self.chunk_size // 10


def read_yaml(path: Path) -> dict:
    """`path` parsed with `RoformerYamlLoader`; errors as one `ModelNotFound` line naming the file
    by its name only."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelNotFound(f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelNotFound(f"{path.name} cannot be read: {type(exc).__name__}") from None
    try:
        data = yaml.load(text, Loader=RoformerYamlLoader)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ModelNotFound(f"{path.name}: {' '.join(str(problem).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelNotFound(f"{path.name} has no `model:` section of constructor arguments")
    return data


def load_config(path: Path) -> RoformerConfig:
    """The `RoformerConfig` of a checkpoint's YAML file; one `ModelNotFound` line when the file
    is missing, unsafe, or names an architecture or option raydemucs does not run."""
    data = read_yaml(path)
    return parse_config(data, path.name)


def parse_config(data: dict, name: str) -> RoformerConfig:
    """The `RoformerConfig` of a parsed YAML document (`name`: the file's name, for errors)."""
    model = data["model"]
    audio, inference, training = (_section(data, key, name)
                                  for key in ("audio", "inference", "training"))
    architecture = _architecture(model, training, name)
    _check_options(model, architecture, name)
    channels = 2 if model.get("stereo", False) else 1
    if audio.get("num_channels", channels) != channels:
        raise ModelNotFound(f"{name}: audio.num_channels is {audio['num_channels']} but "
                            f"model.stereo is {bool(model.get('stereo', False))}")
    stems = _stems(training, model, name)
    chunk_size = _positive(inference.get("chunk_size", audio.get("chunk_size")),
                           "audio.chunk_size", name)
    if chunk_size % model.get("stft_hop_length", DEFAULT_HOP_LENGTH):
        raise ModelNotFound(f"{name}: audio.chunk_size must be a multiple of "
                            "model.stft_hop_length")
    return RoformerConfig(
        architecture=architecture,
        options=tuple(sorted((key, _frozen(value)) for key, value in model.items())),
        samplerate=_positive(audio.get("sample_rate", DEFAULT_SAMPLERATE), "audio.sample_rate",
                             name),
        channels=channels,
        chunk_size=chunk_size,
        num_overlap=_positive(inference.get("num_overlap", DEFAULT_NUM_OVERLAP),
                              "inference.num_overlap", name),
        batch_size=_positive(inference.get("batch_size", DEFAULT_BATCH_SIZE),
                             "inference.batch_size", name),
        stems=stems,
        instruments=tuple(training.get("instruments") or stems),
    )


def _section(data: dict, key: str, name: str) -> dict:
    section = data.get(key) or {}
    if not isinstance(section, dict):
        raise ModelNotFound(f"{name}: `{key}:` is not a mapping")
    return section


def _architecture(model: dict, training: dict, name: str) -> str:
    chosen = training.get("model_type")
    if chosen is None:
        found = [arch for arch, key in ((BS_ROFORMER, "freqs_per_bands"),
                                        (MEL_BAND_ROFORMER, "num_bands")) if key in model]
        chosen = found[0] if len(found) == 1 else None
    if chosen is None:
        raise ModelNotFound(f"{name} does not say its architecture: set training.model_type to "
                            f"{' or '.join(ARCHITECTURES)} (else model.freqs_per_bands means "
                            "bs_roformer, model.num_bands mel_band_roformer)")
    if chosen not in ARCHITECTURES:
        raise ModelNotFound(f"{name}: architecture {str(chosen)[:40]!r} is not one raydemucs "
                            f"runs ({', '.join(ARCHITECTURES)})")
    return chosen


def _check_options(model: dict, architecture: str, name: str) -> None:
    known = SHARED_OPTIONS | OWN_OPTIONS[architecture] | INERT_OPTIONS | set(FIXED_OPTIONS)
    for key, value in model.items():
        if key not in known:
            raise ModelNotFound(f"{name}: model option {str(key)[:40]!r} is not one raydemucs "
                                f"knows for {architecture}")
        if key in FIXED_OPTIONS and value != FIXED_OPTIONS[key]:
            raise ModelNotFound(f"{name}: model option {key}: {str(value)[:40]} is not supported "
                                f"(only {FIXED_OPTIONS[key]})")
    for key in ("dim", "depth"):
        if key not in model:
            raise ModelNotFound(f"{name}: model.{key} is missing")


def _stems(training: dict, model: dict, name: str) -> tuple[str, ...]:
    target = training.get("target_instrument")
    stems = [target] if target else training.get("instruments")
    if not stems or not all(isinstance(stem, str) and stem for stem in stems):
        raise ModelNotFound(f"{name}: training.instruments (or training.target_instrument) "
                            "must name the stems")
    if len(stems) != model.get("num_stems", 1):
        raise ModelNotFound(f"{name}: model.num_stems is {model.get('num_stems', 1)} but the "
                            f"training section names {len(stems)} stems")
    return tuple(stems)


def _frozen(value):
    """Lists as tuples (the constructors take tuples; the record stays immutable)."""
    return tuple(_frozen(item) for item in value) if isinstance(value, (list, tuple)) else value


def _positive(value, key: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelNotFound(f"{name}: {key} must be a positive integer")
    return value
