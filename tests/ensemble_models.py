"""Models for the ensembles' tests: HTDemucs networks whose forward fails once (`FlakyHTDemucs`:
a retryable out-of-memory error the first time, told by a marker file) or takes its time
(`SlowHTDemucs`), so that a part fails or is cancelled while it runs.

Their checkpoints name these classes, so a worker that loads one imports this module as
`tests.ensemble_models` (see `tests/leaky_model.py`).
"""
from __future__ import annotations

import os
import time

from demucs.htdemucs import HTDemucs


class FlakyHTDemucs(HTDemucs):
    def __init__(self, sources, channels: int = 48, t_layers: int = 5, marker: str = ""):
        super().__init__(sources, channels=channels, t_layers=t_layers)
        self.marker = marker

    def forward(self, mix):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise MemoryError("the first forward of a flaky model")
        return super().forward(mix)


class SlowHTDemucs(HTDemucs):
    def __init__(self, sources, channels: int = 48, t_layers: int = 5, delay_s: float = 0.0):
        super().__init__(sources, channels=channels, t_layers=t_layers)
        self.delay_s = delay_s

    def forward(self, mix):
        time.sleep(self.delay_s)
        return super().forward(mix)
