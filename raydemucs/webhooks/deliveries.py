"""Webhooks: a task's events POSTed to its `webhook_url`, signed as Standard Webhooks asks,
journaled, and retried off the scheduler's loop.

An event is committed to the journal as a delivery by the scheduler's listener
(`Deliveries.on_transition`), right after the transition it tells of; a stop between those two
commits is made good at the next start (`Deliveries.reconcile`). A `Deliverer` thread, with its
own event loop and journal connection, sends what is due: every attempt is journaled with its
answer (a short excerpt of the body, never more), and an event is sent until a receiver answers
2xx or `webhooks.max_attempts` are spent: at least once, never lost. The `webhook-id` of an
event is the same on every attempt, so a receiver can drop duplicates.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .. import __version__
from ..core.config import WebhooksConfig
from ..core.errors import InvalidInput, TaskNotFound
from ..core.names import printable
from ..core.task import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS, TaskRecord, TaskState
from ..journal.tasks import TaskStore

logger = logging.getLogger(__name__)

SECRET_FILE = "webhook-secret"
SECRET_PREFIX = "whsec_"
EXCERPT_BYTES = 200  # what is kept of a receiver's answer
BACKOFF_FACTOR = 4  # each retry waits this many times longer than the one before
MAX_URL_CHARS = 2048
PUBLIC_FIELDS = ("delivery_id", "event", "url", "state", "attempts", "last_status",
                 "last_error", "created_at", "next_at", "ended_at")


# -- the secret and the signature -----------------------------------------------------------------
def load_secret(state_dir: Path) -> str:
    """The service's signing secret, `whsec_` and base64 of 32 random bytes, made on first use
    in `STATE_DIR/webhook-secret` (mode 0600)."""
    path = state_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    partial = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(partial, path)  # the first of two starts at once wins; the other reads its secret
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    return path.read_text().strip()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """`webhook-signature`: `v1,` and base64 of HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


# -- what a task may ask for -----------------------------------------------------------------------
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


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def check_target(url: str, allow_private: bool, resolve=socket.getaddrinfo) -> None:
    """Refuse a webhook URL the service would not call: its form (`check_url`), then every
    address its host resolves to (`refusal`). Blocking: DNS."""
    host = urllib.parse.urlsplit(check_url(url)).hostname
    addresses = [_literal(host)] if _literal(host) else None
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


# -- the journal side -----------------------------------------------------------------------------
def event_of(record: TaskRecord, previous: TaskState | None) -> str | None:
    """The event a transition is: `task.started` when a queued task starts, `task.<state>`
    when it ends; None for the others."""
    if record.state is TaskState.RUNNING and previous is TaskState.QUEUED:
        return "task.started"
    return f"task.{record.state.value}" if record.state.is_terminal() else None


