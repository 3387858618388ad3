"""Batches on a real service, from the CLI: a folder with a bad file in it, reruns that skip what
is done, a list, --strict, and the --batch forms of status, list, wait, cancel and retry."""
from __future__ import annotations

import json

import pytest

from support import run_cli, write_audio


@pytest.fixture
def cli_env(make_service, ray_cluster):
    manager = make_service(workers={"max_workers": 2})
    return manager, {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": manager.config.service.name,
                     "RAYDEMUCS_SERVICE_STATE_DIR": manager.config.service.state_dir}


def music(root, names, seconds=0.5):
    for i, name in enumerate(names):
        write_audio(root / name, seconds=seconds, seed=i)
    return root


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_folder_is_one_batch_a_bad_file_is_reported_and_a_rerun_skips_what_is_done(
        cli_env, tmp_path):
    manager, env = cli_env
    folder = music(tmp_path / "music", ["a/song.wav", "b/song.wav", "top.flac"])
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really")
    first = run_cli("submit", folder, "--project", "cat", "-o", tmp_path / "out", "--wait",
                    "--json", env=env)
    assert first.returncode == 1, first.stderr  # one input refused
    lines = json_lines(first.stdout)
    summary = next(line["batch"] for line in lines if "batch" in line)
    assert (summary["items"], summary["queued"], summary["refused"]) == (4, 3, 1)
    assert "broken.wav" in summary["refusals"][0]["input"]
    assert sorted(p.name for p in (tmp_path / "out" / "cat").iterdir()) == [
        "a__song", "b__song", "top"]
    records = [line for line in lines if line.get("state") == "succeeded" and "spec" in line]
    assert {r["spec"]["batch_id"] for r in records} == {summary["batch_id"]}
    again = run_cli("submit", folder, "--project", "cat", "-o", tmp_path / "out", "--json", env=env)
    rerun = next(line["batch"] for line in json_lines(again.stdout) if "batch" in line)
    assert (rerun["batch_id"], rerun["skipped"], rerun["queued"]) == (summary["batch_id"], 3, 0)
    status = run_cli("status", "--batch", summary["batch_id"], "--json", env=env)
    view = json.loads(status.stdout)
    assert view["by_state"]["succeeded"] == 3 and view["done"] and view["audio_s_done"] > 1.4


def test_a_list_strict_and_the_batch_commands(cli_env, tmp_path):
    manager, env = cli_env
    # long enough that neither ends before `cancel --batch` (a CLI start) reaches them
    folder = music(tmp_path / "in", ["one.wav", "two.wav"], seconds=120.0)
    listing = tmp_path / "list.csv"
    listing.write_text(f"input,file_id,priority\n{folder / 'one.wav'},first,low\n"
                       f"{folder / 'two.wav'},second,low\n{tmp_path / 'missing.wav'},gone,low\n")
    strict = run_cli("submit", "--from", listing, "-o", tmp_path / "out", "--strict", env=env)
    assert strict.returncode == 2 and "1 of 3 inputs refused (--strict)" in strict.stderr
    assert manager.get_status()["queue"]["queued"] == 0
    listing.write_text("\n".join(listing.read_text().splitlines()[:3]) + "\n")
    submitted = run_cli("submit", "--from", listing, "-o", tmp_path / "out", "--segment", "1",
                        "--json", env=env)
    batch_id = next(line["batch"] for line in json_lines(submitted.stdout) if "batch" in line)[
        "batch_id"]
    cancelled = run_cli("cancel", "--batch", batch_id, env=env)
    assert cancelled.returncode == 0 and "2 queued or running task(s) cancelled" in cancelled.stdout
    waited = run_cli("wait", "--batch", batch_id, "--timeout", "60", env=env)
    assert waited.returncode == 1 and "cancelled 2" in waited.stdout
    failed = run_cli("list", "--batch", batch_id, "--state", "cancelled", "--json", env=env)
    assert sorted(r["file_id"] for r in json_lines(failed.stdout)) == ["first", "second"]
    retried = run_cli("retry", "--batch", batch_id, env=env)
    assert "2 failed or cancelled task(s) queued again" in retried.stdout
    assert manager.batch(batch_id)["by_state"]["cancelled"] == 0
    manager.cancel_batch(batch_id)


def test_past_a_few_dozen_tasks_one_bar_for_the_batch(cli_env, tmp_path):
    manager, env = cli_env
    folder = music(tmp_path / "many", [f"clip{i:02}.wav" for i in range(30)], seconds=0.2)
    ran = run_cli("submit", folder, "-o", tmp_path / "out", "--wait", env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "batch b" in ran.stdout and "30 tasks: succeeded 30" in ran.stdout
    assert "clip00" not in ran.stderr  # no bar per task
