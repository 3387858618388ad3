"""Bad input and safety: a corpus of wrong files, names, outputs, models and settings, made here.

Each bad case is refused on the client (typed error, one line, nothing queued, nothing written)
and again by a worker that gets it anyway; odd but valid inputs separate; a service that was fed
the corpus loses no task and still separates a good file.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from raydemucs import WorkerManager
from raydemucs.audio.checks import validate_input
from raydemucs.core.config import InputConfig, SeparationConfig, load_config
from raydemucs.core.errors import (
    ConfigError,
    InputTooLarge,
    InvalidInput,
    InvalidName,
    ModelNotFound,
    OutputNotWritable,
)
from raydemucs.core.task import TaskSpec, new_task_id
from raydemucs.separation.decode import decode
from raydemucs.storage.folders import task_folder, write_outputs
from raydemucs.worker.actor import SeparatorWorker

from support import make_signal, run_cli, save_tiny_htdemucs, service_config, write_audio

STEMS = ["bass", "drums", "other", "vocals"]


# -- generated inputs ---------------------------------------------------------------------------
def riff_wav(samples: bytes, channels: int = 2, rate: int = 44100, bits: int = 16, tag: int = 1,
             data_bytes: int | None = None) -> bytes:
    """A canonical WAV whose header says what we choose, true or not (both sizes lie alike)."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    size = len(samples) if data_bytes is None else data_bytes
    head = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size)
    return b"RIFF" + struct.pack("<I", len(head) + size) + head + samples


def pcm16(seconds: float, channels: int = 2) -> bytes:
    return (make_signal(seconds, channels=channels) * 32767).astype("<i2").tobytes()


def put(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def float_wav(folder: Path, name: str, value: float, at: int = 100, subtype: str = "FLOAT") -> Path:
    data = make_signal(1.0).astype(np.float64)
    data[at, 0] = value
    sf.write(folder / name, data, 44100, subtype=subtype)
    return folder / name


def sparse_wav(folder: Path, name: str, size: int, **header) -> Path:
    """A WAV header followed by `size` bytes of holes: large on paper, nothing on disk."""
    path = put(folder, name, riff_wav(b"", data_bytes=size, **header))
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size + size)
    return path


def subfolder(folder: Path, name: str) -> Path:
    (folder / name).mkdir()
    return folder / name


def symlink(folder: Path, name: str, target: str) -> Path:
    (folder / name).symlink_to(target)
    return folder / name


def fifo(folder: Path, name: str) -> Path:
    os.mkfifo(folder / name)
    return folder / name


