"""docs/configuration.md, written from the config's JSON schema: every section and key with its
type, default, what is allowed and what it is for (`python -m raydemucs config reference`)."""
from __future__ import annotations

import json
from typing import Any

from .config import SECTIONS, Config
from .pools import PoolConfig

INTRO = """\
# Configuration

<!-- Generated from raydemucs/core/config.py by `python -m raydemucs config reference`;
     tests/unit/test_config_docs.py keeps this file equal to its output. -->

Each layer overrides the one before it:

1. the defaults below (also in `raydemucs/configs/default.yaml`, which lists every key);
2. a shipped profile, `--profile dev|prod|test` (`raydemucs/configs/NAME.yaml`), or a file,
   `--config FILE`;
3. the environment: `RAYDEMUCS_<SECTION>_<KEY>` for any key (`RAYDEMUCS_WORKERS_NUM_GPUS=0.5`,
   `RAYDEMUCS_SEPARATION_SEGMENT=none`), and the Node.js service's `MAX_WORKERS`,
   `TASK_TIMEOUT` (milliseconds) and `LOG_LEVEL`;
4. flags (`submit --shifts 2`, `start --http`, ...).

A value that is not allowed stops the service from starting, with one line naming where it came
from and the key: `environment: workers.max_workers=0 is out of range [1, 1024]`.
`python -m raydemucs config show [--profile NAME | --config FILE]` prints the config every layer
makes, and `python -m raydemucs config schema` its JSON schema.
"""


def reference_markdown() -> str:
    """The whole reference, one section of the config after another, then the pools."""
    parts = [INTRO]
    for name, model in SECTIONS.items():
        parts.append(_section(f"`{name}`", model.__doc__, model))
    pools = Config.model_fields["pools"].description
    parts.append(_section("`pools`", f"{pools[0].upper()}{pools[1:]}. Each entry of the list:",
                          PoolConfig))
    return "\n".join(parts)


def _section(title: str, about: str | None, model: type) -> str:
    rows = [f"| `{key}` | {_type(spec)} | {_default(spec)} | {_allowed(spec)} | "
            f"{spec.get('description', '')} |"
            for key, spec in model.model_json_schema()["properties"].items()]
    lines = [f"## {title}", "", " ".join((about or "").split()), "",
             "| key | type | default | allowed | description |", "|---|---|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


def _type(spec: dict) -> str:
    kinds = [option.get("type") for option in spec.get("anyOf", [spec])]
    words = {"integer": "integer", "number": "number", "boolean": "boolean", "string": "string",
             "array": "list", "object": "mapping", "null": "null"}
    if spec.get("type") == "array":
        return f"list of {words[spec['items']['type']]}s"
    return " or ".join(words[kind] for kind in kinds if kind)


def _default(spec: dict) -> str:
    if "default" not in spec:
        return "required" if spec.get("type") != "object" else "`{}`"
    value = spec["default"]
    return f"`{value if isinstance(value, str) else json.dumps(value)}`"


def _allowed(spec: dict) -> str:
    value = next(option for option in spec.get("anyOf", [spec]) if option.get("type") != "null")
    if "enum" in value:
        return ", ".join(f"`{choice}`" for choice in value["enum"])
    if "minimum" in value:
        return f"{_number(value['minimum'])} to {_number(value['maximum'])}"
    if "minimum" in value.get("additionalProperties", {}):
        return f"names: numbers >= {value['additionalProperties']['minimum']}"
    if "additionalProperties" in value:
        return "names: mappings"
    if "minLength" in value:
        return "not empty"
    if "pattern" in value:
        return f"`{value['pattern']}`"
    return ""


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
