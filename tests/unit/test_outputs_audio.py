"""Atomic stem writing, output folder safety, input checks and decoding."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from raydemucs.audio.checks import check_input_file, validate_input
from raydemucs.core.config import InputConfig
from raydemucs.core.errors import InvalidInput, OutputNotWritable, OutputWriteFailed
from raydemucs.separation.decode import decode
from raydemucs.separation.encode import save_any
from raydemucs.storage.folders import LocalFolder, check_writable, task_folder, write_outputs

from support import make_signal


def _save_bytes(data, path):
    path.write_bytes(data)


def test_outputs_are_written_whole_with_a_manifest(tmp_path):
    folder = tmp_path / "out" / "p" / "f"
    outputs = write_outputs(LocalFolder(folder), {"drums": b"d", "bass": b"bb"}, "bin", _save_bytes, {"task_id": "t1"})
    assert outputs == {"drums": str(folder / "drums.bin"), "bass": str(folder / "bass.bin")}
    manifest = LocalFolder(folder).manifest()
    assert manifest["stems"]["bass"]["bytes"] == 2 and len(manifest["stems"]["bass"]["sha256"]) == 64
    assert LocalFolder(folder).complete("t1") and not LocalFolder(folder).complete("t2")
    assert sorted(os.listdir(folder.parent)) == ["f"]


def test_a_failed_write_leaves_no_folder_and_keeps_the_old_one(tmp_path):
    folder = tmp_path / "p" / "f"
    write_outputs(LocalFolder(folder), {"drums": b"old"}, "bin", _save_bytes, {"task_id": "t"})

    def failing(data, path):
        if data == b"boom":
            raise OSError(28, "No space left on device")
        path.write_bytes(data)

    with pytest.raises(OutputWriteFailed, match="No space left"):
        write_outputs(LocalFolder(folder), {"drums": b"new", "bass": b"boom"}, "bin", failing, {"task_id": "t"})
    assert (folder / "drums.bin").read_bytes() == b"old"
    assert sorted(os.listdir(folder.parent)) == ["f"]


def test_a_rerun_replaces_the_folder(tmp_path):
    folder = tmp_path / "p" / "f"
    write_outputs(LocalFolder(folder), {"drums": b"1", "bass": b"1"}, "bin", _save_bytes, {"task_id": "t"})
    write_outputs(LocalFolder(folder), {"vocals": b"2"}, "bin", _save_bytes, {"task_id": "t"})
    assert sorted(os.listdir(folder)) == ["manifest.json", "vocals.bin"]
    assert sorted(os.listdir(folder.parent)) == ["f"]


def test_stale_staging_folders_are_removed_by_the_next_write(tmp_path):
    folder = tmp_path / "p" / "f"
    (tmp_path / "p" / ".f.deadbeef.tmp").mkdir(parents=True)
    write_outputs(LocalFolder(folder), {"drums": b"1"}, "bin", _save_bytes, {"task_id": "t"})
    assert sorted(os.listdir(folder.parent)) == ["f"]


def test_incomplete_outputs_are_detected(tmp_path):
    folder = tmp_path / "p" / "f"
    write_outputs(LocalFolder(folder), {"drums": b"123"}, "bin", _save_bytes, {"task_id": "t"})
    (folder / "drums.bin").write_bytes(b"1")
    assert not LocalFolder(folder).complete()
    (folder / "manifest.json").write_text("{not json")
    assert not LocalFolder(folder).complete()
    assert not LocalFolder(tmp_path / "missing").complete()


def test_output_folders_never_go_through_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "proj").symlink_to(outside)
    with pytest.raises(OutputNotWritable, match="symlink"):
        task_folder(root, "proj", "song")
    assert task_folder(root, "My Project", "song").path == root / "My Project" / "song"


def test_unwritable_output_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:
            with pytest.raises(OutputNotWritable):
                check_writable(locked / "new")
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("x")
        with pytest.raises(OutputNotWritable, match="not a directory"):
            check_writable(not_a_dir / "sub")
        check_writable(tmp_path / "fresh" / "deeper")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac", ".ogg", ".m4a"])
def test_inputs_of_each_format_decode_at_the_model_rate(audio, suffix, tmp_path, monkeypatch):
    """sphn reads wav, mp3, flac and ogg; FFmpeg (PyAV) the rest: no ffmpeg program needed."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    path = audio(f"clip{suffix}", seconds=2.0, samplerate=22050, channels=1)
    assert 1.9 < validate_input(path, InputConfig()) < 2.2
    wav = decode(path, 44100, 2)
    assert wav.shape[0] == 2 and abs(wav.shape[1] - 88200) < 4410  # mp3, aac: padded frames
    assert wav.dtype.is_floating_point


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_a_wavs_duration_comes_from_its_header_as_sphn_reads_it(subtype, tmp_path):
    import sphn

    path = tmp_path / f"{subtype}.wav"
    sf.write(path, np.full((12345, 2), 0.1), 44100, subtype=subtype)
    assert validate_input(path, InputConfig()) == sphn.durations([str(path)])[0] == 12345 / 44100
    cut = tmp_path / "cut.wav"  # its header claims more samples than it holds: sphn answers
    cut.write_bytes(path.read_bytes()[:-4001])
    assert validate_input(cut, InputConfig()) == sphn.durations([str(cut)])[0]


