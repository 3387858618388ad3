"""What the tests share besides fixtures: audio files made here (and kept as uploads), a
random-weight model repo, a service with its HTTP API, webhook receivers, multi-node scenarios,
the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import soundfile as sf

TESTS = Path(__file__).resolve().parent  # the scenarios import this module as scripts
SAMPLERATE = 44100
TEST_PROFILE_OVERRIDES = {"workers": {"memory_mb": 0}}


def make_signal(seconds: float, samplerate: int = SAMPLERATE, channels: int = 2, seed: int = 0):
    """A mix of two tones and noise, `[time, channels]` float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * samplerate)) / samplerate
    tones = [0.25 * np.sin(2 * np.pi * f * t) for f in (220.0, 330.0, 440.0, 550.0)[:channels]]
    while len(tones) < channels:
        tones.append(tones[-1])
    mix = np.stack(tones, axis=1) + 0.05 * rng.standard_normal((len(t), channels))
    return mix.astype(np.float32)


def write_mp3(path: Path, data: np.ndarray, samplerate: int, bitrate: int = 128) -> Path:
    """`[time, channels]` float samples as an mp3 (lameenc, as demucs encodes)."""
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_channels(data.shape[1])
    encoder.silence()
    pcm = (np.clip(data, -1, 1) * (2**15 - 1)).astype("<i2")
    path.write_bytes(encoder.encode(pcm.tobytes()) + encoder.flush())
    return path


def write_aac(path: Path, data: np.ndarray, samplerate: int) -> Path:
    """`[time, channels]` float samples as AAC in an MP4 (FFmpeg's encoder, through PyAV): a
    format sphn cannot read."""
    import av

    layout = {1: "mono", 2: "stereo"}[data.shape[1]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=samplerate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp",
                                           layout=layout)
        frame.sample_rate = samplerate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


MP3_BITRATES_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MP3_RATES = (44100, 48000, 32000)


def understated_mp3(path: Path, seconds: float, frames: int = 20) -> Path:
    """A `seconds` long MPEG-1 mp3 led by a Xing frame that says it holds `frames` frames (1,152
    samples each): decoders trust it for the duration, and decode every frame that follows."""
    data = write_mp3(path, make_signal(seconds), SAMPLERATE).read_bytes()
    head = bytes([0xFF, 0xFB, data[2] & 0xFD, data[3]])  # MPEG-1 layer III, no padding
    size = 144 * MP3_BITRATES_KBPS[head[2] >> 4] * 1000 // MP3_RATES[(head[2] >> 2) & 3]
    side_info = 17 if head[3] >> 6 == 3 else 32  # mono, else two channels
    xing = head + bytes(side_info) + b"Xing" + (1).to_bytes(4, "big") + frames.to_bytes(4, "big")
    path.write_bytes(xing + bytes(size - len(xing)) + data)
    return path


FLAC_MAX_RATE = 655350  # the highest rate libsndfile writes (FLAC's frame headers, in tens of Hz)


def flac_bomb(path: Path, seconds: float, channels: int = 8) -> Path:
    """Silence at `FLAC_MAX_RATE` in `channels` channels: a few KB a second of FLAC that decodes
    to about 21 MB a second of float32 at its own rate."""
    second = np.zeros((FLAC_MAX_RATE, channels), np.int16)
    with sf.SoundFile(path, "w", FLAC_MAX_RATE, channels, "PCM_16") as flac:
        for _ in range(round(seconds)):
            flac.write(second)
    return path


