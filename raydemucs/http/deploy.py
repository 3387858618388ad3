"""Starting and stopping the HTTP front door: a Ray Serve application beside the scheduler."""
from __future__ import annotations

import ipaddress
import logging

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.keys import KeyStore

logger = logging.getLogger(__name__)
WILDCARDS = ("0.0.0.0", "::")  # every address of the node: the URL names the configured one


def app_name(config: Config) -> str:
    return f"{config.service.name}-http"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keyed: bool, what: str) -> None:
    """Refuse to serve without API keys on anything but loopback."""
    if not keyed and not is_loopback(host):
        raise ConfigError(f"{what} {host} is not loopback: add an API key first "
                          "(`python -m raydemucs keys add NAME`); every request will need one")


def start_http(config: Config) -> str:
    """Deploy the ingress (`http.num_replicas` replicas) on Ray Serve's proxy; its URL.

    Serve binds `http.host`:`http.port` when this starts it; a Serve already running keeps its own
    bind, which is the one checked. Anything but loopback needs API keys first (`python -m
    raydemucs keys add NAME`).
    """
    from ray import serve

    from ..client.rayshim import serve_proxy_bind
    from .app import Ingress

    http = config.http
    keyed = bool(KeyStore(config.state_path).table())
    check_bind(http.host, keyed, "http.host")
    serve.start(http_options={"host": http.host, "port": http.port})
    host, port = serve_proxy_bind()
    check_bind(host, keyed, "the running Ray Serve proxy's address")
    if (host, port) != (http.host, http.port):
        logger.warning("Ray Serve already runs on %s:%s: http.host and http.port (%s:%s) are "
                       "not used", host, port, http.host, http.port)
    ingress = Ingress.options(num_replicas=http.num_replicas,
                              name=f"{config.service.name}-ingress").bind(config.to_dict())
    serve.run(ingress, name=app_name(config), route_prefix="/", blocking=False)
    return f"http://{http.host if host in WILDCARDS else host}:{port}"


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
