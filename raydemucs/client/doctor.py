"""`python -m raydemucs doctor`: the old troubleshooting page's manual checks, automated.

Each check says what it found and, when it fails, how to fix it. Nothing here starts Ray, and
the one network probe (is the model hub reachable?) gives up after a few seconds.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..core.actors import NAMESPACE, scheduler_name
from ..core.config import Config, SeparationConfig, WorkersConfig
from ..core.errors import ModelNotFound, OutputNotWritable, ServiceUnavailable
from ..models.catalogue import OFFLINE_MODEL, model_source, remote_models
from ..storage.folders import check_writable
from .connection import check_reachable, cluster_address, join_ray

MIN_PYTHON = (3, 10)
PROBE_TIMEOUT_S = 3.0
SERVICE_TIMEOUT_S = 10.0
FLAC_FIX = "pip install --force-reinstall soundfile (its wheels bundle libsndfile with flac)"
RAY_FIX = ("start Ray with `python -m raydemucs start` (or `ray start --head`), or point "
           "--address / RAY_ADDRESS at a running cluster")


@dataclass(frozen=True)
class Check:
    """One finding: `fix` says what to do when `ok` is false."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(config: Config, address: str | None = None) -> list[Check]:
    """Every check, in the order a person would go through them."""
    service = config.service
    return [
        check_python(),
        check_package("demucs", "pip install demucs"),
        check_package("torch", "pip install torch (see pytorch.org for the build for your GPU)"),
        check_decoder(),
        check_flac(),
        check_ffmpeg(),
        check_memory(config.workers),
        check_model(config.separation),
        check_dir("output dir", service.output_dir,
                  "create it or choose another: -o DIR, or RAYDEMUCS_SERVICE_OUTPUT_DIR"),
        check_dir("state dir", service.state_dir,
                  "create it or choose another with RAYDEMUCS_SERVICE_STATE_DIR"),
        *ray_checks(config, address),
    ]


# -- this machine ---------------------------------------------------------------------------
def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= MIN_PYTHON
    wanted = ".".join(map(str, MIN_PYTHON))
    return Check("python", ok, f"Python {version} ({sys.executable})",
                 "" if ok else f"install Python {wanted} or newer and reinstall raydemucs there")


def check_package(name: str, fix: str) -> Check:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        return Check(name, False, f"{name} cannot be imported: {exc}", fix)
    detail = f"{name} {getattr(module, '__version__', '?')}"
    if name == "torch":
        detail += f", CUDA {'available' if module.cuda.is_available() else 'not available'}"
    return Check(name, True, detail)


def check_decoder() -> Check:
    """PyAV and the FFmpeg its wheel bundles: the decoder for inputs sphn cannot read."""
    try:
        from ..audio.ffmpeg import av_versions
    except ImportError as exc:
        return Check("decoder", False, f"PyAV cannot be imported: {exc}",
                     "pip install av (its wheels bundle FFmpeg)")
    return Check("decoder", True, f"sphn, then {av_versions()} for inputs sphn cannot read")


def check_flac() -> Check:
    """soundfile and its libsndfile, which write flac stems."""
    try:
        import soundfile
    except (ImportError, OSError) as exc:
        return Check("flac", False, f"soundfile cannot be imported: {exc}", FLAC_FIX)
    detail = f"soundfile {soundfile.__version__} with libsndfile {soundfile.__libsndfile_version__}"
    if "FLAC" not in soundfile.available_formats():
        return Check("flac", False, f"{detail} cannot write flac", FLAC_FIX)
    return Check("flac", True, f"{detail} writes flac stems")


def check_ffmpeg() -> Check:
    """The ffmpeg program: optional, since PyAV brings FFmpeg's libraries."""
    path = shutil.which("ffmpeg")
    found = f"ffmpeg is at {path}" if path else "ffmpeg is not on PATH"
    return Check("ffmpeg", True, f"{found}; optional: raydemucs decodes with PyAV's FFmpeg")


def check_memory(workers: WorkersConfig) -> Check:
    """Free memory here against what the workers reserve (`memory_mb` each)."""
    available = psutil.virtual_memory().available
    need = workers.memory_mb * workers.max_workers * 2**20
    detail = (f"{available / 2**30:.1f} GiB free here; {workers.max_workers} worker(s) x "
              f"{workers.memory_mb} MB reserved = {need / 2**30:.1f} GiB")
    if need <= available:
        return Check("memory", True, detail)
    return Check("memory", False, detail,
                 "free memory, or lower workers.max_workers (MAX_WORKERS) or workers.memory_mb "
                 "(the old service advised 2 GB or more per worker)")


def check_dir(name: str, path: str, fix: str) -> Check:
    try:
        check_writable(path)
    except OutputNotWritable as exc:
        return Check(name, False, str(exc).replace("output directory", name), fix)
    return Check(name, True, f"{Path(path).expanduser().absolute()} is writable")


