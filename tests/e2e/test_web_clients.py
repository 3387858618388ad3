"""The service's two clients for people and old callers, on a real service with API keys: the
page in a real headless Chromium (Debian's, driven by Playwright) and the Node.js module under
`node --test`. Screenshots of each screen are kept in RAYDEMUCS_TEST_ARTIFACTS (default
build/test-artifacts/web)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from raydemucs.core.keys import KeyStore

from support import HttpService, wait_for, write_audio

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("RAYDEMUCS_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts" / "web"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEMS = ["bass", "drums", "other", "vocals"]
CHAIN = {"parts": {"voc": {"model": "demucs_unittest"},  # an ensemble of the offline model
                   "rest": {"model": "demucs_unittest", "input": {"part": "voc", "without": "vocals"}}},
         "stems": {"vocals": {"take": "voc"}, "drums": {"take": "rest"}}}


def system_program(name: str, package: str) -> str:
    found = shutil.which(name)
    assert found, f"`{name}` is not installed: `apt-get install -y {package}` (see the README)"
    return found


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    """A service with API keys for the page and for the Node.js module: `(service, keys)`."""
    service = HttpService(tmp_path_factory.mktemp("clients"), serve_port,
                          workers={"max_workers": 1, "prefetch": 0}, input={"max_file_mb": 3.0},
                          # a dead letter's input, broken in place, under the tests' temp root
                          http={"allow_paths": [str(tmp_path_factory.getbasetemp())],
                                # fewer than the tasks the Node.js module waits for at once
                                "max_streams_per_key": 3},
                          ensembles={"presets": {"chain": CHAIN}})
    keys = {name: KeyStore(service.state).add(name, role="operator", max_priority="high")
            for name in ("page", "node")}  # the operator's own: the whole status, any priority
    wait_for(lambda: service.client.get("/v1/models").status_code == 401, timeout_s=10)
    yield service, keys
    service.close()


def stored_stem(service, key: str, file_id: str, stem: str) -> Path:
    """A stem of a task of the key named `key`, as the service keeps it on disk."""
    owner = KeyStore(service.state).table().named(key).owner
    found = list(service.state.glob(f"results/@{owner}/*/{file_id}/{stem}.*"))
    assert len(found) == 1, found
    return found[0]


# -- the Node.js module ------------------------------------------------------------------------
def test_the_node_module_against_the_service(service, tmp_path):
    service, keys = service
    out = tmp_path / "out"
    run = subprocess.run([system_program("node", "nodejs"), "--test", "--test-reporter=spec",
                          "clients/node/test/"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "RAYDEMUCS_URL": service.url,
                                           "RAYDEMUCS_API_KEY": keys["node"],
                                           "RAYDEMUCS_TEST_OUT": str(out)})
    print(run.stdout[-4000:], run.stderr[-2000:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout or "ℹ fail 0" in run.stdout
    assert "skipped 0" in run.stdout
    written = sorted(out.glob("*/file123/*.wav"))
    assert [path.stem for path in written] == STEMS
    for path in written:
        assert path.read_bytes() == stored_stem(service, "node", "file123", path.stem).read_bytes()


def test_the_webhook_vectors_are_the_standardwebhooks_packages():
    from standardwebhooks import Webhook

    vectors = json.loads((ROOT / "clients/node/test/webhook-vectors.json").read_text())
    for vector in vectors:
        headers = vector["headers"]
        stamp = int(headers["webhook-timestamp"])
        signed = Webhook(vector["secret"]).sign(headers["webhook-id"],
                                                datetime.fromtimestamp(stamp, tz=timezone.utc),
                                                vector["body"])
        fresh = abs(vector["now_s"] - stamp) <= 300
        assert (signed in headers["webhook-signature"].split(" ") and fresh) == vector["valid"], \
            vector["note"]


# -- the page in a real browser ----------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    executable = system_program("chromium", "chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, service):
    """One tab on the page, for the module's tests in order; every URL it asked for is kept."""
    service, _ = service
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True,
                                  bypass_csp=True)  # lets the tests evaluate; the page keeps none
    tab = context.new_page()
    tab.requested, tab.errors = [], []
    tab.on("request", lambda request: tab.requested.append(request.url))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.goto(service.url)
    yield tab
    context.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def state(page) -> dict:
    return page.evaluate("window.raydemucs.player.state()")


