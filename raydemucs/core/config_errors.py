"""A refused config as one line: where the value came from, its key, the value, what is allowed.

    flags: separation.shifts=-1 is out of range [0, 100]
    mine.yaml: pools[gpu].num_gpus='many' is not a valid float
    environment: unknown key 'tasks.colour'; allowed: timeout_s, max_retries, ...
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from .errors import ConfigError

RANGE = ("greater_than_equal", "less_than_equal")
WRONG_SHAPE = {"model_type": "a mapping", "dict_type": "a mapping", "tuple_type": "a list",
               "list_type": "a list"}
NOT_VALID = {"int": "int", "float": "float", "finite_number": "float", "bool": "bool",
             "string": "str"}


def refusal(root: type[BaseModel], data: Any, error: ErrorDetails, source: str,
            path: tuple = ()) -> ConfigError:
    """One of a failed validation's errors as a ConfigError: `data` (laid out as `root`, the
    part at `path` validated) came from `source`."""
    loc, kind, value = (*path, *error["loc"]), error["type"], error["input"]
    name, model, field = _key_name(loc, data), _model_at(root, loc[:-1]), _field_at(root, loc)
    if kind == "extra_forbidden":
        what = "section" if len(loc) == 1 else "key"
        line = f"unknown {what} '{name}'; allowed: {', '.join(model.model_fields)}"
    elif kind in WRONG_SHAPE:
        section = len(loc) == 1 and kind == "model_type"
        subject = f"section '{name}'" if section else name or "the config"
        line = f"{subject} must be {WRONG_SHAPE[kind]}, got {type(value).__name__}"
    elif kind == "missing":
        line = f"{name.rsplit('.', 1)[0]} has no {loc[-1]}"
    elif kind == "string_too_short" or value is None:
        line = f"{name} may not be empty"
    elif kind == "refused":
        line = error["msg"]
    elif kind == "ray_resource":
        line = f"{name} is {error['msg']}; use {name.split('.')[0]}.{error['ctx']['use']}"
    else:
        line = f"{name}={_shown(value, kind, field)!r}{_allowed(kind, error, field)}"
    return ConfigError(f"{source}: {line}")


def _allowed(kind: str, error: ErrorDetails, field: FieldInfo | None) -> str:
    """What follows `key=value`: why it is refused."""
    if kind in RANGE:
        low, high = _bounds(field, error.get("ctx", {}))
        return (f" is out of range [{low}, {high}]" if high is not None
                else f"; allowed: a number >= {low}")
    if kind == "literal_error":
        return f"; allowed: {', '.join(map(str, _choices(field)))}"
    if kind == "string_pattern_mismatch" and field is not None:
        return f"; allowed: {field.description}"
    if kind == "allowed":
        return error["msg"]
    declared = next((word for prefix, word in NOT_VALID.items() if kind.startswith(prefix)), None)
    return f" is not a valid {declared}" if declared else f": {error['msg']}"


def _key_name(loc: tuple, data: Any) -> str:
    """`section.key`, and for a pool `pools[NAME].key` (`pools[INDEX]` while it has no valid
    name), with a dict's keys after it."""
    parts: list[str] = []
    for index, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int):
            entry = _item(data, loc[:index + 1])
            named = isinstance(entry, Mapping) and loc[index + 1:] != ("name",)
            parts[-1] += f"[{entry['name'] if named and 'name' in entry else part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _item(data: Any, loc: tuple) -> Any:
    """What `data` holds at `loc` (None where it holds nothing there)."""
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model that validates what is at `loc` (list items are their list's model)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        model = field and next((t for t in (field.annotation, *get_args(field.annotation))
                                if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return model


def _field_at(root: type[BaseModel], loc: tuple) -> FieldInfo | None:
    model = _model_at(root, loc[:-1])
    return model.model_fields.get(loc[-1]) if model and loc else None


def _scalar(field: FieldInfo | None) -> type | None:
    """int or float, where the field holds a number (null aside)."""
    types = (field.annotation, *get_args(field.annotation)) if field else ()
    return next((t for t in types if t in (int, float)), None)


def _shown(value: Any, kind: str, field: FieldInfo | None) -> Any:
    """The value as it was read: a number out of range or not finite is shown as its field's
    type reads it (`-1.0` for -1 given to a float key, `nan` for 'nan')."""
    number = _scalar(field)
    if number and (kind in RANGE or kind == "finite_number"):
        try:
            return number(value)
        except (TypeError, ValueError):
            return value
    return value


def _bounds(field: FieldInfo | None, ctx: Mapping) -> tuple[Any, Any]:
    """The field's range as declared (`[0.001, 1048576]`), else the one bound the error names."""
    metadata = field.metadata if field else ()
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), ctx.get("ge"))
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), ctx.get("le"))
    return low, high


def _choices(field: FieldInfo | None) -> tuple:
    types = (field.annotation, *get_args(field.annotation)) if field else ()
    return next((get_args(t) for t in types if get_origin(t) is Literal), ())
