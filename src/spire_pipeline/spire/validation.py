"""Turn pydantic validation errors into one message that names the parameter and the value."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ParameterError(ValueError):
    """A parameter has a bad value; the message names it and the value."""


def validate_params(model: type[M], params: dict[str, Any] | None, section: str) -> M:
    """Validate ``params`` (the ``section`` of parameters.yml) against ``model``."""
    try:
        return model.model_validate(params or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join([section, *(str(p) for p in err["loc"])])
            value = err.get("input")
            shown = "<missing>" if err["type"] == "missing" else repr(value)
            problems.append(f"parameter {name} = {shown}: {err['msg']}")
        raise ParameterError("Invalid parameters: " + "; ".join(problems)) from None
