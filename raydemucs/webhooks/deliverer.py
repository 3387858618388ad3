"""Sending webhook deliveries: a thread of its own, with its own event loop, journal connection
and aiohttp session, so that no receiver (slow, hanging, refusing) can hold up the scheduler.

Every attempt is journaled with its answer (a short excerpt of the body, never more), signed for
its moment with the secret of its task's owner; a delivery is sent until a receiver answers 2xx
or `webhooks.max_attempts` are spent.
Addresses are checked when a name resolves, at connection time. The thread restarts after an
error (logged and counted): deliveries never stop for good while the service runs.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import urllib.parse
from typing import Callable

from .. import __version__
from ..core.addresses import guarded_resolver, host_refusal
from ..core.config import WebhooksConfig
from ..core.task import TaskRecord
from ..journal import Journal
from .deliveries import Answer, Deliveries
from .signing import owner_secret, sign

logger = logging.getLogger(__name__)

EXCERPT_BYTES = 200  # what is kept of a receiver's answer
RESTART_S = 1.0  # the thread's loop starts again this long after an error


class Deliverer:
    """Sends due deliveries from a thread of its own, with its own event loop and journal
    connection, so that no receiver (slow, hanging, refusing) can hold up the scheduler."""

    def __init__(self, journal: str, config: WebhooksConfig, secret: str,
                 task_data: Callable[[TaskRecord], dict] = lambda record: record.to_dict(),
                 clock: Callable[[], float] = time.time,
                 on_error: Callable[[str, BaseException], None] | None = None):
        self.journal, self.config, self.secret = journal, config, secret
        self.task_data, self.clock = task_data, clock
        self.on_error = on_error or (lambda job, exc: logger.error("%s failed: %s", job, exc,
                                                                    exc_info=exc))
        self.in_flight: dict[str, asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sending (once: a running deliverer goes on)."""
        if self.running:
            return
        self._thread = threading.Thread(target=self._serve, name="raydemucs-webhooks",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Run the sending loop until `stop`; after an error (its journal, its session), log and
        count it, and start again."""
        while not self._stopping:
            try:
                asyncio.run(self._run())
            except Exception as exc:
                self.on_error("webhook_deliverer", exc)
                time.sleep(RESTART_S)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def wake(self) -> None:
        """Look for due deliveries now (safe from any thread)."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # a loop closing: the next one looks anyway
                loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        """Stop sending; attempts in flight are dropped unrecorded (sent again at the next start)."""
        self._stopping = True
        self.wake()

    async def _run(self) -> None:
        """Every journal call is made here, on this thread's loop: the connection is ours alone."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            journal = Journal(self.journal)
            try:
                await self._send(Deliveries(journal, self.config, self.task_data,
                                            clock=self.clock))
            finally:
                journal.close()
        finally:
            self._loop = self._wake = None

    async def _send(self, deliveries: Deliveries) -> None:
        import aiohttp

        deliveries.reconcile()
        resolver = None if self.config.allow_private else guarded_resolver()
        connector = aiohttp.TCPConnector(resolver=resolver, limit=self.config.max_in_flight)
        async with aiohttp.ClientSession(connector=connector, trust_env=False, headers={
                "User-Agent": f"raydemucs/{__version__}"}) as session:
            while not self._stopping:
                self._wake.clear()  # before looking: a wake from now on is not missed
                try:
                    next_at = self._start_due(session, deliveries)
                except Exception as exc:  # the journal, busy or failing: look again soon
                    self.on_error("webhook_due", exc)
                    next_at = self.clock() + RESTART_S
                with contextlib.suppress(asyncio.TimeoutError):
                    timeout = None if next_at is None else max(0.0, next_at - self.clock())
                    await asyncio.wait_for(self._wake.wait(), timeout)
            attempts = list(self.in_flight.values())
            for attempt in attempts:
                attempt.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)

    def _start_due(self, session, deliveries: Deliveries) -> float | None:
        """Start an attempt for each due delivery there is room for; when to look again (None:
        when woken, by a new event or an attempt's end)."""
        free = self.config.max_in_flight - len(self.in_flight)
        for delivery in deliveries.due(free, self.in_flight):
            self.in_flight[delivery["delivery_id"]] = asyncio.create_task(
                self._attempt(session, deliveries, delivery))
        if len(self.in_flight) >= self.config.max_in_flight:
            return None
        return deliveries.table.next_at(skip=list(self.in_flight))

    def secret_of(self, deliveries: Deliveries, delivery: dict) -> str:
        """The secret of the owner of the delivery's task (see `signing.owner_secret`)."""
        record = deliveries.journal.tasks.get(delivery["task_id"])
        return owner_secret(self.secret, record.spec.owner if record else "")

    async def _attempt(self, session, deliveries: Deliveries, delivery: dict) -> None:
        at = self.clock()
        try:
            answer = await post(session, delivery, self.secret_of(deliveries, delivery),
                                self.config, at)
            deliveries.attempted(delivery, answer, at)
        except Exception as exc:  # sent again once due: the attempt was not journaled
            self.on_error("webhook_attempt", exc)
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
    why = None if config.allow_private else host_refusal(host)
    if why:
        return answer(error=f"refused: {host} is {why}")
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
