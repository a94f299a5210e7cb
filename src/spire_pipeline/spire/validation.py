"""Turn pydantic validation errors into one message that names the parameter and the value."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

#: longest value shown in a message before it is cut
_MAX_SHOWN = 80


class ParameterError(ValueError):
    """A parameter has a bad value; the message names it and the value."""


def shown(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``Model``, ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys allowed at ``loc`` (a path of field names) inside ``model``."""
    for part in loc:
        field = model.model_fields.get(str(part))
        model = _submodel(field.annotation) if field is not None else None
        if model is None:
            return None
    return sorted(model.model_fields)


def _problem(model: type[BaseModel], section: str, err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    name = ".".join([section, *(str(p) for p in loc)])
    if err["type"] == "missing":
        return f"parameter {name} = <missing>: {err['msg']}"
    if err["type"] == "extra_forbidden":
        allowed = allowed_keys(model, loc[:-1]) or []
        hint = did_you_mean(str(loc[-1]), allowed)
        return (
            f"parameter {name} = {shown(err.get('input'))}: unknown key{hint} "
            f"(allowed: {', '.join(allowed)})"
        )
    culprit = _named_field(model, loc, err)
    if culprit is not None:  # a check across fields that names its first field
        field, value = culprit
        return f"parameter {name}.{field} = {shown(value)}: {err['msg']}"
    return f"parameter {name} = {shown(err.get('input'))}: {err['msg']}"


def _named_field(
    model: type[BaseModel], loc: tuple[Any, ...], err: dict[str, Any]
) -> tuple[str, Any] | None:
    """For a model-level check whose message starts with one of the model's fields
    (``"seen_client_size (40) must exceed ..."``): that field and its value."""
    value = err.get("input")
    if err["type"] != "value_error" or not isinstance(value, dict):
        return None
    fields = allowed_keys(model, loc) or []
    first = str(err.get("ctx", {}).get("error", "")).split(" ", 1)[0].rstrip(":")
    return (first, value[first]) if first in fields and first in value else None


def validate_params(model: type[M], params: dict[str, Any] | None, section: str) -> M:
    """Validate ``params`` (the ``section`` of parameters.yml) against ``model``."""
    try:
        return model.model_validate(params or {})
    except ValidationError as exc:
        problems = [_problem(model, section, err) for err in exc.errors()]
        raise ParameterError("Invalid parameters: " + "; ".join(problems)) from None


def check_sections(parameters: dict[str, Any], known: Iterable[str], registry: str) -> None:
    """Raise ``ParameterError`` naming each section of ``parameters`` not in ``known``."""
    known = sorted(known)
    problems = [
        f"parameter {name} = {shown(value)}: unknown section{did_you_mean(name, known)} "
        f"(known sections: {', '.join(known)}; a new section needs a schema in {registry})"
        for name, value in parameters.items()
        if name not in known
    ]
    if problems:
        raise ParameterError("Invalid parameters: " + "; ".join(problems))
