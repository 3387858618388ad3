"""Fixtures every tier shares: audio files, a random-weight model repo, one real Ray per session
(requested by the service and end-to-end tiers only), an S3 server, HTTP services, receivers."""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from support import (
    HttpService,
    Receiver,
    free_port,
    save_tiny_htdemucs,
    service_config,
    write_audio,
)

# Fake credentials for the S3 server the tests run on 127.0.0.1; set before Ray starts, so
# every worker inherits them, and so that no test can reach a real account.
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"})
for _variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_variable, None)
TIERS = ("unit", "service", "e2e")  # the folders under tests/, each a marker: `-m "not e2e"`


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(str(item.path)).parent.name
        if tier in TIERS:
            item.add_marker(tier)


@pytest.fixture
def audio(tmp_path):
    """`audio("name.wav", seconds=3)` writes a clip under a fresh folder and returns its path."""
    def factory(name: str = "song.wav", **kwargs) -> Path:
        return write_audio(tmp_path / "inputs" / name, **kwargs)
    return factory


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for model-heavy tests: small inputs, and the machine may be busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return save_tiny_htdemucs(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray for the whole session (token auth on, as Ray's default)."""
    import ray

    ray.init(address="local", num_cpus=4, namespace="raydemucs", include_dashboard=False,
             log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-compatible server (moto) on 127.0.0.1 for the whole session; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh bucket on the test S3 server: `(s3fs filesystem, "s3://NAME")`."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, use_listings_cache=False)
    name = f"b{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, f"s3://{name}"


@pytest.fixture
def make_service(ray_cluster, tmp_path):
    """`make_service(workers={...}, tasks={...})` starts a scheduler with its workers; stopped after."""
    from raydemucs import WorkerManager

    managers = []

    def factory(**sections):
        manager = WorkerManager(service_config(tmp_path, **sections))
        manager.scheduler(create=True)
        managers.append(manager)
        return manager

    yield factory
    for manager in managers:
        try:
            manager.shutdown(now=True)
        except Exception:
            pass


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    """The port of the session's Ray Serve proxy (Serve takes one per cluster, at its first start)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture(scope="module")
def http_service(serve_port, s3_endpoint, tmp_path_factory):
    """One HTTP service for a test module: one worker holding one task at a time, uploads up to
    2 MB (for the 413 cases), s3:// inputs (any bucket) on the session's S3 server."""
    service = HttpService(tmp_path_factory.mktemp("http"), serve_port, input={"max_file_mb": 2.0},
                          workers={"max_workers": 1, "prefetch": 0},
                          storage={"endpoint_url": s3_endpoint}, http={"inputs": ["s3://"]})

    yield service
    service.close()


@pytest.fixture
def receivers():
    """`receivers(statuses=(500, 200))` starts a `Receiver`; each is closed after the test."""
    made = []

    def factory(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield factory
    closing = [threading.Thread(target=receiver.close) for receiver in made]  # each waits a poll
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()


@pytest.fixture
def doctor_config(tmp_path):
    """`doctor_config(**sections)`: the test profile, with writable output and state dirs under
    `tmp_path`, as overrides allow."""
    def factory(**sections):
        service = {"output_dir": str(tmp_path / "out"), **sections.pop("service", {})}
        return service_config(tmp_path, service=service, **sections)
    return factory