def test_the_page_asks_for_a_key_once_and_keeps_it_in_the_tab(page, service):
    _, keys = service
    page.wait_for_selector("#key-dialog[open]")
    screenshot(page, "01-api-key")
    page.fill("#key-input", "rdk_not_a_key")
    page.click("#key-dialog button[type=submit]")
    page.wait_for_selector("#key-dialog[open] #key-reason:has-text('not accepted')")
    page.fill("#key-input", keys["page"])
    page.press("#key-input", "Enter")
    page.wait_for_selector("#live[data-state=live]")
    assert page.locator("select[name=model] option").all_inner_texts() == ["demucs_unittest"]
    page.reload()
    page.wait_for_selector("#live[data-state=live]")
    assert not page.locator("#key-dialog").evaluate("dialog => dialog.open")
    assert page.evaluate("sessionStorage.getItem('raydemucs.apiKey')") == keys["page"]
    assert page.evaluate("localStorage.length") == 0
    assert not page.errors


def test_upload_listen_mute_and_download(page, service, tmp_path):
    service, keys = service
    song = write_audio(tmp_path / "Browser Song.wav", seconds=6.0)
    page.fill("input[name=project]", "browser")
    page.set_input_files("#files", str(song))
    upload = page.locator(".upload[data-state=sent]")
    upload.wait_for()
    assert upload.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    assert "100 %" in upload.inner_text()
    row = page.locator(".task[data-state=succeeded]", has_text="Browser Song")
    row.wait_for(timeout=120_000)
    assert row.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    screenshot(page, "02-tasks")

    row.get_by_role("button", name="Listen Browser Song").click()
    page.wait_for_function("window.raydemucs.player.duration > 0")
    assert sorted(s["name"] for s in state(page)["stems"]) == STEMS
    page.get_by_role("button", name="Play", exact=True).click()
    page.wait_for_function("window.raydemucs.player.state().position > 0.3")
    first = state(page)
    page.wait_for_timeout(400)
    second = state(page)
    for before, after in zip(first["stems"], second["stems"]):
        assert after["position"] > before["position"] > 0  # each stem's own source advances
        assert after["level"] > 0  # and sounds
    assert max(s["position"] for s in second["stems"]) - min(s["position"] for s in second["stems"]) < 1e-6

    page.get_by_role("button", name="Mute vocals").click()
    page.wait_for_function("window.raydemucs.player.state().stems.find(s => s.name == 'vocals').level == 0")
    mixed = {s["name"]: s for s in state(page)["stems"]}
    assert mixed["vocals"]["muted"] and mixed["vocals"]["gain"] == 0
    assert all(mixed[name]["gain"] == 1 and mixed[name]["level"] > 0 for name in ("bass", "drums", "other"))
    assert page.get_by_role("button", name="Mute vocals").get_attribute("aria-pressed") == "true"
    page.locator("#player").evaluate("player => player.scrollIntoView()")
    screenshot(page, "03-player")

    page.get_by_role("button", name="Pause", exact=True).click()
    paused = state(page)["position"]
    page.get_by_role("slider", name="Position").focus()
    page.keyboard.press("ArrowLeft")  # the transport by keyboard
    assert not state(page)["playing"] and state(page)["position"] < paused
    page.get_by_role("button", name="Solo drums").click()
    gains = {s["name"]: s["gain"] for s in state(page)["stems"]}
    assert gains == {"bass": 0, "drums": 1, "other": 0, "vocals": 0}  # (vocals still muted)
    page.get_by_role("button", name="Solo drums").click()
    page.get_by_role("slider", name="Volume of bass").focus()
    page.keyboard.press("Home")  # volume by keyboard: all the way down
    assert {s["name"]: s["gain"] for s in state(page)["stems"]}["bass"] == 0
    page.keyboard.press("End")
    peaks = [url for url in page.requested if "/peaks?" in url]  # waveforms from the summary
    assert sorted(url.split("/stems/")[1].split("/")[0] for url in peaks) == STEMS
    drawn = page.locator(".stem[data-stem=drums] canvas").evaluate(
        "canvas => canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data"
        ".some((value, i) => i % 4 == 3 && value > 0)")
    assert drawn
    with page.expect_download() as download:
        page.get_by_role("button", name="Download drums").click()
    saved = Path(download.value.path())
    assert saved.read_bytes() == stored_stem(service, "page", "Browser Song", "drums").read_bytes()
    assert download.value.suggested_filename == "Browser Song - drums.wav"
    with page.expect_download() as download:
        page.get_by_role("button", name="Download all (zip)").click()
    assert download.value.suggested_filename == "browser-Browser Song.zip"
    with zipfile.ZipFile(download.value.path()) as archive:
        for stem in STEMS:
            stored = stored_stem(service, "page", "Browser Song", stem)
            assert archive.read(f"Browser Song/{stored.name}") == stored.read_bytes()
    assert not page.errors


