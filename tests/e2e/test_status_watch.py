"""`status --watch` as a person sees it: drawn in a terminal (a pseudo-terminal read by pyte's
screen model), refreshed in place."""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time

import pyte

COLUMNS, LINES = 160, 30
QUIET_S = 0.3                   # no output for this long: the screen is drawn


class Terminal:
    """A command run on a pseudo-terminal, its output fed to a screen model."""

    def __init__(self, command: list[str], env: dict):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave,
                                        env={**os.environ, **env, "TERM": "xterm"},
                                        start_new_session=True)
        os.close(slave)
        self.master = master
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)

    def next_screen(self, timeout_s: float) -> str | None:
        """The screen once new output has come and stopped for `QUIET_S`; None if none came."""
        deadline, fed = time.monotonic() + timeout_s, False
        while time.monotonic() < deadline:
            if not select.select([self.master], [], [], QUIET_S)[0]:
                if fed:
                    return "\n".join(self.screen.display)
                continue
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:            # the command ended and closed the terminal
                data = b""
            if not data:
                return None
            self.stream.feed(data)
            fed = True
        return None

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.master)


def test_status_watch_redraws_the_table_in_a_terminal(make_service, ray_cluster, tmp_path, audio):
    manager = make_service(workers={"max_workers": 1})
    task_id = manager.add_task(audio("song.wav", seconds=60.0), output_dir=tmp_path / "out",
                               segment=2.0)
    env = {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": manager.config.service.name,
           "RAYDEMUCS_SERVICE_STATE_DIR": manager.config.service.state_dir}
    terminal = Terminal([sys.executable, "-m", "raydemucs", "status", "--watch", "1"], env)
    try:
        screens = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len({s for s in screens if "busy" in s}) < 2:
            screen = terminal.next_screen(deadline - time.monotonic())
            if screen is None:
                break
            screens.append(screen)
    finally:
        terminal.close()
        manager.cancel(task_id)
    drawn = [s for s in screens if "WORKER" in s]
    assert drawn, screens[-1] if screens else "no output"
    assert all(s.count("WORKER") == 1 for s in drawn)  # redrawn in place, not scrolled
    busy = [s for s in drawn if "busy" in s]
    assert len(set(busy)) >= 2  # the figures moved between refreshes
    assert "worker-0" in busy[-1] and task_id in busy[-1]
