"""Ensemble specs checked into their normal form, and an ensemble task's steps and cache keys."""
from __future__ import annotations

import dataclasses

import pytest

from raydemucs.core.config import SeparationConfig
from raydemucs.core.errors import InvalidInput
from raydemucs.core.task import TaskSpec
from raydemucs.ensembles.plan import part_folder, step_spec, steps
from raydemucs.ensembles.spec import check_models, check_spec

CHAIN = {"parts": {"rest": {"model": "m2", "input": {"part": "voc", "without": "vocals"}},
                   "voc": {"model": "m1"}},
         "stems": {"vocals": {"take": "voc"}, "drums": {"average": ["voc", "rest"],
                                                        "weights": [1, 2]}}}


def task(**fields) -> TaskSpec:
    return TaskSpec(**{"task_id": "t1", "project": "p", "file_id": "f", "input_path": "/in.wav",
                       "output_dir": "/out", "input_sha256": "ab" * 32,
                       "options": SeparationConfig(model="m1"),
                       "ensemble": check_spec(CHAIN, 4), **fields})


def test_a_spec_in_normal_form_runs_each_part_after_the_part_it_reads():
    spec = check_spec(CHAIN, 4)
    assert [part["name"] for part in spec["parts"]] == ["voc", "rest"]
    assert spec["parts"][1]["input"] == {"part": "voc", "stem": "vocals", "rest": True}
    assert spec["stems"] == {"vocals": {"take": "voc", "stem": "vocals"},
                             "drums": {"average": ["voc", "rest"], "weights": [1.0, 2.0],
                                       "domain": "waveform"}}


@pytest.mark.parametrize("spec, message", [
    ({"parts": {}, "stems": {"x": {"take": "a"}}}, "parts must be a non-empty mapping"),
    ({"parts": {"A!": {"model": "m"}}, "stems": {}}, "must be 1-32 lowercase"),
    ({"parts": {"a": {"model": "m", "input": {"part": "b", "stem": "x"}}},
      "stems": {"x": {"take": "a"}}}, "reads part 'b', which the ensemble does not have"),
    ({"parts": {"a": {"model": "m", "input": {"part": "a", "stem": "x"}}},
      "stems": {"x": {"take": "a"}}}, "(a cycle)"),
    ({"parts": {"a": {"model": "m"}, "b": {"model": "m"}}, "stems": {"x": {"take": "a"}}},
     "part b is used by no stem"),
    ({"parts": {"a": {"model": "m"}}, "stems": {"x": {"average": ["a"]}}}, "two or more parts"),
    ({"parts": {"a": {"model": "m"}, "b": {"model": "m"}},
      "stems": {"x": {"average": ["a", "b"], "domain": "phase"}}}, "must be one of waveform"),
    ({"parts": {"a": {"model": "m"}, "b": {"model": "m"}},
      "stems": {"x": {"average": ["a", "b"], "weights": [1, -1]}}}, "one positive number"),
    ({"parts": {"a": {"model": "m", "sneaky": 1}}, "stems": {"x": {"take": "a"}}}, "unknown key"),
])
def test_a_malformed_spec_is_refused_with_one_line(spec, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_spec(spec, 4)


def test_too_many_parts_and_unknown_models_or_stems_are_refused():
    with pytest.raises(InvalidInput, match="at most 1"):
        check_spec(CHAIN, 1)
    spec = check_spec(CHAIN, 4)
    with pytest.raises(InvalidInput, match="model m2 is not served"):
        check_models(spec, {"m1": None})
    with pytest.raises(InvalidInput, match="makes no stem 'vocals'"):
        check_models(spec, {"m1": ["drums"], "m2": None})
    check_models(spec, {"m1": ["drums", "vocals"], "m2": None})  # m2's stems judged later


def test_steps_and_their_keys():
    first, second, combine = steps(task())
    assert (first.name, second.name, combine.name, combine.total) == ("voc", "rest", "combine", 3)
    assert steps(task(task_id="t2"))[1].key == second.key  # same bytes and parts: same keys
    other = task(options=SeparationConfig(model="m1", shifts=2))
    assert steps(other)[0].key != first.key
    assert steps(task(input_sha256="cd" * 32))[1].key != second.key
    mp3 = task(options=SeparationConfig(model="m1", format="mp3"))
    assert steps(mp3)[0].key == first.key  # parts are float32 wav whatever the task writes


def test_a_step_runs_as_a_spec_of_its_own():
    spec = task()
    first, second, combine = steps(spec)
    part = step_spec(spec, second, "/state/ensembles")
    assert (part.options.model, part.options.wav_depth, part.options.clip_mode) == (
        "m2", "float32", "none")
    assert part.output_location == part_folder("/state/ensembles", second.key)
    assert part.ensemble["source"] == {"part": "voc", "stem": "vocals", "rest": True,
                                       "folder": part_folder("/state/ensembles", first.key)}
    assert part.task_id == spec.task_id and part.input_path == spec.input_path
    whole = step_spec(spec, combine, "/state/ensembles")
    assert whole.output_location == spec.output_location and whole.ensemble["step"] == "combine"
    assert dataclasses.replace(whole, ensemble=spec.ensemble) == spec
