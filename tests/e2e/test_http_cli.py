"""The README's curl example, run as written: `start --http`, curl upload, status, events,
stems, zip, `stop` (on the session's Ray and Serve proxy, whose port replaces 8000)."""
from __future__ import annotations

import os
import re
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

from support import write_audio

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    found = re.search(r"<!-- http-example[^>]*-->\n```bash\n(.*?)```\n<!-- /http-example -->", text,
                      re.S)
    assert found, "README.md lost its HTTP example"
    return found.group(1)


def test_the_readmes_curl_example_runs_as_written(ray_cluster, serve_port, tmp_path):
    write_audio(tmp_path / "song.wav", seconds=2.0)
    script = readme_example().replace("127.0.0.1:8000", f"127.0.0.1:{serve_port}")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "RAYDEMUCS_HTTP_PORT": str(serve_port),
           "RAYDEMUCS_SERVICE_NAME": f"readme{uuid.uuid4().hex[:6]}",
           "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state"),
           "RAYDEMUCS_WORKERS_MEMORY_MB": "0", "MAX_WORKERS": "1"}
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "HTTP API on" in ran.stdout and "event: state" in ran.stdout
    assert '"state": "succeeded"' in ran.stdout.replace('"state":"succeeded"', '"state": "succeeded"')
    assert sf.info(tmp_path / "vocals.wav").duration == pytest.approx(2.0, abs=0.05)
    assert "song/vocals.wav" in zipfile.ZipFile(tmp_path / "stems.zip").namelist()