def video(folder: Path, name: str, codec: str, frames: int, pix_fmt: str, **options) -> Path:
    """Black 32x32 frames encoded by FFmpeg (PyAV), and no audio."""
    import av

    with av.open(str(folder / name), "w", **options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = pix_fmt
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return folder / name


BAD_FILES = {
    "missing": (lambda d: d / "missing.wav", "does not exist"),
    "empty": (lambda d: put(d, "empty.wav", b""), "is empty"),
    "directory": (lambda d: subfolder(d, "folder.wav"), "is a directory"),
    "fifo": (lambda d: fifo(d, "pipe.wav"), "not a regular file"),
    "device": (lambda d: symlink(d, "zero.wav", "/dev/zero"), "not a regular file"),
    "symlink_to_passwd": (lambda d: symlink(d, "passwd.wav", "/etc/passwd"),
                          "not a decodable audio file"),
    "nul_in_path": (lambda d: Path(f"{d}/a\x00b.wav"), "holds a NUL character"),
    "text": (lambda d: put(d, "notes.wav", b"just some text\n" * 50), "not a decodable audio file"),
    "random_bytes_mp3": (lambda d: put(d, "noise.mp3", np.random.default_rng(4).bytes(8000)),
                         "not a decodable audio file"),
    "truncated_header": (lambda d: put(d, "cut.wav", riff_wav(pcm16(1.0))[:20]),
                         "not a decodable audio file"),
    "lying_length_no_data": (lambda d: put(d, "hollow.wav", riff_wav(b"", data_bytes=176400)),
                             "holds no audio samples"),
    "lying_length_10ms": (lambda d: put(d, "tiny.wav", riff_wav(pcm16(0.01), data_bytes=176400)),
                          "holds 0.010 s of audio, shorter than the 0.1 s minimum"),
    "zero_samples": (lambda d: put(d, "zero.wav", riff_wav(b"")), "lasts 0.000 s, shorter"),
    "one_sample": (lambda d: put(d, "one.wav", riff_wav(pcm16(1 / 44100))), "lasts 0.000 s, shorter"),
    "shorter_than_minimum": (lambda d: write_audio(d / "short.wav", seconds=0.05),
                             "lasts 0.050 s, shorter than the 0.1 s minimum"),
    "nan_float32": (lambda d: float_wav(d, "nan.wav", np.nan), "NaN or infinite samples"),
    "inf_float32": (lambda d: float_wav(d, "inf.wav", np.inf), "NaN or infinite samples"),
    "minus_inf_float64": (lambda d: float_wav(d, "ninf.wav", -np.inf, subtype="DOUBLE"),
                          "NaN or infinite samples"),
    "nan_in_last_sample": (lambda d: float_wav(d, "late.wav", np.nan, at=-1),
                           "NaN or infinite samples"),
    "zero_hz": (lambda d: put(d, "0hz.wav", riff_wav(pcm16(1.0), rate=0)), "at 0 Hz"),
    "zero_channels": (lambda d: put(d, "0ch.wav", riff_wav(pcm16(1.0), channels=0)),
                      "declaring 0 channel(s)"),
    "unknown_wav_codec": (lambda d: put(d, "codec.wav", riff_wav(pcm16(1.0), tag=99)),
                          "could not be decoded as audio"),
    "over_size_limit": (lambda d: sparse_wav(d, "huge.wav", 101 * 2**20),
                        "over the 100 MB limit (input.max_file_mb)"),
    "over_duration_limit": (lambda d: sparse_wav(d, "dj-set.wav", 8000 * 10860, channels=1,
                                                 rate=8000, bits=8),
                            "lasts 10860 s, over the 10800 s limit (input.max_duration_s)"),
    "video_without_audio": (lambda d: video(d, "clip.mp4", "mpeg4", 25, "yuv420p"),
                            "holds no audio stream"),
    "image": (lambda d: video(d, "cover.png", "png", 1, "rgb24", format="image2"),
              "holds no audio stream"),
}

GOOD_FILES = {
    "8_channels": lambda d: write_audio(d / "surround.wav", seconds=1.0, channels=8),
    "8khz_mono": lambda d: write_audio(d / "phone.wav", seconds=1.0, samplerate=8000, channels=1),
    "192khz": lambda d: write_audio(d / "hires.flac", seconds=1.0, samplerate=192000),
    "mono": lambda d: write_audio(d / "mono.mp3", seconds=1.0, channels=1),
    "silence": lambda d: put(d, "silence.wav", riff_wav(bytes(44100 * 4))),
    "float_wav": lambda d: float_wav(d, "float.wav", 0.25),
    "lying_length_with_data": lambda d: put(d, "cut-short.wav",
                                            riff_wav(pcm16(1.0), data_bytes=10 * 176400)),
    "exactly_the_minimum": lambda d: write_audio(d / "blip.wav", seconds=0.1),
    "44056hz": lambda d: write_audio(d / "ntsc.wav", seconds=1.0, samplerate=44056),
}


def _rewrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)


REPO_DAMAGE = {
    "garbage_checkpoint": lambda repo: _rewrite(repo / "tinysig.th", b"\x00garbage" * 512),
    "empty_checkpoint": lambda repo: _rewrite(repo / "tinysig.th", b""),
    "truncated_checkpoint": lambda repo: _rewrite(repo / "tinysig.th",
                                                  (repo / "tinysig.th").read_bytes()[:4096]),
    "missing_checkpoint": lambda repo: (repo / "tinysig.th").unlink(),
    "bag_not_a_mapping": lambda repo: (repo / "tiny.yaml").write_text("- tinysig\n"),
    "bag_not_yaml": lambda repo: (repo / "tiny.yaml").write_text("models: [tinysig\n"),
    "bag_names_no_list": lambda repo: (repo / "tiny.yaml").write_text("models: 5\n"),
}


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    """One service for the module: one worker, one retry, the offline model."""
    manager = WorkerManager(service_config(tmp_path_factory.mktemp("service"),
                                           workers={"max_workers": 1},
                                           tasks={"max_retries": 1}))
    manager.scheduler(create=True)
    yield manager
    manager.shutdown(now=True)


