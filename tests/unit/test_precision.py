"""Precision modes and the exported network: each mode against fp32, the device checks, the
disk cache of exports, and the result-cache key."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.pretrained import get_model
from test_worker import STEMS, make_spec, make_worker

from raydemucs.core.config import SeparationConfig, load_config
from raydemucs.core.errors import ConfigError, InvalidInput
from raydemucs.core.task import TaskSpec
from raydemucs.models import compiled, runtimes
from raydemucs.separation.batching import BatchedSeparator
from raydemucs.worker.actor import SeparatorWorker

from support import make_signal, save_tiny_htdemucs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HAS_BF16 = bool(runtimes.cpu_flags() & set(runtimes.CPU_BF16_FLAGS))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny HTDemucs trained on 2 s segments: each mode's arithmetic on a fifth of the work
    (its export takes as long as the full segment's: once for the module)."""
    repo = save_tiny_htdemucs(tmp_path_factory.mktemp("short"), "short", segment=2)
    return get_model("short", repo).models[0].eval()


@pytest.fixture(scope="module")
def export_dir(tiny, tmp_path_factory):
    """One export of `tiny` for the module (an export takes tens of seconds): built in a fresh
    folder, where every network this module compiles is cached (`compiled.cache_dir`)."""
    folder = tmp_path_factory.mktemp("networks")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled, "cache_dir", lambda: folder)
        assert compiled.CompiledNetwork(tiny, "fp32", 1, folder=folder).built
        yield folder


@pytest.fixture(scope="module")
def wav():
    return torch.from_numpy(make_signal(4.0, seed=3).T.copy())


def separate(model, wav, precision="fp32", runtime="eager") -> torch.Tensor:
    stems = BatchedSeparator(model, batch_size=2, precision=precision, runtime=runtime).separate(
        {"x": wav}, shifts=0)["x"]
    return torch.stack([stems[name] for name in STEMS])


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return 10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()).item()


@pytest.mark.slow
@pytest.mark.parametrize("mode, runtime, min_snr_db", [
    ("fp32", "openvino", 100.0), ("bf16", "eager", 35.0), ("bf16", "openvino", 35.0),
    ("fp16", "eager", 35.0)])
def test_each_mode_stays_close_to_eager_fp32(tiny, wav, export_dir, mode, runtime, min_snr_db):
    """fp16 runs here on the CPU through torch's autocast, only to check the mode's arithmetic
    (workers refuse it on CPUs)."""
    reference = separate(tiny, wav)
    estimate = separate(tiny, wav, mode, runtime)
    assert snr_db(reference, estimate) >= min_snr_db
    if mode == "fp32":  # within 1 LSB of 16-bit audio, by far
        assert (estimate - reference).abs().max().item() < 1e-5


def test_only_htdemucs_exports():
    unittest = get_model("demucs_unittest")
    assert runtimes.runtime_of(unittest, "cpu", "openvino") == "eager"
    assert runtimes.runtime_of(unittest, "cuda", "openvino") == "eager"


def test_an_export_is_built_once_and_reloaded_from_disk(tiny, export_dir):
    """The module's export was built in a fresh folder (`export_dir`); the same folder again (a
    restarted worker) loads it, for any precision."""
    again = compiled.CompiledNetwork(tiny, "bf16", 1, folder=export_dir)
    assert not again.built and again.path.exists()


def test_the_export_key_follows_the_weights(tmp_path):
    a, b = (get_model("tiny", save_tiny_htdemucs(tmp_path / name, seed=seed)).models[0]
            for name, seed in (("a", 0), ("b", 1)))
    assert compiled.weights_digest(a) != compiled.weights_digest(b)
    assert compiled.weights_digest(a) == compiled.weights_digest(
        get_model("tiny", tmp_path / "a").models[0])


# -- what can run where ---------------------------------------------------------------------------
def test_fp16_is_refused_for_a_cpu_pool():
    with pytest.raises(InvalidInput, match="fp16 needs a GPU"):
        runtimes.check_pool("fp16", "cpu")
    runtimes.check_pool("fp16", "cuda")
    runtimes.check_pool("bf16", "cpu")


