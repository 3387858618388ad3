"""The private Ray calls raydemucs makes, in one place.

Ray is pinned to the minor version these exist in (pyproject.toml), and
`tests/unit/test_private_apis.py` calls each one, so that an upgrade that moves them fails there,
loudly.
"""
from __future__ import annotations

import logging


def ray_start_address() -> str | None:
    """The address of the cluster the last `ray start` on this machine launched, if any."""
    from ray._private.utils import read_ray_address

    return read_ray_address()


def present_auth_token() -> None:
    """Send Ray's auth token when joining a cluster, if this machine has one.

    Ray 2.60 starts clusters with token authentication on, but a driver that joins one sends the
    token only when RAY_AUTH_MODE=token; without it a `ray start` head answers every call with
    "InvalidAuthToken". Auth stays on: this only makes us present the token we already hold.
    """
    from ray._private.authentication import authentication_token_setup as setup

    quiet = logging.getLogger(setup.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "token authentication is enabled" notice, on every command
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def serve_proxy_bind() -> tuple[str, int]:
    """The host and port Ray Serve's proxies listen on: `serve.start` keeps those of a Serve that
    already runs, whatever it is asked."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    options = ray.get(controller.get_http_config.remote())
    return options.host, options.port
