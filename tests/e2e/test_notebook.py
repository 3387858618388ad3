"""notebooks/quickstart.ipynb: committed clean, and it runs top to bottom on the session's Ray
(the checks of a committed notebook, and `execute_notebook`, serve notebooks/catalog.ipynb too).

The notebook runs in a real Jupyter kernel (nbclient), joins the test session's Ray by its
explicit address (never `auto`: other Ray clusters may run on this machine), starts its own
uniquely named raydemucs service with its own journal, separates three clips with the offline
`demucs_unittest` model, plots them and stops the service it started.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
CLIPS = ("bassline", "drum-loop", "chords")
STEMS = ("drums", "bass", "other", "vocals")
CELL_TIMEOUT_S = 300


CATALOG = ROOT / "notebooks" / "catalog.ipynb"
NOTEBOOKS = {NOTEBOOK: ("RAY_ADDRESS", "MODEL", "OUTPUT_DIR", "INPUT_DIR", "PROJECT"),
             CATALOG: ("RAY_ADDRESS", "MODEL", "OUTPUT_DIR", "INPUT_DIR", "PROJECT", "CLIPS")}


def read_notebook(path: Path = NOTEBOOK):
    return nbformat.read(path, as_version=4)


def parameters_index(nb) -> int:
    return next(i for i, cell in enumerate(nb.cells)
                if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_without_outputs(path):
    nb = read_notebook(path)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_parameters_come_first(path):
    nb = read_notebook(path)
    index = parameters_index(nb)
    assert index == next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    source = nb.cells[index].source
    for name in NOTEBOOKS[path]:
        assert f"\n{name} = " in f"\n{source}", name


def execute_notebook(path: Path, tmp_path: Path, address: str, service: str, params: dict,
                     last_cell: str | None = None):
    """Run the notebook at `path` in a kernel that joins `address` and service `service`, with
    `params` injected after its parameters (and `last_cell` appended); the executed notebook and
    its printed text. Raises on the first failing cell."""
    from nbclient import NotebookClient

    tmp_path.mkdir(parents=True, exist_ok=True)   # the kernel's working directory
    nb = read_notebook(path)
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_index(nb) + 1, injected)
    if last_cell is not None:
        nb.cells.append(nbformat.v4.new_code_cell(last_cell))

    # The kernel finds this session's Ray and its service through the environment too.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("RAYDEMUCS_") and key not in ("MAX_WORKERS", "TASK_TIMEOUT")}
    env.update(RAY_ADDRESS=address, RAYDEMUCS_SERVICE_NAME=service,
               RAYDEMUCS_SERVICE_STATE_DIR=str(tmp_path / "state"),
               RAYDEMUCS_WORKERS_MEMORY_MB="0",
               MPLBACKEND="module://matplotlib_inline.backend_inline",
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    return nb, text


def images(nb) -> list:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
            if "image/png" in out.get("data", {})]


def run_notebook(tmp_path: Path, address: str, service: str, project: str) -> tuple[dict, str]:
    """Execute the quickstart against `address` and service `service`; it and its text."""
    params = {"RAY_ADDRESS": address, "PROFILE": "test", "MODEL": "demucs_unittest",
              "REPO": None, "INPUT_DIR": str(tmp_path / "inputs"),
              "OUTPUT_DIR": str(tmp_path / "separated"), "PROJECT": project,
              "CLIP_SECONDS": 2.0, "TIMEOUT_S": 240.0}
    nb, text = execute_notebook(NOTEBOOK, tmp_path, address, service, params)
    assert len(images(nb)) == len(CLIPS), "one figure of waveforms and spectrograms per clip"
    for clip in CLIPS:
        folder = tmp_path / "separated" / project / clip
        assert (folder / "manifest.json").is_file(), folder
        for stem in STEMS:
            assert (folder / f"{stem}.wav").stat().st_size > 1000, (clip, stem)
    assert text.count("succeeded") >= len(CLIPS)
    return nb, text


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(ray_cluster, tmp_path):
    """No service running: the notebook starts its own, separates, plots, and stops it."""
    import ray

    from raydemucs.client.connection import NAMESPACE
    from raydemucs.journal import Journal
    from raydemucs.scheduler.service import JOURNAL_FILE

    service = f"nb{uuid.uuid4().hex[:8]}"
    _, text = run_notebook(tmp_path, ray_cluster, service, "Notebook Test")
    assert "started by this notebook" in text

    # The journal: three succeeded tasks, the high-priority one started no later than the low.
    journal = Journal(tmp_path / "state" / JOURNAL_FILE)
    try:
        records = {r.spec.file_id: r for r in journal.tasks.list()}
    finally:
        journal.close()
    assert set(records) == set(CLIPS)
    assert {r.state.value for r in records.values()} == {"succeeded"}
    assert [records[c].spec.priority for c in CLIPS] == [0, 5, 9]
    assert records["bassline"].started_at <= records["chords"].started_at

    # The notebook started the service, so it stopped it.
    assert "service stopped" in text
    with pytest.raises(ValueError):
        ray.get_actor(f"{service}:scheduler", namespace=NAMESPACE)


@pytest.mark.slow
def test_quickstart_leaves_a_running_service_running(ray_cluster, make_service, tmp_path):
    """A service started elsewhere is used, and still running when the notebook ends."""
    manager = make_service()
    name = manager.config.service.name
    _, text = run_notebook(tmp_path / "nb", ray_cluster, name, "Shared Service")
    assert "already running" in text and "left the running service" in text
    status = manager.get_status()
    assert status["accepting"] and status["queue"]["succeeded"] == len(CLIPS)
