"""An ensemble's worker side (`raydemucs.ensembles`): a chain step's input made from the part it
reads, and the parts' stems combined into the task's own, stem by stem.

Rules: `take` (a part's stem as it is), `average` of waveforms (weighted), or `average` of
magnitudes: each part's STFT magnitude averaged with the weights, under the phase of the part of
the largest weight (the first of them on a tie), back through the inverse STFT.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import soundfile as sf
import torch as th

from ..core.config import InputConfig
from ..core.errors import InvalidInput, PartMissing
from ..storage.folders import LocalFolder
from .decode import decode
from .strategies import Separated

N_FFT, HOP = 4096, 1024  # the magnitude average's STFT (a 93 ms window at 44.1 kHz)


def part_stems(location: str) -> tuple[dict, dict]:
    """A part's manifest and `{stem: local path}`; `PartMissing` when its folder is not whole."""
    folder = LocalFolder(location)
    manifest = folder.manifest() if folder.complete() else None
    if manifest is None:
        raise PartMissing("an ensemble part's stems are gone; it is made again")
    return manifest, {name: folder.path / entry["file"] for name, entry in manifest["stems"].items()}


@contextlib.contextmanager
def part_input(source: dict, mix: Path, limits: InputConfig) -> Iterator[Path]:
    """The file a chain step separates: a stem of the part it reads, or the mix without that
    stem (the mix decoded at that part's rate, minus the stem)."""
    manifest, stems = part_stems(source["folder"])
    path = stems[source["stem"]]
    if not source["rest"]:
        yield path
        return
    rate, channels = manifest["samplerate"], sf.info(path).channels
    stem = decode(path, rate, channels, limits)
    wav = decode(mix, rate, channels, limits)
    frames = min(stem.shape[-1], wav.shape[-1])
    work = Path(tempfile.mkdtemp(prefix="raydemucs-rest-"))
    try:
        rest = work / "rest.wav"
        sf.write(rest, (wav[:, :frames] - stem[:, :frames]).T.numpy(), rate, subtype="FLOAT")
        yield rest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _magnitude_average(waves: list[th.Tensor], weights: list[float]) -> th.Tensor:
    window = th.hann_window(N_FFT)
    specs = [th.stft(w, N_FFT, HOP, window=window, return_complex=True) for w in waves]
    magnitude = sum(weight * spec.abs() for weight, spec in zip(weights, specs)) / sum(weights)
    phase = th.angle(specs[weights.index(max(weights))])
    return th.istft(th.polar(magnitude, phase), N_FFT, HOP, window=window,
                    length=waves[0].shape[-1])


def _rule_stem(rule: dict, stem: str, read) -> th.Tensor:
    if "take" in rule:
        return read(rule["take"], rule["stem"])
    waves, weights = [read(name, stem) for name in rule["average"]], rule["weights"]
    frames = min(w.shape[-1] for w in waves)
    waves = [w[:, :frames] for w in waves]
    if rule["domain"] == "magnitude":
        return _magnitude_average(waves, weights)
    return sum(weight * w for weight, w in zip(weights, waves)) / sum(weights)


def combine(ensemble: dict, limits: InputConfig) -> tuple[Separated, list[dict]]:
    """The task's stems from its parts' folders (`ensemble["folders"]`), at the rate of the
    first part; and what the manifest records of each part."""
    found = {name: part_stems(location) for name, location in ensemble["folders"].items()}
    first = found[ensemble["parts"][0]["name"]]
    rate = first[0]["samplerate"]
    channels = sf.info(next(iter(first[1].values()))).channels

    def read(name: str, stem: str) -> th.Tensor:
        paths = found[name][1]
        if stem not in paths:
            raise InvalidInput(f"ensemble part {name} made no stem {stem!r}; it made "
                               f"{', '.join(paths)}")
        return decode(paths[stem], rate, channels, limits)

    stems = {stem: _rule_stem(rule, stem, read) for stem, rule in ensemble["stems"].items()}
    return Separated(stems, rate, runtime="ensemble"), [
        _recorded(part, *found[part["name"]]) for part in ensemble["parts"]]


def _recorded(part: dict, manifest: dict, stems: dict) -> dict:
    """What the task's manifest says of one part (its options without the server's folder)."""
    options = {key: value for key, value in manifest["options"].items() if key != "repo"}
    return {"name": part["name"], "model": part["model"], "input": part["input"],
            "key": manifest["file_id"], "options": options, "made_by_task": manifest["task_id"],
            "stems": sorted(stems)}
