"""An ensemble: several models run on one input as one task, and how each stem is made of their
stems. Free of torch and Ray: the client, the HTTP replica and the scheduler check it alike.

A spec (a config preset, or asked for with a task) is plain data:

    parts:                        # each part is one model run; at most `ensembles.max_parts`
      voc: {model: htdemucs}
      rest: {model: htdemucs_ft, input: {part: voc, without: vocals}}   # a chain step
    stems:                        # the task's stems, each made by one rule
      vocals: {take: voc}                          # a part's stem (`stem:` another name of it)
      drums: {average: [voc, rest], weights: [1, 2], domain: waveform}  # or domain: magnitude
      bass: {take: rest}

A part's `input` is the task's input (the mix) when left out, else a stem of an earlier part
(`{part, stem}`) or the mix without it (`{part, without}`). `check_spec` returns the spec in
its normal form: parts as a list in the order they run (each after the part it reads), every
rule with all its keys.
"""
from __future__ import annotations

import re
from typing import Any

from ..core.errors import InvalidInput
from ..core.names import printable

MAX_PARTS = 16  # the highest `ensembles.max_parts`
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DOMAINS = ("waveform", "magnitude")
PART_KEYS, INPUT_KEYS = {"model", "input"}, {"part", "stem", "without"}
RULE_KEYS = {"take": {"take", "stem"}, "average": {"average", "weights", "domain"}}


def _name(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidInput(f"ensemble {kind} {printable(value)} must be 1-32 lowercase letters, "
                           "digits, '-' or '_'")
    return value


def _mapping(where: str, value: Any, keys: set | None = None) -> dict:
    if not isinstance(value, dict) or not value:
        raise InvalidInput(f"ensemble {where} must be a non-empty mapping")
    unknown = sorted(set(value) - keys) if keys is not None else []
    if unknown:
        raise InvalidInput(f"ensemble {where} has unknown key {printable(unknown[0])}; allowed: "
                           f"{', '.join(sorted(keys))}")
    return value


def _input(name: str, value: Any) -> dict | None:
    """A part's input: None (the mix), or `{part, stem}` / `{part, without}` in normal form."""
    if value is None or value == "mix":
        return None
    value = _mapping(f"part {name}'s input", value, INPUT_KEYS)
    if ("stem" in value) == ("without" in value) or "part" not in value:
        raise InvalidInput(f"ensemble part {name}'s input must name a part and either 'stem' "
                           "(that stem) or 'without' (the mix without that stem)")
    stem = _name("stem", value.get("stem", value.get("without")))
    return {"part": _name("part", value["part"]), "stem": stem, "rest": "without" in value}


def _ordered(parts: dict[str, dict]) -> list[dict]:
    """The parts in an order where each runs after the part it reads; a cycle is refused."""
    ordered, placed = [], set()
    while len(ordered) < len(parts):
        ready = [name for name, part in parts.items() if name not in placed
                 and (part["input"] is None or part["input"]["part"] in placed)]
        if not ready:
            stuck = sorted(set(parts) - placed)
            raise InvalidInput(f"ensemble parts {', '.join(stuck)} read each other's stems "
                               "(a cycle)")
        for name in ready:
            placed.add(name)
            ordered.append({"name": name, **parts[name]})
    return ordered


def _parts(value: Any, max_parts: int) -> list[dict]:
    value = _mapping("parts", value)
    if len(value) > max_parts:
        raise InvalidInput(f"ensemble has {len(value)} parts; at most {max_parts} "
                           "(ensembles.max_parts)")
    parts = {}
    for name, part in value.items():
        part = _mapping(f"part {_name('part', name)}", part, PART_KEYS)
        model = part.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidInput(f"ensemble part {name} must name a model")
        parts[name] = {"model": model, "input": _input(name, part.get("input"))}
    for name, part in parts.items():
        if part["input"] and part["input"]["part"] not in parts:
            raise InvalidInput(f"ensemble part {name} reads part {part['input']['part']!r}, "
                               "which the ensemble does not have")
    return _ordered(parts)


def _rule(stem: str, value: Any, parts: set) -> dict:
    """One stem's rule in normal form."""
    kind = next((kind for kind in RULE_KEYS if isinstance(value, dict) and kind in value), None)
    if kind is None:
        raise InvalidInput(f"ensemble stem {stem} must be {{take: PART}} or {{average: [PARTS]}}")
    value = _mapping(f"stem {stem}", value, RULE_KEYS[kind])
    if kind == "take":
        return {"take": _known(stem, value["take"], parts),
                "stem": _name("stem", value.get("stem", stem))}
    names = value["average"]
    if not isinstance(names, list) or len(names) < 2 or len(set(names)) != len(names):
        raise InvalidInput(f"ensemble stem {stem}: average needs a list of two or more parts")
    weights = value.get("weights", [1.0] * len(names))
    if (not isinstance(weights, list) or len(weights) != len(names) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < 1e6
            for w in weights)):
        raise InvalidInput(f"ensemble stem {stem}: weights must be one positive number per part")
    domain = value.get("domain", "waveform")
    if domain not in DOMAINS:
        raise InvalidInput(f"ensemble stem {stem}: domain {printable(domain)} must be one of "
                           f"{', '.join(DOMAINS)}")
    return {"average": [_known(stem, name, parts) for name in names],
            "weights": [float(w) for w in weights], "domain": domain}