@pytest.fixture(scope="module")
def worker():
    """A worker without Ray, as the pool would build it."""
    config = load_config("test", overrides={"separation": {"model": "demucs_unittest"}}, environ={})
    return SeparatorWorker("worker-bad", config.to_dict())


@pytest.fixture
def place(tmp_path):
    """A fresh folder holding only `inputs/`, for generated files; outputs go to `out/`."""
    (tmp_path / "inputs").mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Model folders: a good one, and one broken in each way a user's folder can be."""
    root = tmp_path_factory.mktemp("repos")
    good = save_tiny_htdemucs(root / "good")
    broken = {}
    for name, damage in REPO_DAMAGE.items():
        repo = shutil.copytree(good, root / name)
        damage(repo)
        broken[name] = repo
    return good, broken


def spec_for(input_path, out, project="p", file_id="song", **options) -> TaskSpec:
    """A spec as a client would build it, without the client's checks."""
    return TaskSpec(task_id=new_task_id(), project=project, file_id=file_id,
                    input_path=str(input_path), output_dir=str(out),
                    options=SeparationConfig(**{"model": "demucs_unittest", "shifts": 0, **options}))


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_line(error: BaseException | str, fragment: str) -> None:
    message = str(error)
    assert fragment in message and "\n" not in message and "\r" not in message, message


# -- bad files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_refused_by_the_client_and_by_a_worker(case, service, worker, place):
    build, fragment = BAD_FILES[case]
    path = build(place / "inputs")
    before = tree(place)
    with pytest.raises(InvalidInput) as refused:
        service.prepare_task(path, file_id="song", output_dir=place / "out")
    kind = InputTooLarge if case == "over_size_limit" else InvalidInput
    assert type(refused.value) is kind
    assert_one_line(refused.value, fragment)
    result = worker.separate(spec_for(path, place / "out").to_dict(), attempt=1)
    assert not result["ok"] and result["error"]["type"] == kind.__name__, result
    assert_one_line(result["error"]["message"], fragment)
    assert tree(place) == before


@pytest.mark.parametrize("case", ["random_bytes_mp3", "lying_length_no_data", "nan_float32"])
def test_decode_refuses_what_validation_refuses(case, place):
    build, _ = BAD_FILES[case]
    with pytest.raises(InvalidInput) as refused:
        decode(build(place / "inputs"), 44100, 2)
    assert "\n" not in str(refused.value)


# -- odd but valid files ------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(GOOD_FILES))
def test_odd_but_valid_inputs_separate(case, service, worker, place):
    path = GOOD_FILES[case](place / "inputs")
    spec = service.prepare_task(path, output_dir=place / "out", model="demucs_unittest")
    result = worker.separate(spec.to_dict(), attempt=1)
    assert result["ok"], result
    assert sorted(result["outputs"]) == STEMS
    decoded = decode(path, 44100, 2)
    for stem in result["outputs"].values():
        data, rate = sf.read(stem)
        assert rate == 44100 and data.shape == (decoded.shape[-1], 2)
        if case == "silence":
            assert not data.any()


