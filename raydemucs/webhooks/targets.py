"""What a task may ask of webhooks: its events, and a URL the service would call (http or https,
a public address unless `webhooks.allow_private`). Free of aiohttp, the journal and DNS: the
client and the scheduler check these before they queue."""
from __future__ import annotations

import urllib.parse
from typing import Iterable

from ..core.addresses import host_refusal
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


def check_target(url: str, allow_private: bool) -> None:
    """Refuse a webhook URL the service would not call, knowing no more than the URL (no DNS:
    a slow resolver holds nothing up): its form (`check_url`), then its host when it is an
    address or a loopback name (`core.addresses.host_refusal`). Names are checked on what they
    resolve to when the call is made."""
    host = urllib.parse.urlsplit(check_url(url)).hostname
    why = None if allow_private else host_refusal(host)
    if why:
        raise InvalidInput(f"webhook_url {printable(url)} names {why} (webhooks.allow_private "
                           "is off)")