def test_input_checks(tmp_path, audio):
    with pytest.raises(InvalidInput, match="does not exist"):
        check_input_file(tmp_path / "nope.wav", 100)
    with pytest.raises(InvalidInput, match="directory"):
        check_input_file(tmp_path, 100)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty"):
        check_input_file(empty, 100)
    big = audio("big.wav", seconds=2.0)
    with pytest.raises(InvalidInput, match="over the 0.1 MB limit"):
        check_input_file(big, 0.1)
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 100)
    with pytest.raises(InvalidInput, match="not a decodable audio file"):
        validate_input(text, InputConfig())
    with pytest.raises(InvalidInput, match="over the 1 s limit"):
        validate_input(big, InputConfig(max_duration_s=1.0))
    with pytest.raises(InvalidInput, match="shorter than"):
        validate_input(audio("short.wav", seconds=0.05), InputConfig())


def test_nan_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    data = np.zeros((44100, 2), dtype=np.float32)
    data[100, 0] = np.nan
    sf.write(path, data, 44100, subtype="FLOAT")
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        decode(path, 44100, 2)


# The ffmpeg command demucs's `save_audio` runs for flac (`-f s16le|s32le -ar R -ac C -i - OUT`),
# with FFmpeg's own flac encoder through PyAV, so that no ffmpeg program is needed.
FFMPEG_FLAC = """
import sys, av, numpy as np
args = sys.argv[1:]
fmt, rate, channels = (args[args.index(flag) + 1] for flag in ("-f", "-ar", "-ac"))
sample_format, dtype = {"s16le": ("s16", "<i2"), "s32le": ("s32", "<i4")}[fmt]
layout = {"1": "mono", "2": "stereo"}[channels]
samples = np.frombuffer(sys.stdin.buffer.read(), dtype).reshape(1, -1)
with av.open(args[-1], "w") as container:
    stream = container.add_stream("flac", rate=int(rate), layout=layout)
    stream.format = sample_format
    frame = av.AudioFrame.from_ndarray(samples, format=sample_format, layout=layout)
    frame.sample_rate = int(rate)
    for packet in [*stream.encode(frame), *stream.encode(None)]:
        container.mux(packet)
"""


@pytest.mark.parametrize("bits", [16, 24])
def test_flac_stems_decode_to_the_samples_ffmpeg_wrote(tmp_path, monkeypatch, bits):
    """soundfile's flac, written with no ffmpeg program, == the flac demucs has ffmpeg write."""
    from demucs.audio import save_audio

    wav = torch.from_numpy(make_signal(1.0, seed=2).T.copy()) * 2.5   # over full scale: rescaled
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    save_any(wav.clone(), tmp_path / "ours.flac", 44100, bits_per_sample=bits)
    tool = tmp_path / "bin" / "ffmpeg"
    tool.parent.mkdir()
    tool.write_text(f"#!{sys.executable}\n{FFMPEG_FLAC}")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tool.parent))
    save_audio(wav.clone(), tmp_path / "ffmpeg.flac", 44100, bits_per_sample=bits)
    ours, theirs = (sf.read(tmp_path / name, dtype="int32")[0] for name in ("ours.flac",
                                                                           "ffmpeg.flac"))
    assert sf.info(tmp_path / "ours.flac").subtype == f"PCM_{bits}"
    assert ours.shape == (44100, 2) and np.array_equal(ours, theirs)