# -- names and output folders -------------------------------------------------------------------
ESCAPE = f"/tmp/raydemucs-escape-{uuid.uuid4().hex[:8]}"
BAD_NAMES = {
    "parent": ("../x", "holds '/'"),
    "nested": ("a/b", "holds '/'"),
    "backslash": ("a\\b", "holds '\\\\'"),
    "absolute": (ESCAPE, "holds '/'"),
    "nul": ("x\x00y", "holds '\\x00'"),
    "dot_dot": ("..", "may not start with '.'"),
    "hidden": (".config", "may not start with '.'"),
    "300_chars": ("y" * 300, "longer than 128 characters"),
    "division_slash": ("a\u2215b", "holds '\\u2215'"),
    "fullwidth_solidus": ("a\uff0fb", "holds '\\uff0f'"),
    "fraction_slash": ("a\u2044b", "holds '\\u2044'"),
    "over_240_bytes": ("\u66f2" * 100, "takes 300 bytes in UTF-8"),
    "newline": ("a\nb", "holds '\\n'"),
}


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
@pytest.mark.parametrize("field", ["project", "file id"])
def test_unsafe_names_are_refused_and_nothing_escapes(case, field, service, worker, place, audio):
    name, fragment = BAD_NAMES[case]
    song = audio("song.wav", seconds=0.5)
    names = {"project": "p", "file_id": "song", field.replace(" ", "_"): name}
    before = tree(place)
    with pytest.raises(InvalidName) as refused:
        service.prepare_task(song, names["file_id"], place / "out", names["project"])
    assert_one_line(refused.value, fragment)
    assert refused.value.args[0].startswith("project name" if field == "project" else "file id")
    result = worker.separate(spec_for(song, place / "out", **names).to_dict(), attempt=1)
    assert result["error"]["type"] == "InvalidName", result
    assert_one_line(result["error"]["message"], fragment)
    assert tree(place) == before and not Path(ESCAPE).exists()
    assert not (place / "x").exists()


def outside_symlink(place: Path) -> Path:
    (place / "elsewhere").mkdir()
    (place / "out").mkdir()
    (place / "out" / "p").symlink_to(place / "elsewhere")
    return place / "out"


