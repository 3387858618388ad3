"""What config models are made of: a frozen base that refuses unknown keys, and field types that
read a value the same from YAML, the environment (strings) and flags."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints
from pydantic_core import PydanticKnownError

NULL_WORDS = ("", "none", "null")


class Section(BaseModel):
    """A config section: immutable, no keys but its own, finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False,
                              coerce_numbers_to_str=True)


def _number(kind: str) -> BeforeValidator:
    """Refuse a boolean where a number is due: pydantic's lax mode reads True as 1."""
    def read(value: Any) -> Any:
        if value is True or value is False:
            raise PydanticKnownError(f"{kind}_type")
        return value
    return BeforeValidator(read)


def _nullable(kind: str) -> BeforeValidator:
    """As `_number` (for numbers), and `none`, `null` or nothing (a flag, a variable) is null."""
    def read(value: Any) -> Any:
        if isinstance(value, str) and value.lower() in NULL_WORDS:
            return None
        if kind != "str" and (value is True or value is False):
            raise PydanticKnownError(f"{kind}_type")
        return value
    return BeforeValidator(read)


def _words(value: Any) -> Any:
    """A list from YAML as it is; from a string (a variable, a flag), its comma-separated words."""
    if isinstance(value, str):
        return [word.strip() for word in value.split(",") if word.strip()]
    return value


Int = Annotated[int, _number("int")]
Float = Annotated[float, _number("float")]
Text = Annotated[str, StringConstraints(min_length=1)]
MaybeInt = Annotated[int | None, _nullable("int")]
MaybeFloat = Annotated[float | None, _nullable("float")]
MaybeText = Annotated[str | None, _nullable("str")]
Texts = Annotated[tuple[Text, ...], BeforeValidator(_words)]