def test_refused_uploads_show_the_servers_message(page, tmp_path):
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio at all")
    big = write_audio(tmp_path / "big.wav", seconds=20.0)  # 3.4 MB, over the service's 3 MB
    page.set_input_files("#files", [str(notes), str(big)])
    for name, message in [("notes.wav", "input notes.wav is not a decodable audio file"),
                          ("big.wav", "the body is 3.4 MB, over the 3 MB limit (input.max_file_mb)")]:
        refused = page.locator(".upload[data-state=refused]", has_text=name)
        refused.wait_for()
        assert refused.locator("[role=alert]").inner_text() == message
    page.locator("#new-task").scroll_into_view_if_needed()
    screenshot(page, "06-uploads")
    page.get_by_role("button", name="Dismiss notes.wav").click()
    assert page.locator(".upload", has_text="notes.wav").count() == 0


def test_a_preset_from_the_select_runs_as_one_task(page, service, tmp_path):
    service, keys = service
    page.select_option("select[name=preset]", "chain")
    assert page.locator("select[name=model]").is_disabled()
    page.set_input_files("#files", str(write_audio(tmp_path / "Preset Song.wav", seconds=2.0)))
    page.locator(".task[data-state=succeeded]", has_text="Preset Song").wait_for(timeout=120_000)
    page.select_option("select[name=preset]", "")
    tasks = service.client.get("/v1/tasks", headers={"Authorization": f"Bearer {keys['page']}"})
    done = next(t for t in tasks.json()["tasks"] if t["file_id"] == "Preset Song")
    assert sorted(done["outputs"]) == ["drums", "vocals"]


def test_cancel_and_retry_from_the_list(page, tmp_path):
    page.set_input_files("#files", str(write_audio(tmp_path / "Long Song.wav", seconds=10.0)))
    row = page.locator(".task", has_text="Long Song")
    row.get_by_role("button", name="Cancel Long Song").click()
    page.locator(".task[data-state=cancelled]", has_text="Long Song").wait_for()
    page.locator("#tasks").scroll_into_view_if_needed()
    screenshot(page, "07-task-states")
    row.get_by_role("button", name="Retry Long Song").click()
    page.locator(".task[data-state=succeeded]", has_text="Long Song").wait_for(timeout=120_000)


def test_the_operator_view_shows_the_workers(page):
    page.get_by_role("link", name="Operator").click()
    worker = page.locator("#op-workers tbody tr").first
    # a worker cancelled mid-track (above) or recycled for its memory shows "restarting" a while
    expect(worker.locator("td").nth(2)).to_have_text(re.compile(r"^(idle|busy)$"), timeout=60_000)
    cells = worker.locator("td").all_text_contents()
    assert cells[0] == "worker-0" and cells[3] == "demucs_unittest"
    assert int(page.locator(".tile[data-count=succeeded] .tile-value").inner_text()) >= 2
    assert page.get_by_role("link", name="Ray dashboard ↗").get_attribute("href").endswith(":8265/")
    screenshot(page, "04-operator")


def shown_bytes(count: int) -> str:
    """A byte count as the page writes it (dom.js `bytes`)."""
    value, unit = float(count), 0
    while value >= 1024 and unit < 3:
        value, unit = value / 1024, unit + 1
    return f"{value:.{1 if unit and value < 10 else 0}f} {['B', 'KB', 'MB', 'GB'][unit]}"


