"""Starting and stopping the HTTP front door: a Ray Serve application beside the scheduler."""
from __future__ import annotations

import ipaddress

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.keys import KeyStore


def app_name(config: Config) -> str:
    return f"{config.service.name}-http"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_http(config: Config) -> str:
    """Deploy the ingress (`http.num_replicas` replicas) on `http.host`:`http.port`; its URL.

    Anything but a loopback host needs API keys first (`python -m raydemucs keys add NAME`).
    """
    from ray import serve

    from .app import Ingress

    http = config.http
    if not is_loopback(http.host) and not KeyStore(config.state_path).table():
        raise ConfigError(f"http.host={http.host} is not loopback: add an API key first "
                          "(`python -m raydemucs keys add NAME`); every request will need one")
    serve.start(http_options={"host": http.host, "port": http.port})
    ingress = Ingress.options(num_replicas=http.num_replicas,
                              name=f"{config.service.name}-ingress").bind(config.to_dict())
    serve.run(ingress, name=app_name(config), route_prefix="/", blocking=False)
    return f"http://{http.host}:{http.port}"


def stop_http(config: Config) -> bool:
    """Remove the ingress of this service, if it runs; whether it did."""
    from ray import serve

    try:
        status = serve.status()
    except Exception:  # Serve was never started on this cluster
        return False
    if app_name(config) not in status.applications:
        return False
    serve.delete(app_name(config))
    return True