def test_bf16_is_refused_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    with pytest.raises(InvalidInput, match="AVX512-BF16 or AMX"):
        runtimes.check_device("bf16", "cpu")
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    runtimes.check_device("bf16", "cpu")


def test_a_worker_refuses_fp16_on_its_cpu_and_writes_nothing(audio, tmp_path):
    song = audio("a.wav", seconds=1.0)
    worker = make_worker()
    result = worker.separate(make_spec(song, tmp_path / "out", precision="fp16").to_dict(), 1)
    assert not result["ok"] and result["error"]["type"] == "InvalidInput"
    assert "fp16 needs a GPU" in result["error"]["message"]
    assert not (tmp_path / "out").exists()


def test_a_bf16_task_records_its_precision_and_stays_close_to_fp32(audio, tmp_path, tiny_repo):
    """(This project's machines have AMX; a CPU without bf16 units refuses the mode instead.)"""
    song = audio("eq.wav", seconds=4.0, seed=3)
    worker = make_worker(repo=tiny_repo, model="tiny")
    if not HAS_BF16:
        spec = make_spec(song, tmp_path, model="tiny", repo=str(tiny_repo), precision="bf16")
        result = worker.separate(spec.to_dict(), 1)
        assert not result["ok"] and "bf16" in result["error"]["message"], result
        return
    stems = {}
    for mode in ("fp32", "bf16"):
        spec = make_spec(song, tmp_path / mode, model="tiny", repo=str(tiny_repo), precision=mode)
        result = worker.separate(spec.to_dict(), 1)
        assert result["ok"], result
        manifest = json.loads((tmp_path / mode / "proj" / "song" / "manifest.json").read_text())
        assert manifest["options"]["precision"] == mode
        assert manifest["runtime"] == "eager"  # the default runtime
        stems[mode] = np.stack([sf.read(result["outputs"][s], dtype="float32")[0] for s in STEMS])
    reference, estimate = torch.from_numpy(stems["fp32"]), torch.from_numpy(stems["bf16"])
    assert snr_db(reference, estimate) >= 35.0


def test_workers_runtime_picks_the_network_runtime_and_gpus_run_eager():
    assert runtimes.worker_runtime("auto", "cpu") == "openvino"   # the extra is installed here
    assert runtimes.worker_runtime("eager", "cpu") == "eager"
    assert runtimes.worker_runtime("openvino", "cuda:0") == "eager"
    with pytest.raises(ConfigError, match="workers.runtime='tpu'; allowed: auto, eager, openvino"):
        load_config(overrides={"workers": {"runtime": "tpu"}}, environ={})


def test_an_eager_worker_writes_eager_in_the_manifest(audio, tmp_path, tiny_repo):
    config = load_config("test", overrides={"workers": {"runtime": "eager"}, "separation": {
        "model": "tiny", "repo": str(tiny_repo)}}, environ={})
    worker = SeparatorWorker("worker-t", config.to_dict())
    spec = make_spec(audio("e.wav", seconds=1.0), tmp_path, model="tiny", repo=str(tiny_repo))
    result = worker.separate(spec.to_dict(), 1)
    assert result["ok"], result
    manifest = json.loads((tmp_path / "proj" / "song" / "manifest.json").read_text())
    assert manifest["runtime"] == "eager"


# -- the result cache -----------------------------------------------------------------------------
def spec_with(**options) -> TaskSpec:
    return TaskSpec(task_id="t", project="p", file_id="f", input_path="/in.wav", output_dir="/o",
                    options=SeparationConfig(**options), input_sha256="ab" * 32)


def test_precision_is_part_of_the_cache_key_and_fp32_keeps_the_old_keys():
    keys = {mode: spec_with(precision=mode).cache_key for mode in ("fp32", "bf16", "fp16")}
    assert len(set(keys.values())) == 3
    options = {k: v for k, v in SeparationConfig().model_dump().items()
               if k not in ("device", "precision")}
    before = json.dumps({"input": "ab" * 32, **options}, sort_keys=True)  # the key before it
    assert keys["fp32"] == hashlib.sha256(before.encode()).hexdigest()