# -- the model ------------------------------------------------------------------------------
def check_model(options: SeparationConfig) -> Check:
    """The configured model: shipped, in the repo, in a local download cache, or downloadable."""
    name, repo = options.model, options.repo
    try:
        source = model_source(name, repo, hub_timeout_s=PROBE_TIMEOUT_S)
    except ModelNotFound as exc:
        if repo:
            fix = (f"choose a name `python -m raydemucs models --repo {repo}` lists, or put "
                   f"{name}.yaml and its checkpoints in {repo}")
        elif name in remote_models():
            fix = (f"download it once with internet (`python -m demucs -n {name} ANY.wav`), pass "
                   f"--repo DIR holding {name}.yaml and its checkpoints, or use -n {OFFLINE_MODEL}")
        else:
            fix = "choose a name `python -m raydemucs models` lists, or pass --repo DIR"
        return Check("model", False, str(exc), f"{fix} (separation.model, -n)")
    return Check("model", True, f"{name}: {source}")


# -- Ray and the service --------------------------------------------------------------------
def ray_checks(config: Config, address: str | None) -> list[Check]:
    """Ray's reachability, its room for the workers, and the running service's health.

    An already connected Ray is used as is; otherwise the cluster at `address` (or
    RAY_ADDRESS, or one running here) is joined for the checks and left after them.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    joined = False
    try:
        if address:
            check_reachable(address, timeout_s=PROBE_TIMEOUT_S)  # also when Ray is joined here
        if not ray.is_initialized() and cluster_address(address):
            joined = not join_ray(address, start_local=False, timeout_s=PROBE_TIMEOUT_S)
    except ServiceUnavailable as exc:
        return [Check("ray", False, str(exc), RAY_FIX)]
    try:
        if not ray.is_initialized():
            return [Check("ray", True, "no Ray cluster runs here; `start` and `submit --wait` "
                          "start one on this machine"),
                    check_resources(config.workers, [_this_machine()], "this machine",
                                    ("CPU", "GPU"))]
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        return [Check("ray", True, f"Ray {ray.__version__}, {len(nodes)} node(s) alive"),
                check_resources(config.workers, nodes, "the cluster"),
                check_service(config)]
    finally:
        if joined:
            ray.shutdown()


def _this_machine() -> dict:
    """CPUs and GPUs a Ray started here would offer."""
    import torch

    return {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}


def check_resources(workers: WorkersConfig, nodes: list[dict], where: str,
                    kinds: tuple = ("CPU", "GPU", "memory")) -> Check:
    """Whether `max_workers` workers fit, each on one node with its CPUs, GPUs and memory."""
    each = {"CPU": workers.num_cpus, "GPU": workers.num_gpus, "memory": workers.memory_mb * 2**20}
    needs = {kind: each[kind] for kind in kinds if each[kind]}
    fit = sum(min((int(node.get(kind, 0) / need + 1e-9) for kind, need in needs.items()),
                  default=workers.max_workers) for node in nodes)
    wanted = ", ".join(_amount(kind, need) for kind, need in needs.items()) or "no resources"
    totals = ", ".join(_amount(kind, sum(n.get(kind, 0) for n in nodes)) for kind in needs)
    detail = f"{workers.max_workers} worker(s) need {wanted} each; {where} has {totals or 'room'}"
    if fit >= workers.max_workers:
        return Check("resources", True, detail)
    return Check("resources", False, f"{detail}: room for {fit}",
                 f"lower workers.max_workers (MAX_WORKERS) to {fit}, or workers.num_cpus / "
                 "num_gpus / memory_mb, or add nodes (`ray up cluster.yaml`)")


def _amount(key: str, value: float) -> str:
    return f"{value / 2**20:.0f} MB memory" if key == "memory" else f"{value:g} {key}"


def check_service(config: Config) -> Check:
    """The running service's workers: none dead, none that failed to load the model."""
    import ray

    name = config.service.name
    try:
        handle = ray.get_actor(scheduler_name(name), namespace=NAMESPACE)
    except ValueError:
        return Check("service", True, f"no raydemucs service {name!r} is running")
    try:
        status = ray.get(handle.status.remote(), timeout=SERVICE_TIMEOUT_S)
    except ray.exceptions.RayError as exc:
        return Check("service", False, f"service {name!r} does not answer: "
                     f"{str(exc).splitlines()[0]}",
                     "stop it (`python -m raydemucs stop --now`) and start it again")
    workers = status["workers"]
    problems = [f"{w['worker_id']} could not load its model: {w['load_error']}"
                for w in workers if w["load_error"]]
    problems += [f"{w['worker_id']} is dead ({w['restarts']} restart(s))"
                 for w in workers if w["state"] == "dead"]
    states = ", ".join(sorted(f"{w['worker_id']} {w['state']}" for w in workers))
    if not problems:
        return Check("service", True, f"service {name!r}: {states}")
    return Check("service", False, f"service {name!r}: " + "; ".join(problems),
                 "fix the model check above (separation.model, --repo), then restart the "
                 "service: `python -m raydemucs stop` and `python -m raydemucs start`; worker "
                 "logs are in the Ray dashboard and under /tmp/ray/session_latest/logs")
