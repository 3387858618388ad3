"""The door's header rules (raydemucs/http/door.py), the download names and the stem check, as
plain logic: what a Host, an Origin and Sec-Fetch-* headers decide, the door as ASGI middleware
in front of a plain app, and the RFC 6266 names."""
from __future__ import annotations

import asyncio
import json

import pytest

from raydemucs.core.errors import InvalidInput
from raydemucs.http.door import Door, allowed_hosts, came_over_loopback, refusal
from raydemucs.http.stems import attachment, verified
from raydemucs.models.catalogue import check_two_stems

HOSTS = allowed_hosts(("localhost", "127.0.0.1", "[::1]"), "10.0.0.5")


def scope(method="GET", scheme="http", server=("127.0.0.1", 8000),
          client=("127.0.0.1", 5000), **headers) -> dict:
    names = {key.replace("_", "-").lower(): value for key, value in headers.items()}
    names.setdefault("host", "127.0.0.1:8000")
    return {"type": "http", "method": method, "scheme": scheme, "server": server,
            "client": client, "path": "/v1/tasks",
            "headers": [(k.encode(), v.encode()) for k, v in names.items()]}


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:8000", True), ("localhost", True), ("LocalHost.:9", True), ("[::1]:8000", True),
    ("10.0.0.5:8000", True), ("evil.example", False), ("127.0.0.1.evil.example", False),
    ("[::2]", False), ("localhost:notaport", False), ("", False), ("[::1", False),
    ("user@localhost", False),
])
def test_a_host_is_allowed_by_name_whatever_its_port(host, allowed):
    refused = refusal(scope(host=host), HOSTS)
    assert (refused is None) == allowed
    assert allowed or type(refused).__name__ == "MisdirectedRequest"


@pytest.mark.parametrize("method, headers, refused", [
    ("POST", {}, False),  # curl, the Python client, the Node.js module
    ("POST", {"origin": "http://127.0.0.1:8000", "sec_fetch_site": "same-origin"}, False),
    ("POST", {"origin": "http://evil.example"}, True),
    ("POST", {"origin": "null"}, True),
    ("POST", {"origin": "https://127.0.0.1:8000"}, True),  # another scheme
    ("POST", {"origin": "http://127.0.0.1:8001"}, True),  # another port: same site, other origin
    ("POST", {"origin": "http://127.0.0.1:bad"}, True),
    ("DELETE", {"sec_fetch_site": "same-site"}, True),
    ("PUT", {"sec_fetch_site": "cross-site"}, True),
    ("POST", {"sec_fetch_site": "cross-site", "sec_fetch_mode": "navigate"}, True),  # a form
    ("GET", {"sec_fetch_site": "cross-site", "sec_fetch_mode": "cors"}, True),
    ("GET", {"sec_fetch_site": "cross-site", "sec_fetch_mode": "no-cors",
             "sec_fetch_dest": "audio"}, True),
    ("GET", {"sec_fetch_site": "cross-site", "sec_fetch_mode": "navigate",
             "sec_fetch_dest": "iframe"}, True),
    ("GET", {"sec_fetch_site": "cross-site", "sec_fetch_mode": "navigate",
             "sec_fetch_dest": "document"}, False),  # a link to the page
    ("GET", {"sec_fetch_site": "none", "sec_fetch_mode": "navigate"}, False),  # typed address
])
def test_what_another_origin_may_do(method, headers, refused):
    answer = refusal(scope(method, **headers), HOSTS)
    assert (answer is not None) == refused
    assert not refused or type(answer).__name__ == "CrossOrigin"


def test_an_origin_with_the_default_port_is_the_request_own():
    assert refusal(scope("POST", host="localhost", origin="http://localhost"), HOSTS) is None
    assert refusal(scope("POST", scheme="https", host="localhost:443",
                         origin="https://localhost"), HOSTS) is None


@pytest.mark.parametrize("server, client, loopback", [
    (("127.0.0.1", 8000), ("127.0.0.1", 1), True), (("::1", 8000), ("::1", 1), True),
    (("10.0.0.5", 8000), ("10.0.0.9", 1), False), (("10.0.0.5", 8000), ("127.0.0.1", 1), False),
    (("127.0.0.1", 8000), ("10.0.0.9", 1), False), (None, ("127.0.0.1", 1), False),
    (("127.0.0.1", 8000), None, False),
])
def test_only_a_connection_between_loopback_addresses_came_over_loopback(server, client,
                                                                        loopback):
    assert came_over_loopback(scope(server=server, client=client)) == loopback


def test_the_door_answers_one_line_and_the_app_never_runs():
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["type"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    door = Door(app, hosts=lambda: HOSTS)
    asyncio.run(door(scope("POST", origin="http://evil.example"), receive, send))
    assert not reached and sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["error"]["type"] == "CrossOrigin"
    asyncio.run(door(scope(), receive, send))
    asyncio.run(door({"type": "lifespan"}, receive, send))
    assert reached == ["http", "lifespan"]


@pytest.mark.parametrize("name, header", [
    ("default-song.zip", "attachment; filename=\"default-song.zip\"; "
                         "filename*=UTF-8''default-song.zip"),
    ("p-Песня.zip", "attachment; filename=\"p-_____.zip\"; "
                    "filename*=UTF-8''p-%D0%9F%D0%B5%D1%81%D0%BD%D1%8F.zip"),
    ('a "b"\\c.zip', "attachment; filename=\"a _b__c.zip\"; "
                     "filename*=UTF-8''a%20%22b%22%5Cc.zip"),
])
def test_a_download_name_in_any_language_fits_a_header(name, header):
    assert attachment(name) == header
    header.encode("latin-1")


def test_a_body_that_does_not_hash_to_its_etag_is_cut_before_its_last_chunk():
    import hashlib

    async def chunks(*parts):
        for part in parts:
            yield part

    async def sent(*parts, sha256):
        return [chunk async for chunk in verified(chunks(*parts), sha256, "t/vocals")]

    good = hashlib.sha256(b"abc").hexdigest()
    assert asyncio.run(sent(b"a", b"b", b"c", sha256=good)) == [b"a", b"b", b"c"]
    assert asyncio.run(sent(b"a", b"x", b"c", sha256=good)) == [b"a", b"x"]


def test_two_stems_is_judged_by_the_model_stems_when_known():
    check_two_stems("vocals", "m", ["drums", "vocals"])
    check_two_stems("piano", "m", None)  # not known yet: the worker judges
    check_two_stems(None, "m", ["drums"])
    with pytest.raises(InvalidInput, match="two-stems 'piano' is not a stem of model m; "
                                           "choose one of drums, vocals"):
        check_two_stems("piano", "m", ["drums", "vocals"])


@pytest.mark.parametrize("header", ["forwarded", "x-forwarded-for", "x-real-ip"])
def test_a_request_a_proxy_forwarded_over_loopback_is_not_from_loopback(header):
    """A reverse proxy on the same machine connects over loopback for a client elsewhere."""
    assert not came_over_loopback(scope(**{header.replace("-", "_"): "203.0.113.9"}))
