"""The RoFormers on the engine: every path (in memory, pieces, streamed, batched, bf16, the
out-of-memory step-back, progress) gives the training repo's `demix` on the same checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raydemucs.core.config import SeparationConfig
from raydemucs.core.errors import InvalidInput
from raydemucs.models import catalogue, loading
from raydemucs.models.loading import check_options
from raydemucs.separation import split, streaming
from raydemucs.separation.architectures.roformer import RoformerModel
from raydemucs.separation.batching import BatchedSeparator
from raydemucs.separation.engine import Runner, plan_separation, separate_track

from roformer_reference import reference_class, reference_demix
from support import fit_passes_of, make_signal, write_audio, write_roformer

ARCHITECTURES = ["bs_roformer", "mel_band_roformer"]
LSB = 1 / 32768

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def roformer(repo, architecture: str, **written) -> tuple[RoformerModel, torch.nn.Module]:
    """A tiny random RoFormer checkpoint, as a worker loads it and as the reference class."""
    write_roformer(repo, architecture, architecture, **written)
    files = catalogue.roformer_files(architecture, repo)
    loaded = loading.load_separator(architecture, str(repo), "cpu")
    network = reference_class(architecture)(**loaded.model.config.kwargs)
    network.load_state_dict(torch.load(files[0], weights_only=True))
    return loaded.model, network.eval()


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request, tmp_path_factory):
    return roformer(tmp_path_factory.mktemp("roformer"), request.param)


def mix_of(seconds: float, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(make_signal(seconds, seed=seed).T.copy())


def reference(model, wav) -> np.ndarray:
    engine_model, network = model
    return reference_demix(network, engine_model.config, wav.numpy())


def assert_within_one_lsb(stems, ref) -> None:
    stems = np.stack([np.asarray(s) for s in (stems.values() if isinstance(stems, dict)
                                             else stems)])
    assert stems.shape == ref.shape
    assert np.abs(stems - ref).max() <= LSB, np.abs(stems - ref).max()


@pytest.mark.parametrize("seconds", [0.3, 0.55, 1.0])
def test_in_memory_stems_equal_the_reference_demix(model, seconds):
    """Long enough to pad (1 s), too short to (0.3 s: its first sample silent, as there), and a
    last chunk mirrored (0.55 s)."""
    wav = mix_of(seconds)
    assert_within_one_lsb(separate_track(Runner(model[0]), wav), reference(model, wav))


def test_pieces_join_to_the_reference(model):
    """Three pieces, each reading only its window (the first one's mirrored border included)."""
    wav = mix_of(1.5)
    stems = split.separate_in_pieces(model[0], wav, 3)
    assert_within_one_lsb(stems, reference(model, wav))
    plan = plan_separation(model[0], wav.shape[-1])
    first, *_ = split.split_plan(plan, 3)
    assert first.input_start == 0 and plan.reflect < first.input_stop < wav.shape[-1]


def test_streamed_stems_equal_the_reference(model, tmp_path):
    path = write_audio(tmp_path / "song.wav", seconds=1.0, seed=2)
    wav = torch.from_numpy(__import__("soundfile").read(path, dtype="float32")[0].T.copy())
    with streaming.separate_file(model[0], path, tmp_path, block_frames=4096) as streamed:
        stems = [stem.load() for stem in streamed.stems.values()]
    assert_within_one_lsb(stems, reference(model, wav))


def test_batched_tracks_equal_the_reference_and_share_passes(model):
    tracks = {"a": mix_of(1.0, seed=3), "b": mix_of(0.5, seed=4)}
    batcher = BatchedSeparator(model[0], batch_size=4)
    results = batcher.separate(tracks)
    for key, wav in tracks.items():
        assert_within_one_lsb(results[key], reference(model, wav))
    segments = sum(len(plan_separation(model[0], w.shape[-1]).segments) for w in tracks.values())
    assert batcher.forward_passes < segments


def test_a_pass_out_of_memory_steps_back_and_the_stems_stay_right(model):
    batcher = BatchedSeparator(model[0], batch_size=8)
    sizes = fit_passes_of(batcher, 2)
    wav = mix_of(1.0)
    assert_within_one_lsb(batcher.separate({"a": wav})["a"], reference(model, wav))
    chunks = len(plan_separation(model[0], wav.shape[-1]).segments)
    assert sizes[0] == chunks > 2 and batcher.batch_size <= 2
    assert max(sizes[sizes.index(batcher.batch_size):]) <= 2


def test_progress_counts_every_chunk(model):
    wav, seen = mix_of(1.0), []
    separate_track(Runner(model[0]), wav, callback=seen.append)
    chunks = len(plan_separation(model[0], wav.shape[-1]).segments)
    assert [info["state"] for info in seen] == ["start", "end"] * chunks
    assert {info["segments"] for info in seen} == {chunks}


def test_bf16_stays_close_to_fp32(model):
    wav = mix_of(1.0)
    fp32 = torch.stack(list(separate_track(Runner(model[0]), wav).values()))
    bf16 = torch.stack(list(separate_track(Runner(model[0], precision="bf16"), wav).values()))
    snr_db = 10 * torch.log10(fp32.pow(2).sum() / (fp32 - bf16).pow(2).sum()).item()
    print(f"{model[0].config.architecture} bf16 SNR against fp32: {snr_db:.1f} dB")
    assert snr_db > 20


def test_options_a_roformer_cannot_run_are_refused(model):
    engine_model = model[0]
    limit = engine_model.config.chunk_size / 44100
    with pytest.raises(InvalidInput, match="longer than this model allows"):
        check_options(engine_model, SeparationConfig(model="m", segment=limit + 1))
    with pytest.raises(InvalidInput, match="shifts are Demucs's"):
        check_options(engine_model, SeparationConfig(model="m", shifts=2))
    check_options(engine_model, SeparationConfig(model="m", segment=limit / 2))


def test_two_stems_of_a_one_stem_model_is_refused(tmp_path):
    one = roformer(tmp_path, "mel_band_roformer", num_stems=1,
                   training={"instruments": ["vocals", "other"], "target_instrument": "vocals"})[0]
    assert one.sources == ("vocals",)
    with pytest.raises(InvalidInput, match="makes one stem"):
        check_options(one, SeparationConfig(model="m", two_stems="vocals"))
    assert list(separate_track(Runner(one), mix_of(0.5))) == ["vocals"]


def test_the_out_of_memory_retry_runs_half_chunks(model):
    """The scheduler retries an attempt that ran out of memory with half its segment: for a
    RoFormer, chunks of half the checkpoint's length, at its overlap."""
    engine_model, wav = model[0], mix_of(1.0)
    half = engine_model.default_segment_s() / 2
    plan = plan_separation(engine_model, wav.shape[-1], segment=half)
    chunk = engine_model.config.chunk_size // 2
    assert {s.input_length for s in plan.segments} == {chunk}
    assert plan.passes[0].stride == chunk // engine_model.config.num_overlap
    stems = separate_track(Runner(engine_model), wav, segment=half)
    assert all(stem.shape == wav.shape and stem.isfinite().all() for stem in stems.values())
