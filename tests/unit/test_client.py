"""The client side (CLI, WorkerManager and what they import) loads neither torch nor demucs."""
from __future__ import annotations

import subprocess
import sys

# raydemucs.scheduler.service too: a client's handle to the scheduler actor imports the actor's module
CLIENT = ["raydemucs", "raydemucs.client.cli", "raydemucs.client.manager", "raydemucs.client.render", "raydemucs.core.config",
          "raydemucs.core.errors", "raydemucs.core.task", "raydemucs.core.names", "raydemucs.audio.checks",
          "raydemucs.models.catalogue", "raydemucs.storage.folders", "raydemucs.client.connection", "raydemucs.scheduler.service"]


def probe(code: str) -> str:
    """What `code` prints, run in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_the_client_side_loads_no_torch_demucs_or_worker():
    assert probe("import sys\n"
                 f"for name in {CLIENT!r}: __import__(name)\n"
                 "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'demucs')\n"
                 "      or m in ('raydemucs.worker.actor', 'raydemucs.scheduler.pool', 'raydemucs.separation.engine')))"
                 ) == "[]"


def test_the_client_checks_an_input_and_a_model_without_torch(tmp_path):
    from support import write_audio

    song = write_audio(tmp_path / "song.wav", seconds=1.0)
    assert probe("import sys\n"
                 "from raydemucs.core.config import InputConfig\n"
                 "from raydemucs.audio.checks import validate_input\n"
                 "from raydemucs.models.catalogue import check_model_name, model_source\n"
                 f"validate_input({str(song)!r}, InputConfig())\n"
                 "check_model_name('htdemucs', None)\n"
                 "model_source('demucs_unittest', None)\n"
                 "print('torch' in sys.modules)") == "False"
