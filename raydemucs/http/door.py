"""The door every request passes before a route: a pure ASGI middleware (streams stay streams).

- Host allowlist (DNS rebinding): a `Host` not in `http.allowed_hosts` (or the configured
  `http.host`), whatever its port, gets 421 and reaches nothing.
- Other origins: a request a browser sends from another origin (`Sec-Fetch-Site: cross-site` or
  `same-site`, or an `Origin` other than the request's own scheme://host:port) gets 403, whatever
  its method and whatever key it carries; only a top-level navigation by GET or HEAD passes (it
  lands on the page or on a document the other site cannot read: no CORS is ever granted).
  curl, the Python client and the Node.js module send neither header, and the page is
  same-origin.
- Loopback: `came_over_loopback` says whether a request reached the proxy on a loopback address
  from a loopback address: the only requests served without a key. Ray Serve forwards the
  proxy's ASGI scope to the replica, whose `server` is the address the connection actually
  reached (not the configured host, nor what the proxy was asked to bind).
"""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from .deploy import is_loopback
from .errors import CrossOrigin, MisdirectedRequest, error_response

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
OTHER_SITES = ("cross-site", "same-site")


def headers_of(scope: dict) -> dict[str, str]:
    """The request's headers, names lowercase (the first of repeated ones)."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


def split_host(authority: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) as (host without brackets, lowercase; port or None);
    ("", None) when it is not an authority."""
    if any(mark in authority for mark in "@/?#\\"):  # user info, a path: not a Host
        return "", None
    try:
        parts = urlsplit(f"//{authority.strip()}")
        return (parts.hostname or "").rstrip("."), parts.port
    except ValueError:  # a port that is not a number, an unclosed bracket
        return "", None


def host_allowed(authority: str | None, hosts: frozenset[str]) -> bool:
    """Whether a `Host` header names one of `hosts` (names without port nor brackets), any port."""
    host, _ = split_host(authority or "")
    return bool(host) and host in hosts


def allowed_hosts(names, bind_host: str) -> frozenset[str]:
    """`http.allowed_hosts` and the configured `http.host`, as `host_allowed` compares them."""
    return frozenset(split_host(name)[0] for name in (*names, bind_host)) - {""}


def own_origin(scope: dict, authority: str) -> tuple[str, str, int | None]:
    """The request's own (scheme, host, port), default ports made explicit."""
    scheme = scope.get("scheme", "http")
    host, port = split_host(authority)
    return scheme, host, port or DEFAULT_PORTS.get(scheme)


def from_other_origin(scope: dict, headers: dict[str, str]) -> bool:
    """Whether a browser sent this request from another origin than the request's own."""
    if headers.get("sec-fetch-site", "").lower() in OTHER_SITES:
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    parts = urlsplit(origin.strip())
    try:
        theirs = (parts.scheme, (parts.hostname or "").rstrip("."),
                  parts.port or DEFAULT_PORTS.get(parts.scheme))
    except ValueError:
        return True
    return theirs != own_origin(scope, headers.get("host", ""))  # "null" differs too


def is_navigation(scope: dict, headers: dict[str, str]) -> bool:
    """A top-level navigation by GET or HEAD (a link followed, an address typed)."""
    return (scope.get("method") in ("GET", "HEAD")
            and headers.get("sec-fetch-mode", "").lower() == "navigate"
            and headers.get("sec-fetch-dest", "document").lower() == "document")


def refusal(scope: dict, hosts: frozenset[str]) -> Exception | None:
    """Why the door refuses this HTTP request; None to let it in."""
    headers = headers_of(scope)
    if not host_allowed(headers.get("host"), hosts):
        return MisdirectedRequest("this service does not answer for that Host (http.allowed_hosts)")
    if from_other_origin(scope, headers) and not is_navigation(scope, headers):
        return CrossOrigin("a request from another site's page is refused here")
    return None


FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")  # a proxy's mark of another client


def came_over_loopback(scope: dict) -> bool:
    """Whether the connection reached a loopback address of the proxy from a loopback address,
    and no proxy in between says it carries another client's request."""
    ends = [scope.get("server"), scope.get("client")]
    forwarded = any(name in headers_of(scope) for name in FORWARDED)
    return not forwarded and all(end and is_loopback(str(end[0])) for end in ends)


class Door:
    """The ASGI middleware: `hosts()` gives the allowed `Host` names (read per request: the
    replica's config arrives after the app is built)."""

    def __init__(self, app, hosts: Callable[[], frozenset[str]]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = refusal(scope, self.hosts())
            if refused is not None:
                await error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)
