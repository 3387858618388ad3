"""`status --watch` as a person sees it: drawn in a real terminal (tmux), refreshed in place."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


def test_status_watch_redraws_the_table_in_a_terminal(make_service, ray_cluster, tmp_path, audio):
    manager = make_service(workers={"max_workers": 1})
    task_id = manager.add_task(audio("song.wav", seconds=60.0), output_dir=tmp_path / "out",
                               segment=2.0)
    session = f"watch{os.getpid()}"
    env = {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": manager.config.service.name,
           "RAYDEMUCS_SERVICE_STATE_DIR": manager.config.service.state_dir}
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "30",
                    f"{exports} {sys.executable} -m raydemucs status --watch 1"], check=True)
    try:
        screens = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len({s for s in screens if "busy" in s}) < 2:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True, check=True).stdout
            screens.append(screen)
            time.sleep(0.5)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
        manager.cancel(task_id)
    drawn = [s for s in screens if "WORKER" in s]
    assert drawn, screens[-1]
    assert all(s.count("WORKER") == 1 for s in drawn)  # redrawn in place, not scrolled
    busy = [s for s in drawn if "busy" in s]
    assert len(set(busy)) >= 2  # the figures moved between refreshes
    assert "worker-0" in busy[-1] and task_id in busy[-1]
