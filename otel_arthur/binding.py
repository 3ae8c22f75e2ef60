"""record -> row: which Arthur attribute each record field lands in, and values coerced to its type.

Rules (the seed ``ArthurCallbackHandler``'s, extended): the prompt goes to the model's first
PIPELINE_INPUT attribute of value type UNSTRUCTURED_TEXT, the completion to its first
PREDICTED_VALUE UNSTRUCTURED_TEXT attribute, every other field to the attribute of the same name.
``ARTHUR_ATTRIBUTE_MAP`` overrides any of these. A field with no attribute is skipped, and said
once when the binding is made, not per record. Arthur requires the input and prediction in every
inference, so a record without a prompt or completion (content switched off at the instrumentor)
carries ``CONTENT_NOT_CAPTURED`` there, and its metrics still arrive.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_arthur.clients.http import SetupError
from otel_arthur.clients.v3 import ArthurModel, ModelAttribute
from otel_arthur.fields import COMPLETION, FIELDS, PROMPT, Stage, ValueType
from otel_arthur.mapping import InferenceRecord
from otel_arthur.privacy import CONTENT_NOT_CAPTURED

_logger = logging.getLogger(__name__)


class BindingError(SetupError):
    """The model cannot hold these records (no text input or output attribute, bad override)."""


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not finite")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError(f"{value!r} is not a boolean")


_COERCE: dict[str, Callable[[Any], Any]] = {
    ValueType.STRING: str,
    ValueType.UNSTRUCTURED_TEXT: str,
    ValueType.TIMESTAMP: str,
    ValueType.INTEGER: _to_int,
    ValueType.FLOAT: _to_float,
    ValueType.BOOLEAN: _to_bool,
}


# The value types a field may already have, so that ``to_row`` passes it through without a call.
# FLOAT is not here: a float may still be NaN or infinite, which Arthur refuses.
_ALREADY = {ValueType.STRING: str, ValueType.UNSTRUCTURED_TEXT: str, ValueType.TIMESTAMP: str,
            ValueType.INTEGER: int, ValueType.BOOLEAN: bool}
# Each field's own type, as ``takes_as_is`` checks it (FLOAT: a finite float).
_FIELD_TYPES = {name: _ALREADY.get(spec.value_type, float) for name, spec in FIELDS.items()}


def takes_as_is(fields: Mapping[str, Any]) -> bool:
    """Whether ``to_row`` of a model whose attributes are the fields themselves (``Binding.as_is``) passes these
    fields through unchanged: prompt and completion present, every value exactly of its own field's type."""
    if PROMPT not in fields or COMPLETION not in fields:
        return False
    for name, value in fields.items():
        kind = _FIELD_TYPES.get(name)
        if type(value) is not kind or (kind is float and not math.isfinite(value)):
            return False
    return True


@dataclass(frozen=True)
class Binding:
    """Field -> attribute for one model. ``to_row`` is the only per-record work."""

    model_id: str
    targets: Mapping[str, ModelAttribute]
    skipped: tuple[str, ...]
    # field -> (attribute name, type needing no coercion, coercion): read once per record field.
    _plan: dict[str, tuple[str, type | None, Callable[[Any], Any]]] = field(init=False, repr=False, compare=False)
    # Every field lands in the attribute of its own name and value type: a record that ``takes_as_is``
    # becomes its row unchanged, which is how the spool stores it (delivery then sends the stored JSON).
    as_is: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        plan = {name: (target.name, _ALREADY.get(target.value_type), _COERCE.get(target.value_type, _identity))
                for name, target in self.targets.items()}
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "as_is", all(
            name in self.targets and self.targets[name].name == name and self.targets[name].value_type == spec.value_type
            for name, spec in FIELDS.items()))

    def to_row(self, record: InferenceRecord) -> dict[str, Any]:
        data: dict[str, Any] = {}
        plan = self._plan
        for name, value in record.fields.items():
            step = plan.get(name)
            if step is None:
                continue
            attribute, already, coerce = step
            if type(value) is already:  # exact type: a bool is not an int here
                data[attribute] = value
                continue
            try:
                data[attribute] = coerce(value)
            except (TypeError, ValueError):
                _logger.debug("field %s: %r does not fit %s", name, value, attribute)
        for name in (PROMPT, COMPLETION):
            if name not in record.fields:
                data[plan[name][0]] = CONTENT_NOT_CAPTURED
        return {
            "partner_inference_id": record.partner_inference_id,
            "inference_timestamp": record.inference_timestamp,
            "inference_data": data,
        }


def _identity(value: Any) -> Any:
    return value


def _first_text_attribute(model: ArthurModel, stage: str) -> ModelAttribute | None:
    return next(
        (a for a in model.attributes if a.stage == stage and a.value_type == ValueType.UNSTRUCTURED_TEXT), None
    )


def bind(model: ArthurModel, attribute_map: Mapping[str, str] | None = None) -> Binding:
    """Make the binding for ``model``; raises ``BindingError`` when it cannot take prompts and completions."""
    overrides = dict(attribute_map or {})
    unknown_fields = sorted(set(overrides) - set(FIELDS))
    if unknown_fields:
        raise BindingError(f"ARTHUR_ATTRIBUTE_MAP names unknown fields {unknown_fields}; known: {sorted(FIELDS)}")
    by_name = {a.name: a for a in model.attributes}
    missing = sorted(a for a in overrides.values() if a not in by_name)
    if missing:
        raise BindingError(f"ARTHUR_ATTRIBUTE_MAP names attributes model {model.partner_model_id!r} lacks: {missing}")

    targets: dict[str, ModelAttribute] = {}
    defaults = {
        PROMPT: _first_text_attribute(model, Stage.PIPELINE_INPUT),
        COMPLETION: _first_text_attribute(model, Stage.PREDICTED_VALUE),
    }
    for name in FIELDS:
        target = by_name[overrides[name]] if name in overrides else defaults.get(name, by_name.get(name))
        if target is not None:
            targets[name] = target
    for name, stage in ((PROMPT, Stage.PIPELINE_INPUT), (COMPLETION, Stage.PREDICTED_VALUE)):
        if name not in targets:
            raise BindingError(
                f"model {model.partner_model_id!r} has no {stage} {ValueType.UNSTRUCTURED_TEXT} attribute for the {name}"
            )

    skipped = tuple(name for name in FIELDS if name not in targets)
    if skipped:
        _logger.info("Model %r has no attribute for %s: those fields are skipped", model.partner_model_id, ", ".join(skipped))
    return Binding(model_id=model.id, targets=targets, skipped=skipped)
