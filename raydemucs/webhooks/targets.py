"""What a task may ask of webhooks: its events, and a URL the service would call (http or https,
a public address unless `webhooks.allow_private`). Free of aiohttp and the journal: the client
checks these before it queues."""
from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from typing import Iterable

from ..core.errors import InvalidInput
from ..core.names import printable
from ..core.task import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS

MAX_URL_CHARS = 2048


def check_events(events: Iterable[str] | str | None) -> tuple[str, ...]:
    """`webhook_events` as a tuple (a comma-separated string is split); None: the terminal ones."""
    if events is None:
        return DEFAULT_WEBHOOK_EVENTS
    if isinstance(events, str):
        events = [part.strip() for part in events.split(",") if part.strip()]
    events = list(events)
    unknown = [event for event in events if event not in WEBHOOK_EVENTS]
    if unknown or not events or not all(isinstance(event, str) for event in events):
        raise InvalidInput(f"webhook_events {printable(unknown or events)}; allowed: "
                           f"{', '.join(WEBHOOK_EVENTS)}")
    return tuple(dict.fromkeys(events))


def check_url(url) -> str:
    """A webhook URL's form: http or https, a host, a port if any; nothing resolved here."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise InvalidInput(f"webhook_url must be an http:// or https:// URL of at most "
                           f"{MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"webhook_url {printable(url)}: only http:// and https:// URLs are "
                           "called")
    try:
        parts.port
    except ValueError:
        raise InvalidInput(f"webhook_url {printable(url)} has a bad port") from None
    if not parts.hostname or any(ord(c) < 33 for c in url):
        raise InvalidInput(f"webhook_url {printable(url)} has no host, or a space or control "
                           "character")
    return url


def refusal(address: str, allow_private: bool) -> str | None:
    """Why a receiver at `address` is refused (None: it is not): loopback, link-local, private
    and other addresses that are not globally routable, unless `allow_private`."""
    ip = ipaddress.ip_address(address.split("%")[0])
    ip = getattr(ip, "ipv4_mapped", None) or ip
    if allow_private or (ip.is_global and not ip.is_multicast):
        return None
    kind = ("loopback" if ip.is_loopback else "link-local" if ip.is_link_local
            else "private" if ip.is_private else "non-public")
    return f"{address} is a {kind} address (webhooks.allow_private is off)"


def literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def check_target(url: str, allow_private: bool, resolve=socket.getaddrinfo) -> None:
    """Refuse a webhook URL the service would not call: its form (`check_url`), then every
    address its host resolves to (`refusal`). Blocking: DNS."""
    host = urllib.parse.urlsplit(check_url(url)).hostname
    addresses = [literal_address(host)] if literal_address(host) else None
    if addresses is None:
        try:
            addresses = [info[4][0] for info in resolve(host, None, type=socket.SOCK_STREAM)]
        except (socket.gaierror, UnicodeError) as exc:
            raise InvalidInput(f"webhook_url host {printable(host)} does not resolve "
                               f"({exc})") from None
    for address in addresses:
        why = refusal(address, allow_private)
        if why:
            raise InvalidInput(f"webhook_url {printable(url)} refused: {host} -> {why}")