def _known(stem: str, part: Any, parts: set) -> str:
    if part not in parts:
        raise InvalidInput(f"ensemble stem {stem} names part {printable(part)}, which the "
                           "ensemble does not have")
    return part


def check_spec(value: Any, max_parts: int) -> dict:
    """The spec in normal form (`{"parts": [...], "stems": {...}}`); InvalidInput, one line,
    for anything malformed. Which models exist and what stems they make: `check_models`."""
    value = _mapping("spec", value, {"parts", "stems"})
    parts = _parts(value.get("parts"), max_parts)
    names = {part["name"] for part in parts}
    stems = {_name("stem", stem): _rule(stem, rule, names)
             for stem, rule in _mapping("stems", value.get("stems")).items()}
    used = {rule.get("take") for rule in stems.values()} | {
        name for rule in stems.values() for name in rule.get("average", ())} | {
        part["input"]["part"] for part in parts if part["input"]}
    unused = sorted(names - used)
    if unused:
        raise InvalidInput(f"ensemble part {unused[0]} is used by no stem and no other part")
    return {"parts": parts, "stems": stems}


def stems_read(spec: dict) -> dict[str, set]:
    """Which stems of each part the spec reads (its rules and the parts after it)."""
    read: dict[str, set] = {part["name"]: set() for part in spec["parts"]}
    for stem, rule in spec["stems"].items():
        if "take" in rule:
            read[rule["take"]].add(rule["stem"])
        for name in rule.get("average", ()):
            read[name].add(stem)
    for part in spec["parts"]:
        if part["input"]:
            read[part["input"]["part"]].add(part["input"]["stem"])
    return read


def check_models(spec: dict, served: dict) -> None:
    """Refuse a part whose model is not in `served` ({model: its stems, or None when not known
    yet}) or a stem its model does not make (judged where the stems are known; else the worker
    that loads the model refuses the task without a retry)."""
    models = {part["name"]: part["model"] for part in spec["parts"]}
    for name, model in models.items():
        if model not in served:
            raise InvalidInput(f"ensemble part {name}: model {printable(model)} is not served "
                               f"here; served: {', '.join(served)}")
    for name, stems in stems_read(spec).items():
        made = served[models[name]]
        missing = sorted(stems - set(made)) if made is not None else []
        if missing:
            raise InvalidInput(f"ensemble part {name}: model {models[name]} makes no stem "
                               f"{missing[0]!r}; it makes {', '.join(made)}")


def ensemble_of(config, preset: Any = None, spec: Any = None) -> dict | None:
    """The ensemble a task asks for, in normal form with its preset's name: the preset `preset`
    of `config` (`ensembles`), or `spec` as given; None for neither."""
    if preset is None and spec is None:
        return None
    if preset is not None and spec is not None:
        raise InvalidInput("name an ensemble preset or give an ensemble spec, not both")
    if preset is not None and preset not in config.presets:
        raise InvalidInput(f"no ensemble preset {printable(preset)}; presets: "
                           f"{', '.join(config.presets) or 'none'}")
    chosen = config.presets[preset] if preset is not None else spec
    return {**check_spec(chosen, config.max_parts), "preset": preset}


def check_options(ensemble: dict | None, two_stems: str | None) -> None:
    """Options an ensemble task may not take with it."""
    if ensemble and two_stems is not None:
        raise InvalidInput("--two-stems does not apply to an ensemble: its stems are its rules'")
