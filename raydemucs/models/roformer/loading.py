"""A RoFormer checkpoint loaded: `NAME.yaml` read safely, the network built from it, and the state
dict of `NAME.ckpt` (read with `torch.load(weights_only=True)`) loaded strictly. Every failure is
one `ModelNotFound` line that names the files by name, never by path."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ...core.errors import ModelNotFound
from .config import BS_ROFORMER, RoformerConfig, load_config
from .networks import BSRoformer, MelBandRoformer

NETWORKS = {BS_ROFORMER: BSRoformer, "mel_band_roformer": MelBandRoformer}
WRAPPER_KEYS = ("state", "state_dict")  # what the training repo unwraps before loading


def build_network(config: RoformerConfig, name: str = "the checkpoint") -> nn.Module:
    """`config`'s network with fresh weights; a bad option value as one `ModelNotFound` line."""
    try:
        return NETWORKS[config.architecture](**config.network_kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelNotFound(f"{name}: {' '.join(str(exc).split())[:200]}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of `path`, read with `weights_only=True` (no code runs), unwrapped from the
    `state`/`state_dict` key some checkpoints keep them under."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelNotFound(f"{path.name} is missing") from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as exc:
        reason = " ".join(str(exc).split()).split(". ")[0][:160] or type(exc).__name__
        raise ModelNotFound(f"{path.name} is not a readable state dict "
                            f"(truncated or not a checkpoint: {reason})") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelNotFound(f"{path.name} holds no state dict of tensors")
    return state


def check_state_dict(network: nn.Module, state: dict[str, torch.Tensor], names: str) -> None:
    """One `ModelNotFound` line naming the first key that the network and `state` disagree on:
    missing, unexpected, or of another shape."""
    expected = network.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ModelNotFound(f"{names} disagree: the checkpoint lacks {key} "
                                f"{list(tensor.shape)}")
        if state[key].shape != tensor.shape:
            raise ModelNotFound(f"{names} disagree: {key} is {list(state[key].shape)} in the "
                                f"checkpoint, {list(tensor.shape)} in the YAML's network")
    for key in state:
        if key not in expected:
            raise ModelNotFound(f"{names} disagree: the checkpoint has an unexpected "
                                f"{key} {list(state[key].shape)}")


def load_roformer(ckpt: Path, yaml_path: Path, device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, RoformerConfig]:
    """The network of `yaml_path` with the weights of `ckpt`, strictly, on `device`, in eval
    mode; and its config."""
    config = load_config(yaml_path)
    network = build_network(config, yaml_path.name)
    state = read_state_dict(ckpt)
    check_state_dict(network, state, f"{yaml_path.name} and {ckpt.name}")
    network.load_state_dict(state, strict=True)
    return network.to(device).eval(), config