BAD_OUTPUTS = {
    "parent_is_a_file": (lambda place: put(place, "file", b"x") / "out", "is not a directory"),
    "in_proc": (lambda place: Path("/proc/self"), "is not writable: "),
    "in_sys": (lambda place: Path("/sys"), "is not writable: "),
    "nul": (lambda place: Path(f"{place}/o\x00ut"), "holds a NUL character"),
    "project_symlink": (outside_symlink, "is a symlink; raydemucs never writes through one"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_an_unwritable_output_directory_is_refused_at_submit(case, service, place, audio):
    build, fragment = BAD_OUTPUTS[case]
    song = audio("song.wav", seconds=0.5)
    out = build(place)
    before = tree(place)
    with pytest.raises(OutputNotWritable) as refused:
        service.prepare_task(song, file_id="song", output_dir=out, project_name="p")
    assert_one_line(refused.value, fragment)
    assert tree(place) == before


def test_a_symlink_that_appears_during_a_task_is_not_written_through(tmp_path):
    folder = task_folder(tmp_path / "out", "p", "song")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputNotWritable, match="is a symlink"):
        write_outputs(folder, {"drums": b"x"}, "bin", lambda data, path: path.write_bytes(data), {})
    assert not any((tmp_path / "elsewhere").iterdir())


def test_an_existing_output_of_another_task_is_kept_unless_forced(worker, place, audio):
    song = audio("song.wav", seconds=0.5)
    first = worker.separate(spec_for(song, place / "out").to_dict(), 1)
    manifest = Path(first["outputs"]["vocals"]).parent / "manifest.json"
    kept = manifest.read_bytes()
    second = worker.separate(spec_for(song, place / "out").to_dict(), 1)
    assert second["error"]["type"] == "InvalidInput"
    assert_one_line(second["error"]["message"], "pass --force to replace them")
    assert manifest.read_bytes() == kept
    forced = spec_for(song, place / "out")
    forced = TaskSpec.from_dict({**forced.to_dict(), "force": True})
    assert worker.separate(forced.to_dict(), 1)["ok"]
    assert json.loads(manifest.read_text())["task_id"] == forced.task_id


# -- models -------------------------------------------------------------------------------------
BAD_MODELS = {
    "unknown_name": (None, "no_such_model", "unknown model 'no_such_model'; available: "),
    "unknown_in_repo": ("good", "nope", "unknown model 'nope' in repo"),
    "repo_is_not_a_folder": ("file", "tiny", "is not a directory"),
    "garbage_checkpoint": ("garbage_checkpoint", "tiny", "tinysig.th is not a PyTorch file"),
    "empty_checkpoint": ("empty_checkpoint", "tiny", "tinysig.th is not a PyTorch file"),
    "truncated_checkpoint": ("truncated_checkpoint", "tiny", "tinysig.th is not a PyTorch file"),
    "missing_checkpoint": ("missing_checkpoint", "tiny",
                           "bag 'tiny' in repo {repo} names checkpoint 'tinysig', but there is no "
                           "tinysig.th"),
    "bag_not_a_mapping": ("bag_not_a_mapping", "tiny", "must hold 'models:', a list"),
    "bag_not_yaml": ("bag_not_yaml", "tiny", "is not readable YAML"),
    "bag_names_no_list": ("bag_names_no_list", "tiny", "must hold 'models:', a list"),
}


def repo_for(which: str | None, repos, place: Path) -> str | None:
    good, broken = repos
    if which == "file":
        return str(put(place, "repo.txt", b"x"))
    return which and str(good if which == "good" else broken[which])


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_a_bad_model_is_refused_at_submit_and_at_worker_start(case, service, repos, place, audio):
    which, model, fragment = BAD_MODELS[case]
    repo = repo_for(which, repos, place)
    fragment = fragment.format(repo=repo)
    with pytest.raises(ModelNotFound) as refused:
        service.prepare_task(audio("song.wav", seconds=0.5), output_dir=place / "out",
                             model=model, repo=repo)
    assert_one_line(refused.value, fragment)
    config = load_config("test", overrides={"separation": {"model": model, "repo": repo}},
                         environ={})
    started = SeparatorWorker("worker-broken", config.to_dict())
    assert_one_line(started.ready()["load_error"], fragment)
    result = started.separate(spec_for(audio("song.wav", seconds=0.5), place / "out",
                                       model=model, repo=repo).to_dict(), 1)
    assert result["error"]["type"] == "ModelNotFound" and not (place / "out").exists()


def test_a_checkpoint_that_is_no_demucs_model_fails_at_load(repos, tmp_path):
    import torch

    repo = shutil.copytree(repos[0], tmp_path / "repo")
    torch.save({"weights": torch.zeros(3)}, repo / "tinysig.th")
    config = load_config("test", overrides={"separation": {"model": "tiny", "repo": str(repo)}},
                         environ={})
    assert_one_line(SeparatorWorker("worker-x", config.to_dict()).ready()["load_error"],
                    "a checkpoint is not a Demucs model (it has no 'klass' entry)")


def started_workers(manager, timeout_s: float = 120.0) -> list[dict]:
    """The service's workers once none is still starting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = manager.get_status()["workers"]
        if all(w["state"] in ("idle", "busy") for w in workers):
            return workers
        time.sleep(0.2)
    raise AssertionError(f"workers still starting after {timeout_s:g} s: {workers}")


def test_a_worker_with_a_broken_model_is_reported_not_restarted(make_service, repos, place, audio):
    repo = str(repos[1]["garbage_checkpoint"])
    manager = make_service(workers={"max_workers": 1}, separation={"model": "tiny", "repo": repo})
    [worker] = started_workers(manager)
    assert_one_line(worker["load_error"], "tinysig.th is not a PyTorch file")
    with pytest.raises(ModelNotFound, match="is not a PyTorch file"):
        manager.add_task(audio("song.wav", seconds=0.5), output_dir=place / "out")
    task_id = manager.add_task(audio("song.wav", seconds=0.5), output_dir=place / "out",
                               model="demucs_unittest", repo=None)
    assert manager.wait(task_id, timeout=120)["state"] == "succeeded"
    assert manager.get_status()["workers"][0]["restarts"] == 0


# -- settings -----------------------------------------------------------------------------------
BAD_OPTIONS = {
    "negative_shifts": ({"shifts": -1}, ConfigError, "separation.shifts=-1 is out of range [0, 100]"),
    "overlap_of_one_and_a_half": ({"overlap": 1.5}, ConfigError, "separation.overlap=1.5 is out of "
                                  "range [0.0, 0.99]"),
    "nan_segment": ({"segment": "nan"}, ConfigError, "separation.segment=nan is not a valid float"),
    "unknown_format": ({"format": "ogg"}, ConfigError,
                       "separation.format='ogg'; allowed: wav, mp3, flac"),
    "word_bitrate": ({"mp3_bitrate": "loud"}, ConfigError, "separation.mp3_bitrate='loud' is not a "
                     "valid int"),
    "unknown_option": ({"bogus": 1}, ConfigError, "unknown key 'separation.bogus'"),
    "negative_timeout": ({"timeout_s": -1}, ConfigError, "tasks.timeout_s=-1.0 is out of range"),
    "unknown_priority": ({"priority": "urgent"}, InvalidInput, "priority 'urgent' must be high, "
                         "normal, low or 0-9"),
    "cuda_on_cpu_workers": ({"device": "cuda"}, InvalidInput, "whose workers use cpu, not cuda"),
    "fp16_on_cpu_workers": ({"precision": "fp16"}, InvalidInput, "precision fp16 needs a GPU"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_an_invalid_option_names_the_key_and_the_range(case, service, place, audio):
    options, error, fragment = BAD_OPTIONS[case]
    with pytest.raises(error) as refused:
        service.prepare_task(audio("song.wav", seconds=0.5), output_dir=place / "out", **options)
    assert_one_line(refused.value, fragment)
    assert not any((place / "out").rglob("*"))


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_an_invalid_option_refuses_a_whole_batch_before_anything_is_queued(case, service, place,
                                                                         audio):
    options, error, fragment = BAD_OPTIONS[case]
    songs = [audio(f"batch-{number}.wav", seconds=0.5) for number in range(3)]
    before = len(service.list_tasks(limit=1000))
    with pytest.raises(error) as refused:
        service.submit_batch(songs, project_name="refused", output_dir=place / "out", **options)
    assert_one_line(refused.value, fragment)
    assert len(service.list_tasks(limit=1000)) == before
    assert not any((place / "out").rglob("*"))


@pytest.mark.parametrize("text, fragment", [
    ("input:\n  max_file_mb: 0\n", "input.max_file_mb=0.0 is out of range [0.001, 1048576]"),
    ("workers: {max_workers: many}\n", "workers.max_workers='many' is not a valid int"),
    ("input: {max_duration_s: .inf}\n", "input.max_duration_s=inf is not a valid float"),
    ("service: [1, 2]\n", "section 'service' must be a mapping"),
    ("separation: {model: !!python/object/apply:os.system [touch {marker}]}\n", "not valid YAML"),
])
def test_an_invalid_config_file_names_the_key(tmp_path, text, fragment):
    marker = tmp_path / "pwned"
    config_file = put(tmp_path, "bad.yaml", text.replace("{marker}", str(marker)).encode())
    with pytest.raises(ConfigError) as refused:
        load_config(config_file=config_file, environ={})
    assert_one_line(refused.value, fragment)
    assert not marker.exists()


# -- random bytes -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def refused_or_accepted(path: Path) -> None:
    """validate_input and decode either succeed or raise `InvalidInput` with one line."""
    try:
        validate_input(path, InputConfig())
        decode(path, 44100, 2)
    except InvalidInput as error:
        assert "\n" not in str(error)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".wav", ".mp3", ".flac", ".ogg", ""]))
def test_random_bytes_are_refused_cleanly(scratch, data, suffix):
    refused_or_accepted(put(scratch, f"random{suffix}", data))


@settings(max_examples=60, deadline=None)
@given(patches=st.lists(st.tuples(st.integers(0, 47), st.integers(0, 255)), min_size=1, max_size=6),
       keep=st.integers(0, 8 * 4410 + 44), tag=st.sampled_from([1, 3]))
def test_damaged_wav_headers_are_refused_cleanly(scratch, patches, keep, tag):
    samples = pcm16(0.2) if tag == 1 else make_signal(0.2).astype("<f4").tobytes()
    data = bytearray(riff_wav(samples, bits=16 if tag == 1 else 32, tag=tag))
    for offset, value in patches:
        data[offset] = value
    refused_or_accepted(put(scratch, "damaged.wav", bytes(data[:max(keep, 1)])))


# -- the service, fed the corpus ----------------------------------------------------------------
def replace_with(path: Path, replacement: str) -> None:
    """Change an accepted input behind the client's back."""
    path.unlink()
    if replacement == "text":
        path.write_text("no longer audio\n" * 100)
    elif replacement == "nan":
        float_wav(path.parent, path.name, np.nan)
    elif replacement == "fifo":
        os.mkfifo(path)


def test_a_service_fed_the_corpus_loses_no_task_and_still_separates(service, repos, place, audio):
    out = place / "out"
    for case, (build, _) in BAD_FILES.items():
        with pytest.raises(InvalidInput):
            service.add_task(build(place / "inputs"), file_id=case, output_dir=out)
    for name, _ in BAD_NAMES.values():
        with pytest.raises(InvalidName):
            service.add_task(audio("song.wav", seconds=0.5), file_id=name, output_dir=out)
    assert not any(service.get_status()["queue"].values())

    expected = {}
    for replacement, error in [("text", "not a decodable audio file"), ("nan", "NaN or infinite"),
                               ("fifo", "not a regular file"), ("deleted", "does not exist")]:
        song = audio(f"{replacement}.wav", seconds=0.5)
        spec = service.prepare_task(song, output_dir=out)
        replace_with(song, replacement)
        expected[service.submit([spec])[0]["task_id"]] = ("InvalidInput", error, 1)
    repo = shutil.copytree(repos[0], place / "repo")
    spec = service.prepare_task(audio("model.wav", seconds=0.5), output_dir=out, model="tiny",
                                repo=str(repo))
    _rewrite(repo / "tinysig.th", b"\x00garbage")
    expected[service.submit([spec])[0]["task_id"]] = ("ModelNotFound", "not a PyTorch file", 1)
    spec = service.prepare_task(audio("lost-dir.wav", seconds=0.5), output_dir=place / "gone")
    shutil.rmtree(place / "gone")
    put(place, "gone", b"now a file")
    expected[service.submit([spec])[0]["task_id"]] = ("OutputWriteFailed", "failed", 2)

    records = service.wait_all(list(expected), timeout=300)
    for record in records:
        kind, message, attempts = expected[record["task_id"]]
        assert record["state"] == "failed", record
        assert record["error"]["type"] == kind and record["attempts"] == attempts
        assert_one_line(record["error"]["message"], message)

    good = service.add_task(audio("good.wav", seconds=1.0), output_dir=out)
    assert sorted(service.wait(good, timeout=120)["outputs"]) == STEMS
    status = service.get_status()
    assert status["queue"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": len(expected),
                               "cancelled": 0, "waiting_retry": 0}
    assert status["workers"][0]["restarts"] == 0
    assert {p.name for p in out.iterdir()} == {"default"}
    assert [p.name for p in (out / "default").iterdir()] == ["good"]


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture
def cli_env(ray_cluster, tmp_path):
    return {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": f"bad{uuid.uuid4().hex[:6]}",
            "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state"),
            "RAYDEMUCS_SEPARATION_MODEL": "demucs_unittest",
            "RAYDEMUCS_WORKERS_MEMORY_MB": "0", "LOG_LEVEL": "warning"}


CLI_CASES = {
    "nan_float32": ([], "NaN or infinite samples"),
    "zero_hz": ([], "at 0 Hz"),
    "lying_length_no_data": ([], "holds no audio samples"),
    "unwritable_output": (["-o", "/proc/self"], "is not writable"),
    "corrupt_checkpoint": (["-n", "tiny", "--repo", "{garbage_checkpoint}"], "is not a PyTorch file"),
    "dot_dot_file_id": (["--file-id", ".."], "file id '..' may not start with '.'"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_the_cli_prints_one_line_and_exits_2(case, cli_env, repos, place, audio):
    args, fragment = CLI_CASES[case]
    if case in BAD_FILES:
        song = BAD_FILES[case][0](place / "inputs")
    else:
        song = audio("song.wav", seconds=0.5)
    args = [a.format(**{k: str(v) for k, v in repos[1].items()}) for a in args]
    result = run_cli("submit", song, "-o", place / "out", *args, "--wait", env=cli_env, cwd=place)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.stderr
    assert {Path(p).parts[0] for p in tree(place)} == {"inputs"}  # no journal, no outputs