def delivery_id(record: TaskRecord, event: str) -> str:
    """The `webhook-id` of one event of one run of a task (a rerun is another run)."""
    digest = hashlib.sha256(f"{record.task_id}:{record.seq}:{event}".encode()).hexdigest()
    return f"msg_{digest[:24]}"


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status (None without one), an excerpt, why it failed if it did."""

    status: int | None
    error: str | None = None
    excerpt: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Deliveries:
    """Deliveries in the journal: events recorded, what is due, attempts and their outcomes.

    `task_data(record)` is the record a body carries (the HTTP API's view when it runs);
    `wake()` tells the deliverer that something is due.
    """

    def __init__(self, store: TaskStore, config: WebhooksConfig,
                 task_data: Callable[[TaskRecord], dict] = lambda record: record.to_dict(),
                 wake: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random):
        self.store, self.config = store, config
        self.task_data, self.wake = task_data, wake
        self.clock, self.rng = clock, rng

    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        """The scheduler's listener: journal the event a transition is, if its task asked for it.
        Never raises into the scheduler (`reconcile` makes a lost end good)."""
        event = event_of(record, previous)
        if event is None or not record.spec.webhook_url or event not in record.spec.webhook_events:
            return
        try:
            self.add(record, event)
        except Exception:
            logger.exception("task %s: %s not journaled for its webhook", record.task_id, event)

    def add(self, record: TaskRecord, event: str) -> bool:
        """Journal one event of a task as a pending delivery, due now, and wake the deliverer;
        False if it was journaled already."""
        now = self.clock()
        body = json.dumps({"type": event, "timestamp": iso_time(now),
                           "data": self.task_data(record)}, ensure_ascii=False)
        added = self.store.add_delivery({
            "delivery_id": delivery_id(record, event), "task_id": record.task_id,
            "run_seq": record.seq, "event": event, "url": record.spec.webhook_url, "body": body,
            "state": "pending", "attempts": 0, "created_at": now, "next_at": now})
        if added:
            self.wake()
        return added

    def reconcile(self) -> int:
        """Journal the ends of finished tasks that a stop kept from being journaled."""
        added = 0
        for record in self.store.unannounced():
            event = f"task.{record.state.value}"
            if event in record.spec.webhook_events:
                added += self.add(record, event)
        if added:
            logger.info("%d webhook event(s) journaled after a stop", added)
        return added

    def due(self, limit: int, skip: Iterable[str] = ()) -> list[dict]:
        """Up to `limit` pending deliveries due now, none of `skip` (those in flight)."""
        skip = set(skip)
        found = self.store.due_deliveries(self.clock(), limit + len(skip))
        return [delivery for delivery in found if delivery["delivery_id"] not in skip][:limit]

    def retry_delay_s(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed attempt: exponential, jittered by +-50%."""
        base = self.config.retry_backoff_s * BACKOFF_FACTOR ** (attempts - 1)
        return base * (0.5 + self.rng())

    def attempted(self, delivery: dict, answer: Answer, at: float) -> dict:
        """Journal an attempt started at `at` and what it leads to: delivered, a later try, or
        dead after `max_attempts`; the delivery's new columns."""
        attempts = delivery["attempts"] + 1
        now = self.clock()
        if answer.ok:
            change = {"state": "delivered", "next_at": None, "ended_at": now}
        elif attempts >= self.config.max_attempts:
            change = {"state": "dead", "next_at": None, "ended_at": now}
        else:
            change = {"state": "pending", "next_at": now + self.retry_delay_s(attempts)}
        change.update(attempts=attempts, last_status=answer.status, last_error=answer.error)
        self.store.update_delivery(delivery["delivery_id"], attempt={
            "at": at, "duration_s": answer.duration_s, "status": answer.status,
            "error": answer.error, "excerpt": answer.excerpt}, **change)
        logger.info("webhook %s (%s of task %s) attempt %d: %s -> %s", delivery["delivery_id"],
                    delivery["event"], delivery["task_id"], attempts,
                    answer.error or f"answered {answer.status}", change["state"])
        return {**delivery, **change}

    def retry(self, delivery_id: str) -> dict:
        """Send a delivery again (a dead one gets a fresh set of attempts), now."""
        delivery = self.store.delivery(delivery_id)
        if delivery is None:
            raise TaskNotFound(f"no webhook delivery with id {delivery_id!r}")
        self.store.update_delivery(delivery_id, state="pending", attempts=0,
                                   next_at=self.clock(), ended_at=None)
        self.wake()
        return public(self.store.delivery(delivery_id))

    def of_task(self, task_id: str) -> list[dict]:
        return [public(delivery) for delivery in self.store.deliveries(task_id=task_id)]

    def listing(self, failed: bool = False, limit: int = 100) -> list[dict]:
        """Deliveries, newest first; `failed`: the dead and those whose last attempt failed."""
        if not failed:
            return [public(delivery) for delivery in self.store.deliveries(limit=limit)]
        found = self.store.deliveries(state="dead", limit=limit) + [
            delivery for delivery in self.store.deliveries(state="pending", limit=limit)
            if delivery["attempts"]]
        found.sort(key=lambda delivery: delivery["created_at"], reverse=True)
        return [public(delivery) for delivery in found[:limit]]


def public(delivery: dict) -> dict:
    """A delivery as views show it: no body (the task is there already)."""
    return {key: delivery[key] for key in PUBLIC_FIELDS}


# -- the sending side -----------------------------------------------------------------------------
def _guarded_resolver(allow_private: bool):
    """An aiohttp resolver that refuses the addresses `refusal` refuses: checked on what a
    name resolves to at connection time, so no later DNS answer can slip past the check."""
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import ThreadedResolver

    class GuardedResolver(AbstractResolver):
        def __init__(self):
            self.inner = ThreadedResolver()

        async def resolve(self, host, port=0, family=socket.AF_INET):
            found = await self.inner.resolve(host, port, family)
            for entry in found:
                why = refusal(entry["host"], allow_private)
                if why:
                    raise OSError(f"refused: {host} -> {why}")
            return found

        async def close(self):
            await self.inner.close()

    return GuardedResolver()


class Deliverer:
    """Sends due deliveries from a thread of its own, with its own event loop and journal
    connection, so that no receiver (slow, hanging, refusing) can hold up the scheduler."""

    def __init__(self, journal: str, config: WebhooksConfig, secret: str,
                 task_data: Callable[[TaskRecord], dict] = lambda record: record.to_dict(),
                 clock: Callable[[], float] = time.time):
        self.journal, self.config, self.secret = journal, config, secret
        self.task_data, self.clock = task_data, clock
        self.in_flight: dict[str, asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),),
                                        name="raydemucs-webhooks", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def wake(self) -> None:
        """Look for due deliveries now (safe from any thread)."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        """Stop sending; attempts in flight are dropped unrecorded (sent again at the next start)."""
        self._stopping = True
        self.wake()

    async def _run(self) -> None:
        """Every journal call is made here, on this thread's loop: the connection is ours alone."""
        import aiohttp

        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        deliveries = Deliveries(TaskStore(self.journal), self.config, self.task_data,
                                clock=self.clock)
        deliveries.reconcile()
        connector = aiohttp.TCPConnector(resolver=_guarded_resolver(self.config.allow_private),
                                         limit=self.config.max_in_flight)
        async with aiohttp.ClientSession(connector=connector, trust_env=False, headers={
                "User-Agent": f"raydemucs/{__version__}"}) as session:
            while not self._stopping:
                self._wake.clear()  # before looking: a wake from now on is not missed
                try:
                    next_at = self._start_due(session, deliveries)
                except Exception:
                    logger.exception("webhook deliveries could not be read; trying again")
                    next_at = self.clock() + 1.0
                with contextlib.suppress(asyncio.TimeoutError):
                    timeout = None if next_at is None else max(0.0, next_at - self.clock())
                    await asyncio.wait_for(self._wake.wait(), timeout)
            attempts = list(self.in_flight.values())
            for attempt in attempts:
                attempt.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
        deliveries.store.close()

    def _start_due(self, session, deliveries: Deliveries) -> float | None:
        """Start an attempt for each due delivery there is room for; when to look again (None:
        when woken, by a new event or an attempt's end)."""
        free = self.config.max_in_flight - len(self.in_flight)
        for delivery in deliveries.due(free, self.in_flight):
            self.in_flight[delivery["delivery_id"]] = asyncio.create_task(
                self._attempt(session, deliveries, delivery))
        if len(self.in_flight) >= self.config.max_in_flight:
            return None
        return deliveries.store.next_delivery_at(skip=list(self.in_flight))

    async def _attempt(self, session, deliveries: Deliveries, delivery: dict) -> None:
        at = self.clock()
        try:
            answer = await post(session, delivery, self.secret, self.config, at)
            deliveries.attempted(delivery, answer, at)
        except Exception:
            logger.exception("webhook %s: attempt not journaled", delivery["delivery_id"])
        finally:
            self.in_flight.pop(delivery["delivery_id"], None)
            self._wake.set()


