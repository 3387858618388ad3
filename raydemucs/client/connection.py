"""Joining Ray, the one way every command, the Python API and `doctor` do it.

An address given (`--address`, `RAY_ADDRESS`) is joined or fails; without one, the cluster the last
`ray start` on this machine launched is joined (never another user's embedded Ray), else a local
Ray is started when the caller allows it.
"""
from __future__ import annotations

import socket

from ..core.actors import NAMESPACE
from ..core.errors import ServiceUnavailable
from . import rayshim

NO_CLUSTER = ("no Ray cluster runs here (start one with `python -m raydemucs start`) and none was "
              "given with --address")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a `host:port` nobody listens on (ray.init would retry for minutes)."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ServiceUnavailable(f"no Ray cluster reachable at {address}: {exc.strerror or exc}") from None


def cluster_address(address: str | None) -> str | None:
    """The cluster `join_ray` would join: `address`, else the one `ray start` runs here."""
    return address or rayshim.ray_start_address()


def join_ray(address: str | None, start_local: bool, dashboard_host: str | None = None,
             timeout_s: float = 5.0) -> bool:
    """Connect this process to Ray; True when it started a local Ray (which lives as long as this
    process, with a dashboard on `dashboard_host` if given). `ServiceUnavailable` when the given
    address cannot be joined, or nothing runs here and `start_local` is false."""
    import ray

    kwargs = dict(namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
    found = cluster_address(address)
    if found:
        try:
            check_reachable(found, timeout_s)
            rayshim.present_auth_token()
            ray.init(address=found, **kwargs)
            return False
        except ServiceUnavailable:
            if address:
                raise
        except (ConnectionError, RuntimeError) as exc:
            if address:
                raise ServiceUnavailable(f"no Ray cluster reachable at {address}: "
                                         f"{str(exc).splitlines()[0]}") from None
    if not start_local:
        raise ServiceUnavailable(NO_CLUSTER)
    ray.init(address="local", include_dashboard=dashboard_host is not None,
             dashboard_host=dashboard_host or "127.0.0.1", **kwargs)
    return True