def write_audio(path: Path, seconds: float = 3.0, samplerate: int = SAMPLERATE,
                channels: int = 2, seed: int = 0) -> Path:
    """Write a test clip as 16-bit wav or flac, Ogg Vorbis (soundfile), mp3 (lameenc) or m4a
    (AAC, PyAV), by `path`'s suffix."""
    data = make_signal(seconds, samplerate, channels, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp3":
        return write_mp3(path, data, samplerate)
    if path.suffix == ".m4a":
        return write_aac(path, data, samplerate)
    sf.write(path, data, samplerate, subtype="VORBIS" if path.suffix == ".ogg" else "PCM_16")
    return path


def save_tiny_htdemucs(repo: Path, name: str = "tiny", seed: int = 0, **options) -> Path:
    """A small HTDemucs with random weights saved in demucs's repo format: `sig.th` + `name.yaml`
    (`options`: more of its constructor's arguments, such as a shorter training `segment`)."""
    from demucs.htdemucs import HTDemucs

    return save_model(repo, name, HTDemucs, {"channels": 8, "t_layers": 1, **options}, seed)


def save_leaky_model(repo: Path, name: str = "leaky") -> Path:
    """`tests.leaky_model.LeakyHDemucs` (`demucs_unittest`'s network, whose forward keeps its
    outputs) saved like `save_tiny_htdemucs`: a real leak in the workers that load it."""
    root = str(TESTS.parent)
    if root not in sys.path:  # import it as the workers will: `tests.leaky_model`
        sys.path.insert(0, root)
    from tests.leaky_model import LeakyHDemucs

    return save_model(repo, name, LeakyHDemucs, {"channels": 4})


def save_poison_model(repo: Path, name: str = "poison") -> Path:
    """`tests.poison_model.PoisonHDemucs`, whose forward kills its service's scheduler."""
    root = str(TESTS.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.poison_model import PoisonHDemucs

    return save_model(repo, name, PoisonHDemucs, {"channels": 4})


def save_ensemble_model(repo: Path, name: str, kind: str, seed: int = 0, **options) -> Path:
    """`tests.ensemble_models`' `FlakyHTDemucs` (`marker=`) or `SlowHTDemucs` (`delay_s=`), a
    tiny HTDemucs like `save_tiny_htdemucs`'s, saved the same way."""
    root = str(TESTS.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests import ensemble_models

    klass = getattr(ensemble_models, f"{kind}HTDemucs")
    return save_model(repo, name, klass, {"channels": 8, "t_layers": 1, **options}, seed)


def save_model(repo: Path, name: str, klass, kwargs: dict, seed: int = 0) -> Path:
    """`klass(sources=demucs's four, **kwargs)` with random weights in demucs's repo format."""
    import torch
    import yaml
    from demucs.pretrained import SOURCES

    torch.manual_seed(seed)
    kwargs = {"sources": SOURCES, **kwargs}
    model = klass(**kwargs)
    repo.mkdir(parents=True, exist_ok=True)
    signature = f"{name}sig"
    torch.save({"klass": klass, "args": (), "kwargs": kwargs, "state": model.state_dict()},
               repo / f"{signature}.th")
    (repo / f"{name}.yaml").write_text(yaml.safe_dump({"models": [signature]}))
    return repo


TINY_ROFORMER = {  # a forward pass on 2 s of stereo audio in well under a second on a CPU
    "dim": 16, "depth": 1, "stereo": True, "num_stems": 2, "time_transformer_depth": 1,
    "freq_transformer_depth": 1, "dim_head": 8, "heads": 2, "stft_n_fft": 256,
    "stft_hop_length": 64, "stft_win_length": 256, "mask_estimator_depth": 1, "attn_dropout": 0.1, "ff_dropout": 0.1, "flash_attn": True,
    "multi_stft_resolutions_window_sizes": (512, 256),
}
TINY_ROFORMER_OWN = {"bs_roformer": {"freqs_per_bands": (2, 2, 4, 4, 8, 8, 16, 16, 32, 37)},
                     "mel_band_roformer": {"num_bands": 8, "sample_rate": SAMPLERATE}}


def write_roformer(repo: Path, name: str, architecture: str, seed: int = 0, audio=None,
                   inference=None, training=None, **model_options) -> Path:
    """A tiny `architecture` RoFormer (`bs_roformer`, `mel_band_roformer`) with random weights in
    the community layout: `repo/NAME.ckpt` (a state dict, `torch.save`) and `repo/NAME.yaml` (its
    training config, tuples tagged `!!python/tuple`). `model_options` override the network's
    options, `audio`/`inference`/`training` update those sections. Returns `repo`."""
    import torch
    import yaml

    from roformer_reference import reference_class

    model = {**TINY_ROFORMER, **TINY_ROFORMER_OWN[architecture], **model_options}
    stems = ["vocals", "other"][:model["num_stems"]] if model["num_stems"] <= 2 else \
        ["drums", "bass", "other", "vocals", "piano", "guitar"][:model["num_stems"]]
    config = {
        "audio": {"chunk_size": 16384, "num_channels": 2 if model["stereo"] else 1,
                  "sample_rate": SAMPLERATE, "n_fft": model["stft_n_fft"],
                  "hop_length": model["stft_hop_length"], **(audio or {})},
        "model": model,
        "training": {"instruments": stems, "target_instrument": None, "use_amp": True,
                     **(training or {})},
        "inference": {"batch_size": 2, "num_overlap": 2, **(inference or {})},
    }
    torch.manual_seed(seed)
    network = reference_class(architecture)(**model)
    repo.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), repo / f"{name}.ckpt")
    (repo / f"{name}.yaml").write_text(yaml.dump(config, Dumper=yaml.Dumper, sort_keys=False))
    return repo


def store_upload(store, source: Path) -> dict:
    """Keep the file `source` in an `UploadStore` as an upload reaches it: `open`, its bytes
    appended a chunk at a time on this node (`storage.nodes`), `close` (checked as audio, kept
    by SHA-256); `close`'s answer, `{"sha256", "duration_s", "bytes"}`."""
    from raydemucs.storage import nodes

    opened = store.open(source.name)
    nodes.send(source, opened["path"], opened["node"])
    return store.close(opened["id"])


def service_config(tmp_path: Path, **sections):
    """The test profile with a unique service name and its own journal, plus overrides."""
    from raydemucs.core.config import load_config

    overrides = {"service": {"name": f"t{uuid.uuid4().hex[:8]}",
                             "state_dir": str(tmp_path / "state")}, **TEST_PROFILE_OVERRIDES}
    for section, values in sections.items():  # a section merged, a list (`pools`) replaced
        overrides[section] = ({**overrides.get(section, {}), **values}
                              if isinstance(values, dict) else values)
    return load_config("test", overrides=overrides, environ={})


def wait_for(predicate, timeout_s: float = 120.0, step_s: float = 0.1):
    """Poll `predicate` until it returns something true, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError("condition not met in time")


def run_cli(*args, env=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    """`python -m raydemucs ARGS` in a subprocess; `env` values of None unset a variable."""
    full_env = {**os.environ, **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}
    return subprocess.run([sys.executable, "-m", "raydemucs", *map(str, args)], env=full_env,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def cli_env(service) -> dict:
    """What `run_cli` needs to reach `service` (an HttpService or a WorkerManager) on the
    session's Ray."""
    import ray

    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "RAYDEMUCS_SERVICE_NAME": service.config.service.name,
            "RAYDEMUCS_SERVICE_STATE_DIR": str(service.config.service.state_dir)}