async def post(session, delivery: dict, secret: str, config: WebhooksConfig,
               at: float) -> Answer:
    """One attempt: the delivery's body POSTed, signed for this moment; redirects not followed."""
    import aiohttp

    timestamp = int(at)
    headers = {"Content-Type": "application/json", "webhook-id": delivery["delivery_id"],
               "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, delivery["delivery_id"], timestamp,
                                         delivery["body"])}
    started = time.monotonic()

    def answer(status=None, error=None, excerpt=b"") -> Answer:
        return Answer(status, error, excerpt.decode("utf-8", "replace"),
                      time.monotonic() - started)

    host = urllib.parse.urlsplit(delivery["url"]).hostname or ""
    why = _literal(host) and refusal(host, config.allow_private)
    if why:
        return answer(error=f"refused: {why}")
    try:
        async with session.post(delivery["url"], data=delivery["body"].encode(), headers=headers,
                                allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=config.timeout_s)) as response:
            try:
                excerpt = await response.content.read(EXCERPT_BYTES)
            except (asyncio.TimeoutError, aiohttp.ClientError):
                excerpt = b""
            if 200 <= response.status < 300:
                return answer(response.status, excerpt=excerpt)
            return answer(response.status, f"answered {response.status}"
                          + (" (redirects are not followed)" if 300 <= response.status < 400
                             else ""), excerpt)
    except asyncio.TimeoutError:
        return answer(error=f"no answer within {config.timeout_s:g} s (webhooks.timeout_s)")
    except aiohttp.ClientConnectorError as exc:
        return answer(error=str(exc.os_error) if exc.os_error else str(exc))
    except aiohttp.ClientError as exc:
        return answer(error=f"{type(exc).__name__}: {exc}")
