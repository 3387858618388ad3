"""Long tracks: pieces across workers and streaming equal `apply_model`'s plain path."""
from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
import torch
from demucs.apply import BagOfModels, apply_model
from demucs.audio import save_audio
from demucs.htdemucs import HTDemucs
from demucs.pretrained import SOURCES, get_model

from raydemucs.separation import decode as decoding
from raydemucs.separation import encode, engine
from raydemucs.separation import split as pc
from raydemucs.separation import streaming as st
from raydemucs.separation.decode import decode

from support import make_signal, write_audio

RATE = 44100
TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_htdemucs(seed: int = 0) -> HTDemucs:
    """A small random HTDemucs; a 1 s training segment keeps each forward pass short."""
    torch.manual_seed(seed)
    return HTDemucs(sources=SOURCES, channels=8, t_layers=1, segment=1)


def unittest_model():
    torch.manual_seed(0)
    return get_model("demucs_unittest")




@pytest.fixture(scope="module")
def tiny():
    return tiny_htdemucs()


@pytest.fixture(scope="module")
def hdemucs():
    return unittest_model()


@pytest.fixture(scope="module")
def mix():
    return torch.from_numpy(make_signal(2.5, seed=3).T.copy())


def plain(model, wav, **options) -> torch.Tensor:
    """What `Separator.separate_tensor` computes, stacked: `[sources, channels, time]`."""
    mean, std = engine.track_stats(wav)
    return (apply_model(model, ((wav - mean) / std)[None], split=True, **options) * std + mean)[0]


