"""An ensemble task as steps: one per part (a model run, in the order the parts read each other),
then the step that combines their stems into the task's own. Free of torch and Ray.

Each part's stems are cached under a key of what makes them (the input's bytes, the model and
its options, and for a chain step the key and stem of the part it reads): `PARTS_ROOT/parts/KEY`,
written as float32 wav whatever the task's format, so that combining loses nothing. A retry, or
another task with the same part, finds it in the result cache and skips that step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ..core.task import TaskSpec

PARTS_PROJECT = "parts"  # the parts' folders: PARTS_ROOT/parts/KEY
# a part's stems, whatever the task asked: lossless, unclipped
PART_FORMAT = {"format": "wav", "wav_depth": "float32", "clip_mode": "none", "two_stems": None}
FORMAT_OPTIONS = ("format", "wav_depth", "mp3_bitrate", "mp3_preset", "clip_mode", "device",
                  "stream_over_s", "two_stems")


@dataclass(frozen=True)
class Step:
    """One step of an ensemble task: a part (`part` its entry in the spec) or, with `part`
    None, the combination; `key` is the part's cache key."""

    index: int
    total: int
    part: dict | None = None
    key: str = ""

    @property
    def name(self) -> str:
        return self.part["name"] if self.part else "combine"


def part_keys(task: TaskSpec) -> dict[str, str]:
    """Each part's cache key: same input bytes (else the same task), model, options and source
    give the same key."""
    options = {k: v for k, v in task.options.model_dump().items() if k not in FORMAT_OPTIONS}
    origin = task.input_sha256 or f"task:{task.task_id}:{task.input_path}"
    keys: dict[str, str] = {}
    for part in task.ensemble["parts"]:
        source = part["input"] and {**part["input"], "part": keys[part["input"]["part"]]}
        blob = json.dumps({"input": origin, **options, "model": part["model"], "source": source},
                          sort_keys=True)
        keys[part["name"]] = hashlib.sha256(blob.encode()).hexdigest()
    return keys


def steps(task: TaskSpec) -> list[Step]:
    """The task's steps in order: its parts, then the combination."""
    keys, parts = part_keys(task), task.ensemble["parts"]
    total = len(parts) + 1
    return [*(Step(i, total, part, keys[part["name"]]) for i, part in enumerate(parts)),
            Step(len(parts), total)]


def part_folder(parts_root: str, key: str) -> str:
    return f"{parts_root.rstrip('/')}/{PARTS_PROJECT}/{key}"


def step_spec(task: TaskSpec, step: Step, parts_root: str) -> TaskSpec:
    """What a worker runs for `step`: a part as a task of its own (the part's model, its stems
    to its folder, its input the task's, or a stem of the part it reads), or the combination
    (the task as asked, with the parts' folders)."""
    keys = part_keys(task)
    folders = {name: part_folder(parts_root, key) for name, key in keys.items()}
    if step.part is None:
        return dataclasses.replace(task, ensemble={**task.ensemble, "step": "combine",
                                                   "folders": folders})
    part = step.part
    source = part["input"] and {**part["input"], "folder": folders[part["input"]["part"]]}
    options = task.options.model_copy(update={"model": part["model"], **PART_FORMAT})
    return dataclasses.replace(
        task, project=PARTS_PROJECT, file_id=step.key, output_dir=parts_root, options=options,
        force=True, cache=False, kept=False, webhook_url=None,
        ensemble={"step": "part", "name": part["name"], "key": step.key, "source": source})


def first_model(ensemble: dict) -> str:
    """The model an ensemble task names as its own (its first part's)."""
    return ensemble["parts"][0]["model"]