def peak_rss(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HttpService:
    """A raydemucs service with its HTTP API on the session's Serve proxy, and an httpx client."""

    def __init__(self, root: Path, port: int, **sections):
        import httpx

        from raydemucs import WorkerManager

        sections.setdefault("http", {})["port"] = port
        self.config = service_config(root, **sections)
        self.manager = WorkerManager(self.config)
        self.manager.scheduler(create=True)
        self.url = self.manager.start_http()
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.state = Path(self.config.service.state_dir)

    def wait(self, task_id: str, timeout_s: float = 120.0, **headers) -> dict:
        """Poll the task over HTTP until it ends; its record."""
        return wait_for(lambda: (lambda r: r if r["state"] in ("succeeded", "failed", "cancelled")
                                 else None)(self.client.get(f"/v1/tasks/{task_id}",
                                                            headers=headers).json()),
                        timeout_s=timeout_s, step_s=0.2)

    def stored(self) -> list[str]:
        """Everything under the service's uploads and results (what a refused request may not add)."""
        return sorted(str(p.relative_to(self.state)) for base in ("uploads", "results")
                      for p in (self.state / base).rglob("*") if p.is_file())

    def close(self) -> None:
        self.client.close()
        self.manager.shutdown(now=True)


class Receiver:
    """A real HTTP receiver on 127.0.0.1: answers each POST with the next of `statuses` (the
    last one repeated), or holds it until `release` when `hang`; keeps what it got."""

    def __init__(self, statuses=(200,), hang=False, body=b"ok", headers=None):
        self.statuses, self.hang, self.body = list(statuses), hang, body
        self.extra_headers = headers or {}
        self.got: list[tuple[dict, bytes]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, data))
                if receiver.hang:
                    receiver.release.wait(600)
                    return
                status = receiver.statuses[min(len(receiver.got), len(receiver.statuses)) - 1]
                self.send_response(status)
                for key, value in receiver.extra_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def run_cluster_scenario(script: str, tmp_path: Path, args: list[str], timeout_s: float,
                         prefix: tuple[str, ...] = ()) -> dict:
    """Run `PREFIX... python SCRIPT TMP_PATH ARGS...` (a multi-node `ray.cluster_utils.Cluster` and
    its driver, or a Ray of its own) in a subprocess with its own RAY_TMPDIR and auth token, as on
    a real cluster: a driver joins one cluster only, and the session's Ray stays untouched. The
    JSON it printed after `RESULT `."""
    import json
    import secrets
    import shutil
    import tempfile

    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])))
    try:
        run = subprocess.run([*prefix, sys.executable, script, str(tmp_path), *args], env=env,
                             capture_output=True, text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result = next((json.loads(line[len("RESULT "):]) for line in run.stdout.splitlines()
                   if line.startswith("RESULT ")), None)
    assert run.returncode == 0 and result, run.stderr[-3000:]
    return result


def by_name(checks) -> dict:
    """`doctor`'s checks by name."""
    return {check.name: check for check in checks}


def failed(checks) -> dict:
    """{name: check} of `doctor`'s failed checks; each failure must say how to fix it."""
    failures = {check.name: check for check in checks if not check.ok}
    assert all(check.fix for check in failures.values())
    return failures

def expected_peaks(data: np.ndarray, points: int, frames: int | None = None) -> tuple[list, list]:
    """Each span's lowest and highest sample, computed on the whole array at once: span i holds
    frames f with i <= f * count / frames < i + 1, `frames` being what the file's header says
    (a span past the decoded samples is 0)."""
    frames = frames or len(data)
    count = min(points, frames)
    edges = [-(-i * frames // count) for i in range(count + 1)]  # ceil(i * frames / count)
    spans = [data[start:stop] for start, stop in zip(edges, edges[1:])]
    return ([round(float(s.min()), 4) if len(s) else 0.0 for s in spans],
            [round(float(s.max()), 4) if len(s) else 0.0 for s in spans])


def fit_passes_of(batcher, most: int) -> list[int]:
    """Make `batcher`'s passes of more than `most` segments fail as CUDA's out-of-memory error
    does; the sizes of the passes it tries, as it tries them."""
    forward, sizes = batcher.runner.forward, []

    def fits(model_index, inputs):
        sizes.append(inputs.shape[0])
        if inputs.shape[0] > most:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(model_index, inputs)

    batcher.runner.forward = fits
    return sizes