def test_a_purged_task_shows_its_stems_gone_and_the_operator_view_what_is_held(page, service):
    service, keys = service
    headers = {"Authorization": f"Bearer {keys['page']}"}
    listed = service.client.get("/v1/tasks?state=succeeded", headers=headers).json()["tasks"]
    [song] = [task for task in listed if task["file_id"] == "Long Song"]
    answer = service.client.delete(f"/v1/tasks/{song['task_id']}?purge=true", headers=headers)
    assert answer.status_code == 200, answer.text
    page.get_by_role("link", name="Separate").click()
    row = page.locator(".task", has_text="Long Song")
    expect(row.locator(".task-meta")).to_contain_text("stems deleted (retention)")
    expect(row.get_by_role("button", name="Listen Long Song")).to_have_count(0)

    page.get_by_role("link", name="Operator").click()
    stems = page.locator("[data-held=Stems]")

    def shows_what_the_service_holds() -> bool:
        held = service.client.get("/v1/status", headers=headers).json()["retention"]
        return stems.inner_text() == (f"Stems: {shown_bytes(held['results_bytes'])} held, each "
                                      "kept 7 days after their task ended")

    wait_for(shows_what_the_service_holds, timeout_s=30)
    assert page.locator("[data-held=Uploads]").inner_text().endswith("kept 7 days after its last task")
    assert page.locator(".tile[data-delivery=dead] .tile-value").inner_text() == "0"
    screenshot(page, "09-webhooks-retention")


def test_a_failed_task_is_a_dead_letter_retried_from_the_operator_view(page, service, tmp_path):
    service, keys = service
    headers = {"Authorization": f"Bearer {keys['page']}"}
    ahead = write_audio(tmp_path / "Ahead.wav", seconds=10.0)  # keeps the one worker busy
    song = write_audio(tmp_path / "Dead Song.wav", seconds=1.0)
    for path in (ahead, song):
        answer = service.client.post("/v1/tasks", headers=headers,
                                     json={"input": str(path), "project": "dead"})
        assert answer.status_code == 202, answer.text
    song.write_bytes(b"no longer audio")  # checked when queued; broken when it runs
    row = page.locator("#op-dead tbody tr", has_text="Dead Song")
    row.wait_for(timeout=120_000)
    assert "Dead Song" in row.inner_text() and "dead" in row.inner_text()
    assert page.locator(".tile[data-count=failed] .tile-value").inner_text() == "1"
    screenshot(page, "08-dead-letters")
    write_audio(song, seconds=1.0)
    row.get_by_role("button", name="Retry Dead Song").click()
    row.wait_for(state="detached")
    page.locator(".task[data-state=succeeded]", has_text="Dead Song").wait_for(state="attached",
                                                                               timeout=120_000)
    page.locator(".tile[data-count=failed] .tile-value", has_text="0").wait_for()


def test_no_polling_loop_the_page_waits_on_its_event_streams(page):
    asked = len(page.requested)
    page.wait_for_timeout(5000)  # idle on the operator view, which the status stream keeps live
    assert page.requested[asked:] == []
    streams = [url.split("/v1/")[1] for url in page.requested if url.endswith("events")]
    assert {"events", "status/events"} == set(streams)
    assert not [url for url in page.requested if url.endswith("/v1/status")]


def test_every_control_is_named_and_reached_by_tab(page):
    page.evaluate("location.hash = '#separate'")
    page.get_by_role("button", name="Listen Browser Song").click()
    page.wait_for_function("window.raydemucs.player.duration > 0")
    unnamed = page.evaluate("""[...document.querySelectorAll('button, input, select, a[href]')]
        .filter((node) => node.checkVisibility() || node.id == 'files')
        .filter((node) => !(node.getAttribute('aria-label') || node.labels?.[0]?.innerText.trim()
                            || node.innerText.trim()))
        .map((node) => node.outerHTML)""")
    assert unnamed == []
    page.locator("body").focus()
    reached = set()
    for _ in range(80):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("""(() => { const node = document.activeElement;
            return node.getAttribute('aria-label') || node.name || node.innerText.trim(); })()"""))
    expected = {"Play", "Position", "Close player", "Download all (zip)", "Listen Browser Song",
                "files", "model", "preset", "two_stems", "format", "priority", "project", "Forget API key",
                "Operator"}  # (Long Song's stems were purged above: nothing to listen to)
    for stem in STEMS:
        expected |= {f"Mute {stem}", f"Solo {stem}", f"Volume of {stem}", f"Download {stem}"}
    assert expected <= reached, expected - reached


def test_readable_at_phone_width(page):
    page.set_viewport_size({"width": 390, "height": 844})
    for view in ("#operator", "#separate"):
        page.evaluate(f"location.hash = '{view}'")
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, view
    page.get_by_role("button", name="Listen Browser Song").click()
    page.wait_for_function("window.raydemucs.player.duration > 0")
    page.locator("#player").evaluate("player => player.scrollIntoView()")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "05-phone-player")
    assert not page.errors
    key = page.evaluate("sessionStorage.getItem('raydemucs.apiKey')")
    assert not [url for url in page.requested if key in url]  # never in a URL