def assert_equivalent(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOL
    lsb = ((out.clamp(-1, 1) * 32767).round() - (ref.clamp(-1, 1) * 32767).round()).abs()
    assert lsb.max().item() <= 1


def fixed_shifts(monkeypatch, offsets):
    """Make `apply_model` draw these shift offsets, in order."""
    draws = iter(offsets)
    monkeypatch.setattr(random, "randint", lambda a, b: next(draws))


# -- the plan -------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"segment": 0.5}, {"overlap": 0.6}])
def test_plan_lists_the_segments_apply_model_runs(tiny, mix, options):
    seen = []
    mean, std = engine.track_stats(mix)
    apply_model(tiny, ((mix - mean) / std)[None], shifts=0, split=True,
                callback=lambda d: d["state"] == "end" and seen.append(d["segment_offset"]),
                **options)
    plan = engine.plan_separation(tiny, mix.shape[-1], **options)
    assert sorted(s.offset for s in plan.segments) == sorted(seen)


def test_pieces_partition_the_segments_and_read_only_their_window(tiny, mix):
    plan = engine.plan_separation(tiny, mix.shape[-1])
    pieces = pc.split_plan(plan, 3)
    assert [s for p in pieces for s in p.segments] == list(plan.segments)
    for piece in pieces:
        assert all(piece.input_start <= max(0, s.input_start) for s in piece.segments)
        assert all(min(plan.length, s.input_end) <= piece.input_stop for s in piece.segments)
    assert pieces[0].input_stop < plan.length and pieces[-1].input_start > 0
    assert len(pc.split_plan(plan, 100)) == len(plan.segments)


# -- pieces: one track across workers -------------------------------------------------------------
@pytest.mark.parametrize("pieces", [1, 2, 3])
@pytest.mark.parametrize("which", ["htdemucs", "demucs_unittest"])
def test_pieces_join_to_the_plain_result(tiny, hdemucs, mix, which, pieces):
    model, options = (tiny, {}) if which == "htdemucs" else (hdemucs, {"segment": 0.8})
    ref = plain(model, mix, shifts=0, **options)
    assert_equivalent(pc.separate_in_pieces(model, mix, pieces, **options), ref)


@pytest.mark.parametrize("options", [{"segment": 0.5}, {"overlap": 0.6}])
def test_pieces_with_other_segment_and_overlap(tiny, mix, options):
    assert_equivalent(pc.separate_in_pieces(tiny, mix, 3, **options), plain(tiny, mix, shifts=0,
                                                                              **options))


def test_pieces_with_shifts_use_the_drawn_offsets(tiny, mix, monkeypatch):
    fixed_shifts(monkeypatch, [12000, 300])
    ref = plain(tiny, mix, shifts=2)
    out = pc.separate_in_pieces(tiny, mix, 3, shifts=2, shift_offsets=[[12000, 300]])
    assert_equivalent(out, ref)


def test_pieces_of_a_bag_of_models(mix, monkeypatch):
    bag = BagOfModels([tiny_htdemucs(0), tiny_htdemucs(1)], weights=[[1, 2, 1, 1], [1, 1, 3, 1]])
    assert_equivalent(pc.separate_in_pieces(bag, mix, 2), plain(bag, mix, shifts=0))
    fixed_shifts(monkeypatch, [5000, 20000])
    ref = plain(bag, mix, shifts=1)
    assert_equivalent(pc.separate_in_pieces(bag, mix, 3, shifts=1, shift_offsets=[[5000], [20000]]),
                      ref)


def test_a_missing_piece_is_refused(tiny, mix):
    mean, std = engine.track_stats(mix)
    plan = engine.plan_separation(tiny, mix.shape[-1])
    pieces = pc.split_plan(plan, 2)
    results = [pc.separate_piece(tiny, plan, pieces[0], mix, 0, mean, std)]
    with pytest.raises(ValueError, match="missing"):
        pc.join_pieces(plan, results, mean, std)


def test_a_piece_decodes_only_its_window_from_the_file(tiny, tmp_path):
    path = tmp_path / "song.wav"
    sf.write(path, make_signal(3.0, seed=4), RATE, subtype="PCM_16")
    wav = decode(path, RATE, 2)
    mean, std = engine.track_stats(wav)
    plan = engine.plan_separation(tiny, wav.shape[-1])
    results = [pc.separate_piece_file(tiny, plan, piece, path, mean, std)
               for piece in pc.split_plan(plan, 2)]
    assert_equivalent(pc.join_pieces(plan, results, mean, std), plain(tiny, wav, shifts=0))


# -- decoding in windows --------------------------------------------------------------------------
def write_input(path, seconds=2.5, rate=RATE, channels=2):
    return write_audio(path, seconds, rate, channels, seed=5)


@pytest.mark.parametrize("name, rate, channels", [
    ("a.wav", RATE, 2), ("b.wav", 48000, 2), ("c.flac", RATE, 1), ("d.mp3", RATE, 2),
    ("e.wav", 44056, 2)])   # a rate only FFmpeg converts cheaply
def test_windows_decode_the_samples_of_a_whole_decode(tmp_path, monkeypatch, name, rate, channels):
    monkeypatch.setattr(decoding, "SPHN_WINDOW_S", 1)
    path = write_input(tmp_path / name, rate=rate, channels=channels)
    whole = decode(path, RATE, 2)
    blocks = list(decoding.iter_audio(path, RATE, 2))
    assert len(blocks) > 1
    assert torch.equal(torch.cat(blocks, -1), whole)
    mean, std, length = decoding.stream_stats(path, RATE, 2)
    assert length == whole.shape[-1]
    ref_mean, ref_std = engine.track_stats(whole)
    assert abs(mean - ref_mean) < 1e-6 and abs(std - ref_std) < 1e-6 * ref_std
    window = decoding.read_window(path, 30000, 70000, RATE, 2)
    assert torch.equal(window, whole[:, 30000:70000])


# -- streaming: bounded memory --------------------------------------------------------------------
@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "song.wav"
    sf.write(path, make_signal(4.0, seed=6), RATE, subtype="PCM_16")
    return path


@pytest.mark.parametrize("which", ["htdemucs", "demucs_unittest"])
def test_streamed_stems_equal_the_plain_ones(tiny, hdemucs, song, tmp_path, which):
    model, options = (tiny, {}) if which == "htdemucs" else (hdemucs, {"segment": 0.8})
    ref = plain(model, decode(song, RATE, 2), shifts=0, **options)
    with st.separate_file(model, song, tmp_path, block_frames=5000, **options) as result:
        out = torch.stack([result.stems[name].load() for name in SOURCES])
        assert_equivalent(out, ref)
        assert result.length == ref.shape[-1]
        assert result.stems["drums"].peak == pytest.approx(ref[0].abs().max().item(), abs=TOL)
        folder = result.folder
    assert not folder.exists()


def test_streaming_with_shifts_and_two_stems(tiny, song, tmp_path, monkeypatch):
    fixed_shifts(monkeypatch, [7000])
    ref = plain(tiny, decode(song, RATE, 2), shifts=1)
    with st.separate_file(tiny, song, tmp_path, shifts=1, shift_offsets=[[7000]],
                          two_stems="vocals") as result:
        assert sorted(result.stems) == ["no_vocals", "vocals"]
        assert_equivalent(result.stems["vocals"].load(), ref[3])
        assert_equivalent(result.stems["no_vocals"].load(), ref[0] + ref[1] + ref[2])


def test_streaming_keeps_a_few_segments_in_memory(tiny, tmp_path, monkeypatch):
    """Buffers stay near a segment's length however long the track (8 s, 1 s segments here)."""
    path = tmp_path / "long.wav"
    sf.write(path, make_signal(8.0, seed=7), RATE, subtype="PCM_16")
    sizes = []
    real_take, real_release = st._InputBuffer.take, engine.OverlapAdd.release

    def take(self, start, length):
        sizes.append(self.data.shape[-1])
        return real_take(self, start, length)

    def release(self, upto):
        sizes.append(self.weight.shape[-1])
        return real_release(self, upto)

    monkeypatch.setattr(st._InputBuffer, "take", take)
    monkeypatch.setattr(engine.OverlapAdd, "release", release)
    monkeypatch.setattr(decoding, "SPHN_WINDOW_S", 1)
    with st.separate_file(tiny, path, tmp_path, block_frames=1000) as result:
        assert result.length == 8 * RATE
    assert max(sizes) <= 3 * RATE


def test_an_aborted_stream_leaves_no_temp_files(tiny, song, tmp_path):
    def abort(info):
        if info["state"] == "end":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        st.separate_file(tiny, song, tmp_path, callback=abort)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix, kwargs", [
    (".wav", {}), (".wav", {"bits_per_sample": 24}), (".wav", {"as_float": True}),
    (".mp3", {"bitrate": 128}), (".flac", {}), (".flac", {"bits_per_sample": 24})])
