"""Inputs sent with their tasks (`submit --upload`) and those tasks' stems, kept by the service.

For clients that share no storage with the cluster: the bytes are stored under the service's
state directory on the head node (by SHA-256, synced before the task is accepted), reach the
worker with the task, and its stems come back to `STATE_DIR/results/PROJECT/FILE_ID`, where
`raydemucs fetch` reads them through the scheduler actor.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from pathlib import Path

from .errors import InvalidInput
from .outputs import LocalFolder, copy_output_bytes
from .task import TaskSpec


class UploadStore:
    def __init__(self, state_dir: Path):
        self.inputs = state_dir / "uploads"
        self.results = state_dir / "results"

    def accept(self, spec: TaskSpec, data: bytes) -> TaskSpec:
        """Keep an uploaded input (synced) and point the task's stems at the service's results."""
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.input_sha256:
            raise InvalidInput(f"the uploaded bytes of {spec.file_id!r} do not match their SHA-256")
        path = self.inputs / digest
        if not path.is_file():
            self.inputs.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{digest}.{uuid.uuid4().hex[:8]}.tmp")
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        return dataclasses.replace(spec, output_dir=str(self.results))

    def read_input(self, spec: TaskSpec) -> bytes:
        return (self.inputs / spec.input_sha256).read_bytes()

    @staticmethod
    def keep_stems(spec: TaskSpec, result: dict) -> dict[str, str]:
        """Write the stems a worker sent back into the task's folder; returns `{stem: path}`."""
        return copy_output_bytes(LocalFolder(spec.output_location), result)
