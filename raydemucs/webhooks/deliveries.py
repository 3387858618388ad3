"""Webhook deliveries on the journal's side: a task's events recorded as deliveries when they
happen, what is due, each attempt and what it leads to (delivered, a later try, dead).

An event is committed as a delivery by the scheduler's listener (`Deliveries.on_transition`),
right after the transition it tells of; a stop between those two commits is made good at the next
start (`Deliveries.reconcile`). The `webhook-id` of an event is the same on every attempt, so a
receiver can drop duplicates. `raydemucs.webhooks.deliverer` sends them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from ..core.config import WebhooksConfig
from ..core.errors import TaskNotFound
from ..core.task import TaskRecord, TaskState
from ..journal import Journal

logger = logging.getLogger(__name__)

BACKOFF_FACTOR = 4  # each retry waits this many times longer than the one before
VIEW_FIELDS = ("delivery_id", "event", "url", "state", "attempts", "last_status",
               "last_error", "created_at", "next_at", "ended_at")


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

    def __init__(self, journal: Journal, config: WebhooksConfig,
                 task_data: Callable[[TaskRecord], dict] = lambda record: record.to_dict(),
                 wake: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random):
        self.journal, self.table, self.config = journal, journal.deliveries, config
        self.task_data, self.wake = task_data, wake
        self.clock, self.rng = clock, rng

    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        """The scheduler's listener: journal the event a transition is, if its task asked for it
        (one lost to a failure here is journaled by the next start's `reconcile`)."""
        event = event_of(record, previous)
        if event is not None and record.spec.webhook_url and event in record.spec.webhook_events:
            self.add(record, event)

    def add(self, record: TaskRecord, event: str) -> bool:
        """Journal one event of a task as a pending delivery, due now, and wake the deliverer;
        False if it was journaled already."""
        now = self.clock()
        body = json.dumps({"type": event, "timestamp": iso_time(now),
                           "data": self.task_data(record)}, ensure_ascii=False)
        added = self.table.add({
            "delivery_id": delivery_id(record, event), "task_id": record.task_id,
            "run_seq": record.seq, "event": event, "url": record.spec.webhook_url, "body": body,
            "state": "pending", "attempts": 0, "created_at": now, "next_at": now})
        if added:
            self.wake()
        return added

    def reconcile(self) -> int:
        """Journal the ends of finished tasks that a stop kept from being journaled."""
        added = 0
        for record in self.table.unannounced():
            event = f"task.{record.state.value}"
            if event in record.spec.webhook_events:
                added += self.add(record, event)
        if added:
            logger.info("%d webhook event(s) journaled after a stop", added)
        return added

    def due(self, limit: int, skip: Iterable[str] = ()) -> list[dict]:
        """Up to `limit` pending deliveries due now, none of `skip` (those in flight)."""
        skip = set(skip)
        found = self.table.due(self.clock(), limit + len(skip))
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
        self.table.update(delivery["delivery_id"], attempt={
            "at": at, "duration_s": answer.duration_s, "status": answer.status,
            "error": answer.error, "excerpt": answer.excerpt}, **change)
        logger.info("webhook %s (%s of task %s) attempt %d: %s -> %s", delivery["delivery_id"],
                    delivery["event"], delivery["task_id"], attempts,
                    answer.error or f"answered {answer.status}", change["state"])
        return {**delivery, **change}

    def retry(self, delivery_id: str) -> dict:
        """Send a delivery again (a dead one gets a fresh set of attempts), now."""
        delivery = self.table.get(delivery_id)
        if delivery is None:
            raise TaskNotFound(f"no webhook delivery with id {delivery_id!r}")
        self.table.update(delivery_id, state="pending", attempts=0,
                                   next_at=self.clock(), ended_at=None)
        self.wake()
        return delivery_view(self.table.get(delivery_id))

    def of_task(self, task_id: str) -> list[dict]:
        return [delivery_view(delivery) for delivery in self.table.listing(task_id=task_id)]

    def listing(self, failed: bool = False, limit: int = 100) -> list[dict]:
        """Deliveries, newest first; `failed`: the dead and those whose last attempt failed."""
        if not failed:
            return [delivery_view(delivery) for delivery in self.table.listing(limit=limit)]
        found = self.table.listing(state="dead", limit=limit) + [
            delivery for delivery in self.table.listing(state="pending", limit=limit)
            if delivery["attempts"]]
        found.sort(key=lambda delivery: delivery["created_at"], reverse=True)
        return [delivery_view(delivery) for delivery in found[:limit]]


def delivery_view(delivery: dict) -> dict:
    """A delivery as views show it: no body (the task is there already)."""
    return {key: delivery[key] for key in VIEW_FIELDS}
