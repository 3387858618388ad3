"""Webhooks without Ray: signatures checked by the `standardwebhooks` package, URLs refused, the
journal side stepped with a fake clock, and the deliverer thread against real receivers on
127.0.0.1."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time

import pytest
from standardwebhooks.webhooks import Webhook

from raydemucs.core.addresses import AddressRefused, guarded_resolver
from raydemucs.core.config import WebhooksConfig
from raydemucs.core.errors import InvalidInput, TaskNotFound
from raydemucs.core.task import TaskRecord, TaskSpec, TaskState, new_task_id
from raydemucs.journal import Journal
from raydemucs.webhooks.deliverer import Deliverer
from raydemucs.webhooks.deliveries import Answer, Deliveries
from raydemucs.webhooks.signing import load_secret, sign
from raydemucs.webhooks.targets import check_events, check_target

from fakes import FakeClock
from support import wait_for


def finished(journal, url, state=TaskState.SUCCEEDED, events=None, **spec) -> TaskRecord:
    """A task of the journal that ended in `state`, with a webhook to `url`."""
    task = TaskSpec(task_id=new_task_id(), project="p", file_id=new_task_id(),
                    input_path="/in.wav", output_dir="/out", webhook_url=url,
                    webhook_events=check_events(events), **spec)
    record = journal.tasks.insert(TaskRecord(spec=task, seq=journal.tasks.next_seq(), submitted_at=time.time()))
    record.state, record.finished_at = state, time.time()
    journal.tasks.save(record)
    return record


def config(**values) -> WebhooksConfig:
    return WebhooksConfig(**{"allow_private": True, "retry_backoff_s": 0.05, "timeout_s": 2.0,
                             **values})


def test_signatures_verify_with_the_standardwebhooks_package(tmp_path):
    secret = load_secret(tmp_path)
    assert secret.startswith("whsec_") and load_secret(tmp_path) == secret
    assert oct(os.stat(tmp_path / "webhook-secret").st_mode & 0o777) == "0o600"
    body, now = json.dumps({"type": "task.succeeded", "data": {"é": 1}}), int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "msg_1", now, body)}
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(Exception):
        Webhook(load_secret(tmp_path / "other")).verify(body, headers)


@pytest.mark.parametrize("url, words", [
    ("file:///etc/passwd", "only http:// and https://"),
    ("ftp://example.com/hook", "only http:// and https://"),
    ("http:///no-host", "no host"),
    ("http://example.com:99999/", "bad port"),
    ("http://127.0.0.1:8000/hook", "names a loopback address"),
    ("http://[::1]/hook", "names a loopback address"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://192.168.1.10/", "private"),
    ("http://localhost:8000/hook", "loopback"),
])
def test_urls_refused_with_private_addresses_off(url, words):
    with pytest.raises(InvalidInput, match=words):
        check_target(url, allow_private=False)


def test_a_name_is_not_resolved_at_submit_but_when_a_delivery_connects(monkeypatch):
    """No DNS at submit (a slow resolver would hold the scheduler); the connection's resolver
    refuses a name that resolves to a private address, without saying which address."""
    from aiohttp.resolver import ThreadedResolver

    def no_dns(*args, **kwargs):
        raise AssertionError("resolved at submit")

    async def private(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": "10.1.2.3", "port": port, "family": family,
                 "proto": 0, "flags": 0}]

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    check_target("https://hooks.internal.example/x", allow_private=False)
    monkeypatch.setattr(ThreadedResolver, "resolve", private)
    async def connect():
        return await guarded_resolver().resolve("hooks.internal.example", 443)

    with pytest.raises(AddressRefused, match="hooks.internal.example resolves to a private") as refused:
        asyncio.run(connect())
    assert "10.1.2.3" not in str(refused.value)


def test_events_asked_for_are_checked():
    assert check_events(None) == ("task.succeeded", "task.failed", "task.cancelled")
    assert check_events("task.started, task.failed") == ("task.started", "task.failed")
    for bad in ("task.done", "", ["task.succeeded", 3]):
        with pytest.raises(InvalidInput, match="webhook_events"):
            check_events(bad)


def test_transitions_journal_the_events_asked_for_once_per_run(tmp_path):
    journal, clock = Journal(tmp_path / "j.db"), FakeClock(time.time())
    deliveries = Deliveries(journal, config(), clock=clock)
    record = finished(journal, "https://example.com/h", TaskState.QUEUED, events="task.started,"
                      "task.succeeded")
    record.state = TaskState.RUNNING
    deliveries.on_transition(record, TaskState.QUEUED)
    deliveries.on_transition(record, TaskState.QUEUED)  # a retry of the same run starts again
    record.state = TaskState.SUCCEEDED
    deliveries.on_transition(record, TaskState.RUNNING)
    events = [d["event"] for d in journal.deliveries.listing(task_id=record.task_id)]
    assert sorted(events) == ["task.started", "task.succeeded"]
    quiet = finished(journal, None)
    deliveries.on_transition(quiet, TaskState.RUNNING)
    unwanted = finished(journal, "https://example.com/h", TaskState.CANCELLED, events="task.failed")
    deliveries.on_transition(unwanted, TaskState.QUEUED)
    assert journal.deliveries.listing(task_id=quiet.task_id) == journal.deliveries.listing(task_id=unwanted.task_id) == []
    body = json.loads(journal.deliveries.listing(task_id=record.task_id)[0]["body"])
    assert body["type"] == "task.succeeded" and body["data"]["task_id"] == record.task_id
    assert body["timestamp"].endswith("Z")


def test_backoff_grows_four_times_then_the_delivery_is_dead(tmp_path):
    journal, clock = Journal(tmp_path / "j.db"), FakeClock(time.time())
    deliveries = Deliveries(journal, config(retry_backoff_s=10.0, max_attempts=4), clock=clock,
                            rng=lambda: 0.5)  # no jitter
    record = finished(journal, "https://example.com/h")
    assert deliveries.add(record, "task.succeeded") and not deliveries.add(record, "task.succeeded")
    waits = []
    for _ in range(4):
        (delivery,) = deliveries.due(10)
        changed = deliveries.attempted(delivery, Answer(500, "answered 500"), clock())
        if changed["next_at"] is not None:
            waits.append(changed["next_at"] - clock())
            assert deliveries.due(10) == []
            clock.advance(waits[-1])
    assert waits == [10.0, 40.0, 160.0]
    (dead,) = deliveries.listing(failed=True)
    assert dead["state"] == "dead" and dead["attempts"] == 4 and dead["last_status"] == 500
    assert len(journal.deliveries.attempts(dead["delivery_id"])) == 4
    again = deliveries.retry(dead["delivery_id"])
    assert again["state"] == "pending" and again["attempts"] == 0 and deliveries.due(10)
    with pytest.raises(TaskNotFound):
        deliveries.retry("msg_nope")


def test_an_end_never_journaled_is_journaled_at_the_next_start(tmp_path):
    journal = Journal(tmp_path / "j.db")
    lost = finished(journal, "https://example.com/h", TaskState.FAILED)  # stopped before on_transition
    deliveries = Deliveries(journal, config())
    assert deliveries.reconcile() == 1 and deliveries.reconcile() == 0
    (delivery,) = journal.deliveries.listing(task_id=lost.task_id)
    assert delivery["event"] == "task.failed" and delivery["state"] == "pending"


def run_deliverer(tmp_path, **values) -> tuple[Journal, Deliverer, str]:
    journal, secret = Journal(tmp_path / "j.db"), load_secret(tmp_path)
    deliverer = Deliverer(journal.path, config(**values), secret)
    deliverer.start()
    return journal, deliverer, secret


def delivered(journal, task_id, state="delivered", timeout_s=30.0) -> dict:
    return wait_for(lambda: next((d for d in journal.deliveries.listing(task_id=task_id)
                                  if d["state"] == state), None), timeout_s)


def test_500s_then_200_is_one_delivery_with_one_webhook_id(tmp_path, receivers):
    receiver = receivers(statuses=(500, 500, 500, 200))
    journal, deliverer, secret = run_deliverer(tmp_path)
    record = finished(journal, receiver.url)
    Deliveries(journal, config(), wake=deliverer.wake).add(record, "task.succeeded")
    delivery = delivered(journal, record.task_id)
    assert delivery["attempts"] == 4 and delivery["last_status"] == 200
    assert len(receiver.got) == 4
    ids = {headers["webhook-id"] for headers, _ in receiver.got}
    assert ids == {delivery["delivery_id"]}
    assert len({body for _, body in receiver.got}) == 1  # the same bytes on every try
    for headers, body in receiver.got:
        assert Webhook(secret).verify(body, headers)["data"]["task_id"] == record.task_id
    answers = [a["status"] for a in journal.deliveries.attempts(delivery["delivery_id"])]
    assert answers == [500, 500, 500, 200]
    deliverer.stop()


def test_a_hanging_receiver_times_out_and_is_retried(tmp_path, receivers):
    receiver = receivers(hang=True)
    journal, deliverer, _ = run_deliverer(tmp_path, timeout_s=0.5, max_attempts=2)
    record = finished(journal, receiver.url)
    Deliveries(journal, config(), wake=deliverer.wake).add(record, "task.succeeded")
    dead = delivered(journal, record.task_id, "dead")
    assert dead["attempts"] == 2 and "no answer within 0.5 s" in dead["last_error"]
    assert len(receiver.got) == 2
    deliverer.stop()


def test_answers_are_kept_as_an_excerpt_and_redirects_are_not_followed(tmp_path, receivers):
    chatty = receivers(body=b"x" * 100_000)
    moved = receivers(statuses=(302,), headers={"Location": chatty.url})
    journal, deliverer, _ = run_deliverer(tmp_path, max_attempts=1)
    add = Deliveries(journal, config(), wake=deliverer.wake).add
    first, second = finished(journal, chatty.url), finished(journal, moved.url)
    add(first, "task.succeeded")
    add(second, "task.succeeded")
    ok = delivered(journal, first.task_id)
    (attempt,) = journal.deliveries.attempts(ok["delivery_id"])
    assert attempt["excerpt"] == "x" * 200
    dead = delivered(journal, second.task_id, "dead")
    assert dead["last_status"] == 302 and "redirects are not followed" in dead["last_error"]
    assert len(chatty.got) == 1  # the redirect was not followed there
    deliverer.stop()


def test_private_addresses_are_refused_when_sending_too(tmp_path, receivers):
    receiver = receivers()
    journal, deliverer, _ = run_deliverer(tmp_path, allow_private=False, max_attempts=1)
    add = Deliveries(journal, config(), wake=deliverer.wake).add
    by_address = finished(journal, receiver.url)
    by_name = finished(journal, receiver.url.replace("127.0.0.1", "localhost"))
    add(by_address, "task.succeeded")
    add(by_name, "task.succeeded")
    for record in (by_address, by_name):
        dead = delivered(journal, record.task_id, "dead")
        assert "refused" in dead["last_error"] and "loopback" in dead["last_error"]
    assert receiver.got == []
    deliverer.stop()


def test_a_refused_connection_is_retried(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/closed"
    journal, deliverer, _ = run_deliverer(tmp_path, max_attempts=2)
    record = finished(journal, url)
    Deliveries(journal, config(), wake=deliverer.wake).add(record, "task.succeeded")
    dead = delivered(journal, record.task_id, "dead")
    assert dead["attempts"] == 2 and dead["last_status"] is None and dead["last_error"]
    deliverer.stop()


def test_the_secret_is_in_the_state_dir_alone_never_in_logs_or_the_journal(tmp_path, receivers,
                                                                          caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(logging.getLogger("raydemucs"), "propagate", True)  # see configure_logging
    failing, fine = receivers(statuses=(500,)), receivers()
    journal, deliverer, secret = run_deliverer(tmp_path, max_attempts=2)
    add = Deliveries(journal, config(), wake=deliverer.wake).add
    dead, ok = finished(journal, failing.url), finished(journal, fine.url)
    add(dead, "task.failed")
    add(ok, "task.succeeded")
    delivered(journal, dead.task_id, "dead")
    delivered(journal, ok.task_id)
    deliverer.stop()
    key = secret.removeprefix("whsec_")
    assert caplog.records and key not in caplog.text
    holders = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert holders == [tmp_path / "webhook-secret"]  # not the journal, nor its WAL


def test_the_deliverer_starts_again_after_an_error_and_says_so(tmp_path, receivers, monkeypatch):
    import raydemucs.webhooks.deliverer as module

    opened, failures = [], []

    def flaky_journal(path):
        opened.append(path)
        if len(opened) == 1:
            raise OSError("unable to open database file")
        return Journal(path)
    monkeypatch.setattr(module, "RESTART_S", 0.05)
    monkeypatch.setattr(module, "Journal", flaky_journal)
    receiver = receivers()
    journal, secret = Journal(tmp_path / "j.db"), load_secret(tmp_path)
    deliverer = Deliverer(journal.path, config(), secret,
                          on_error=lambda job, exc: failures.append((job, str(exc))))
    deliverer.start()
    record = finished(journal, receiver.url)
    Deliveries(journal, config(), wake=deliverer.wake).add(record, "task.succeeded")
    delivered(journal, record.task_id)
    assert failures == [("webhook_deliverer", "unable to open database file")]
    deliverer.stop()
