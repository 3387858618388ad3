"""notebooks/catalog.ipynb runs top to bottom on the session's Ray (tests/e2e/test_notebook.py
checks the committed file and runs it): a real Jupyter kernel joins the test session's Ray by its
explicit address, starts its own uniquely named service with its own journal, submits a folder of
short clips and one broken file as one batch, plots it, submits it again and stops the service
it started.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from test_notebook import CATALOG, execute_notebook, images

CLIPS = 4
# Appended after the last cell: what the notebook's two submits counted, for the test to read.
READOUT = "import json\nprint(json.dumps({'first': summary.to_dict(), 'again': again.to_dict()}))"


def run_notebook(tmp_path: Path, address: str, service: str, project: str) -> tuple[dict, str]:
    """Execute the notebook with a few 1 s clips; the two submits' summaries, and its text."""
    params = {"RAY_ADDRESS": address, "PROFILE": "test", "MODEL": "demucs_unittest",
              "REPO": None, "INPUT_DIR": str(tmp_path / "inputs"),
              "OUTPUT_DIR": str(tmp_path / "separated"), "PROJECT": project,
              "CLIPS": CLIPS, "CLIP_SECONDS": 1.0, "TIMEOUT_S": 240.0}
    nb, text = execute_notebook(CATALOG, tmp_path, address, service, params, last_cell=READOUT)
    assert len(images(nb)) == 2, "the throughput and the Gantt chart"
    return json.loads(nb.cells[-1].outputs[0]["text"]), text


@pytest.mark.slow
def test_catalog_runs_top_to_bottom(ray_cluster, tmp_path):
    """One batch: every clip separated, the broken file refused and never queued, nothing queued
    by the second submit, and the service the notebook started stopped."""
    import ray

    from raydemucs.client.connection import NAMESPACE
    from raydemucs.journal import Journal
    from raydemucs.scheduler.service import JOURNAL_FILE

    service = f"nb{uuid.uuid4().hex[:8]}"
    summaries, text = run_notebook(tmp_path, ray_cluster, service, "Catalog Test")
    assert "started by this notebook" in text
    first, again = summaries["first"], summaries["again"]
    broken = str(tmp_path / "inputs" / "b" / "broken.wav")
    for summary in (first, again):
        assert summary["batch_id"] == first["batch_id"]
        assert summary["items"] == CLIPS + 1 and summary["refused"] == 1
        [refusal] = summary["refusals"]
        assert refusal["input"] == broken and "not a decodable audio file" in refusal["error"]["message"]
    assert (first["queued"], first["skipped"], first["known"]) == (CLIPS, 0, 0)
    assert (again["queued"], again["skipped"], again["known"]) == (0, CLIPS, 0)

    journal = Journal(tmp_path / "state" / JOURNAL_FILE)
    try:
        records = journal.tasks.list()
    finally:
        journal.close()
    assert sorted(r.spec.file_id for r in records) == sorted(
        f"{'abc'[n % 3]}__song-{n:02d}" for n in range(1, CLIPS + 1))
    assert {(r.spec.batch_id, r.state.value, r.attempts) for r in records} == {
        (first["batch_id"], "succeeded", 1)}
    for record in records:
        folder = tmp_path / "separated" / "Catalog Test" / record.spec.file_id
        assert (folder / "manifest.json").is_file(), folder

    assert "service stopped" in text
    with pytest.raises(ValueError):
        ray.get_actor(f"{service}:scheduler", namespace=NAMESPACE)
