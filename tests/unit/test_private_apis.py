"""What raydemucs takes from its dependencies' insides, checked so that an upgrade fails here.

Private members it calls (Ray's, in `raydemucs.client.rayshim`) exist and behave as relied on; each
mirror of an internal (demucs's model files, torch's hub folder, julius's resampler, demucs's PCM)
reads as the library itself does. pyproject.toml pins the minor versions these hold for.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from raydemucs.client import rayshim
from raydemucs.models import catalogue
from raydemucs.separation import decode, encode


# -- Ray's private calls (raydemucs/client/rayshim.py) ---------------------------------------------
def test_ray_start_address_reads_what_ray_start_writes(tmp_path, monkeypatch):
    import inspect

    import ray._private.utils as ray_utils
    from ray.scripts import scripts

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    assert rayshim.ray_start_address() is None
    assert "write_ray_address(" in inspect.getsource(scripts.start.callback)
    ray_utils.write_ray_address("10.1.2.3:6379")
    assert rayshim.ray_start_address() == "10.1.2.3:6379"


PRESENT_TOKEN = ("import os; from raydemucs.client import rayshim; rayshim.present_auth_token(); "
                 "print(os.environ.get('RAY_AUTH_MODE'))")


@pytest.mark.parametrize("has_token", [True, False])
def test_present_auth_token_turns_token_mode_on_only_with_a_token(tmp_path, has_token):
    """Ray's helper sets RAY_AUTH_MODE=token when ~/.ray/auth_token exists, and is quiet."""
    if has_token:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("a" * 32)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", PRESENT_TOKEN], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.split() == (["token"] if has_token else ["None"])
    assert "Token authentication" not in done.stderr


def test_serve_proxy_bind_asks_the_controller_serve_names_for_its_http_options():
    """The call itself runs on a real Serve in tests/e2e/test_http_netns.py."""
    import inspect

    from ray.serve import context as serve_context
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve._private.controller import ServeController
    from ray.serve.config import HTTPOptions

    assert ("ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)"
            in inspect.getsource(serve_context))  # how Serve itself finds its controller
    assert SERVE_NAMESPACE == "serve" and SERVE_CONTROLLER_NAME
    assert inspect.signature(ServeController.get_http_config).return_annotation in (
        HTTPOptions, "HTTPOptions")
    assert {"host", "port"} <= set(HTTPOptions.model_fields)


# -- demucs's model files, read without importing demucs (raydemucs/models/catalogue.py) -----------
def test_remote_checkpoints_are_the_files_torch_hub_downloads():
    from demucs import pretrained

    assert catalogue.remote_root() == pretrained.REMOTE_ROOT
    urls = pretrained._parse_remote_files(pretrained.REMOTE_ROOT / "files.txt")
    assert catalogue.remote_checkpoints() == {sig: os.path.basename(urlparse(url).path)
                                           for sig, url in urls.items()}


@pytest.mark.parametrize("env", [{}, {"XDG_CACHE_HOME": "/x/cache"},
                                 {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x/cache"}])
def test_torch_hub_dir_is_torch_hub_get_dir(monkeypatch, env):
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert catalogue.torch_hub_dir() == Path(torch.hub.get_dir())


def hub_names() -> list[str]:
    bags = [name for name in catalogue.remote_models() if name != catalogue.OFFLINE_MODEL]
    return bags + ["someone/htdemucs_ft"]


@pytest.mark.parametrize("name", hub_names())
def test_hub_files_are_those_demucs_downloads(monkeypatch, name):
    """`hub_repo_id` and the file names looked up in the HF cache == demucs.hf's downloads."""
    import huggingface_hub
    from demucs import hf

    bag = catalogue.remote_root() / f"{name.rpartition('/')[2]}.yaml"

    def fetched(calls):
        def fetch(repo_id, filename, **_):
            calls.append((repo_id, filename))
            return str(bag) if filename.endswith(".yaml") else filename
        return fetch

    theirs, ours = [], []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetched(theirs))
    monkeypatch.setattr(hf, "load_safetensors_model", lambda path: path)
    monkeypatch.setattr(hf, "BagOfModels", lambda models, *_: models)
    hf.get_hf_model(name)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fetched(ours))
    assert catalogue.cached_in(name) == "Hugging Face cache"
    assert ours == theirs and catalogue.hub_repo_id(name) == theirs[0][0]


def test_repo_contents_are_what_local_repo_and_bag_only_repo_see(tmp_path):
    from demucs.repo import BagOnlyRepo, LocalRepo, ModelLoadingError

    for name in ("plain.th", "sig-0123abcd.th", "two-dashes-99.th", "bag.yaml", "notes.txt",
                 "weights.th.bak", "other.yml"):
        (tmp_path / name).write_bytes(b"x")
    checkpoints, bags = catalogue.repo_contents(tmp_path)
    local = LocalRepo(tmp_path)
    assert checkpoints == local.list_model()
    assert bags == BagOnlyRepo(tmp_path, local).list_model()
    (tmp_path / "plain-ffff0000.th").write_bytes(b"x")
    with pytest.raises(ModelLoadingError, match="Duplicate"):
        LocalRepo(tmp_path)
    with pytest.raises(catalogue.ModelNotFound, match="two checkpoints for signature 'plain'"):
        catalogue.repo_contents(tmp_path)


# -- julius's resampler, block by block (raydemucs/separation/decode.py) ---------------------------
@pytest.mark.parametrize("old, new", [(48000, 44100), (22050, 44100), (8000, 44100),
                                      (96000, 44100), (44100, 44100 * 2)])
def test_block_resampler_equals_julius_on_the_whole_track(old, new):
    import julius

    torch.manual_seed(0)
    track = torch.randn(2, 20000)
    blocks = torch.split(track, [1000, 1, 4096, 14903], -1)
    out = torch.cat(list(decode._Resampler(old, new).run(iter(blocks))), -1)
    assert torch.equal(out, julius.resample_frac(track, old, new))


# -- demucs's PCM (raydemucs/separation/encode.py) -------------------------------------------------
@pytest.mark.parametrize("bits", [16, 24])
def test_pcm_is_what_save_audio_writes_in_a_wav(tmp_path, bits):
    from demucs.audio import save_audio

    wav = torch.from_numpy(np.random.default_rng(0).uniform(-1.2, 1.2, (2, 5000)).astype("f4"))
    save_audio(wav.clone(), tmp_path / "demucs.wav", 44100, clip="none", bits_per_sample=bits)
    data = (tmp_path / "demucs.wav").read_bytes()[44:]
    ours = encode.pcm(wav, bits)
    if bits == 24:
        ours = ours.view(np.uint8).reshape(-1, 4)[:, 1:]
    assert ours.tobytes() == data