@pytest.mark.parametrize("clip", ["rescale", "clamp", "none"])
def test_streamed_files_hold_the_bytes_demucs_writes(tiny, song, tmp_path, suffix, kwargs, clip):
    """`save_streamed` == `save_audio`, byte for byte, given the same samples (FLAC: == the
    whole tensor's FLAC, as `save_audio`'s needs the ffmpeg program; see test_outputs_audio)."""
    save_audio_file = encode.save_any if suffix == ".flac" else save_audio
    with st.separate_file(tiny, song, tmp_path / "work", block_frames=7000) as result:
        stem = result.stems["bass"]
        wav = stem.load() * (1.2 / stem.peak)      # over full scale: every clip mode acts
        stem.path.write_bytes(wav.t().contiguous().numpy().astype("<f4").tobytes())
        stem.peak = wav.abs().max().item()
        save_audio_file(wav.clone(), tmp_path / f"plain{suffix}", RATE, clip=clip, **kwargs)
        encode.save_any(stem, tmp_path / f"streamed{suffix}", RATE, clip=clip, **kwargs)
    plain_bytes = (tmp_path / f"plain{suffix}").read_bytes()
    assert plain_bytes == (tmp_path / f"streamed{suffix}").read_bytes()


def test_streamed_int16_wav_is_within_one_lsb_of_the_plain_file(tiny, song, tmp_path):
    ref = plain(tiny, decode(song, RATE, 2), shifts=0)
    save_audio(ref[2].clone(), tmp_path / "plain.wav", RATE)
    with st.separate_file(tiny, song, tmp_path / "work") as result:
        encode.save_streamed(result.stems["other"], tmp_path / "streamed.wav", RATE)
    a, _ = sf.read(tmp_path / "plain.wav", dtype="int16")
    b, _ = sf.read(tmp_path / "streamed.wav", dtype="int16")
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_formats_sphn_cannot_seek_are_decoded_by_ffmpeg(tmp_path):
    """Ogg: sphn's seeks are not sample-exact, so windows come from FFmpeg (demucs's fallback)."""
    import av

    path = write_input(tmp_path / "a.ogg")
    with av.open(str(path)) as container:
        whole = torch.from_numpy(np.concatenate(
            [frame.to_ndarray() for frame in container.decode(audio=0)], -1))
    blocks = list(decoding.iter_audio(path, RATE, 2))
    assert len(blocks) > 1
    assert torch.equal(torch.cat(blocks, -1), whole)
    assert torch.equal(decoding.read_window(path, 30000, 70000, RATE, 2), whole[:, 30000:70000])
