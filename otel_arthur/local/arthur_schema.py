"""What Arthur's v3 API accepts: model bodies and inference rows, checked by pure functions.

The local Arthur answers with these checks: a bad model body is a 400, a bad inference row a per-record
400 inside the 207. Messages name the offending attribute so a failing client knows what to fix.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NamedTuple

# The enumerations of arthurai.common.constants that a model may use.
INPUT_TYPES = frozenset({"TABULAR", "IMAGE", "NLP", "TIME_SERIES"})
OUTPUT_TYPES = frozenset(
    {"REGRESSION", "MULTICLASS", "MULTILABEL", "OBJECT_DETECTION", "TOKEN_SEQUENCE", "RANKED_LIST"}
)
STAGES = frozenset(
    {
        "PIPELINE_INPUT",
        "PREDICT_FUNCTION_INPUT",
        "PREDICTED_VALUE",
        "NON_INPUT_DATA",
        "GROUND_TRUTH",
        "GROUND_TRUTH_CLASS",
    }
)
VALUE_TYPES = frozenset(
    {
        "STRING",
        "INTEGER",
        "FLOAT",
        "IMAGE",
        "BOOLEAN",
        "TIMESTAMP",
        "UNSTRUCTURED_TEXT",
        "BOUNDING_BOX",
        "TOKENS",
        "TOKEN_LIKELIHOODS",
        "RANKED_LIST",
        "ARRAY(STRING)",
        "TIME_SERIES",
    }
)
# Ground truth travels in ``ground_truth_data``, never in ``inference_data``.
_GROUND_TRUTH_STAGES = frozenset({"GROUND_TRUTH", "GROUND_TRUTH_CLASS"})
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # the SDK's own rule for attribute names


def _parse_timestamp(value: object) -> datetime | None:
    """An ISO-8601 string with a UTC offset, else None (a naive time is ambiguous, so it is refused)."""
    if not isinstance(value, str):
        return None
    try:
        # Python 3.10's fromisoformat does not read a "Z" suffix
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unchecked(value: object) -> bool:
    return True


# value_type -> check of a non-null value; types missing here are not checked.
_VALUE_CHECKS: dict[str, Callable[[object], bool]] = {
    "STRING": _is_text,
    "UNSTRUCTURED_TEXT": _is_text,
    "INTEGER": _is_integer,
    "FLOAT": _is_number,
    "BOOLEAN": lambda value: isinstance(value, bool),
    "TIMESTAMP": lambda value: _parse_timestamp(value) is not None,
    "TOKENS": lambda value: isinstance(value, list) and all(isinstance(t, str) for t in value),
    "TOKEN_LIKELIHOODS": lambda value: isinstance(value, list) and all(isinstance(t, dict) for t in value),
}


def check_model(body: object) -> str | None:
    """Why a ``POST /models`` body cannot become a model, or None when it can."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("partner_model_id"), str) or not body["partner_model_id"]:
        return "partner_model_id must be a non-empty string"
    if body.get("input_type") not in INPUT_TYPES:
        return f"input_type must be one of {sorted(INPUT_TYPES)}"
    if body.get("output_type") not in OUTPUT_TYPES:
        return f"output_type must be one of {sorted(OUTPUT_TYPES)}"
    attributes = body.get("attributes")
    if not isinstance(attributes, list) or not attributes:
        return "attributes must be a non-empty list"
    names: set[str] = set()
    for attribute in attributes:
        if not isinstance(attribute, dict):
            return "each attribute must be a JSON object"
        name = attribute.get("name")
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.match(name):
            return f"invalid attribute name {name!r}: letters, digits and underscores, not starting with a digit"
        if name in names:
            return f"duplicate attribute name {name!r}"
        names.add(name)
        if attribute.get("value_type") not in VALUE_TYPES:
            return f"attribute {name!r}: value_type must be one of {sorted(VALUE_TYPES)}"
        if attribute.get("stage") not in STAGES:
            return f"attribute {name!r}: stage must be one of {sorted(STAGES)}"
    return None


class InferenceRecord(NamedTuple):
    """One accepted inference, as stored."""

    partner_inference_id: str
    inference_timestamp: str
    batch_id: str | None
    inference_data: dict[str, Any]


class InferenceRejected(ValueError):
    """A row of ``POST /models/{id}/inferences`` that Arthur would answer with a per-record 400."""


# value_type -> the exact types whose every value passes its check (null always does). ``json.loads``
# makes only exact types, so one set lookup settles almost every value; anything else (a TIMESTAMP
# string, a list of TOKENS, a subclass) takes the full check.
_SETTLED_BY_TYPE: dict[str, frozenset[type]] = {
    "STRING": frozenset({str, type(None)}),
    "UNSTRUCTURED_TEXT": frozenset({str, type(None)}),
    "INTEGER": frozenset({int, type(None)}),
    "FLOAT": frozenset({int, float, type(None)}),
    "BOOLEAN": frozenset({bool, type(None)}),
}
_NULL_ONLY = frozenset({type(None)})


class InferenceChecker:
    """Checks inference rows against one model's attributes: its tables are built once, not once per row.

    A fast path accepts the common good row with a few lookups; any row it cannot vouch for goes
    through the full check, which alone decides rejections and words their messages. Make one per
    request: it remembers the shapes of the good rows it has seen.
    """

    def __init__(self, attributes: list[dict[str, Any]]) -> None:
        self._by_name = {a["name"]: a for a in attributes if a["stage"] not in _GROUND_TRUTH_STAGES}
        self._names = frozenset(self._by_name)
        self._types = {
            name: _SETTLED_BY_TYPE.get(a["value_type"], _NULL_ONLY)
            for name, a in self._by_name.items()
            if a["value_type"] in _VALUE_CHECKS
        }
        self._required = tuple(name for name, a in self._by_name.items() if a["stage"] == "PIPELINE_INPUT")
        # Names and value types of inference_data known good. Types alone settle such a shape's
        # values, and one client's rows mostly share a few shapes: a set lookup instead of a loop.
        self._good_shapes: set[tuple[object, ...]] = set()

    def __call__(self, row: object) -> InferenceRecord:
        """The stored record for ``row``; ``InferenceRejected`` saying why it cannot be stored."""
        if type(row) is dict:
            data = row.get("inference_data")
            if type(data) is dict and self._plainly_good(data):
                partner_inference_id = row.get("partner_inference_id")
                timestamp = row.get("inference_timestamp")
                batch_id = row.get("batch_id")
                if (
                    type(partner_inference_id) is str
                    and partner_inference_id
                    and _parse_timestamp(timestamp) is not None
                    and (batch_id is None or type(batch_id) is str)
                ):
                    return InferenceRecord(partner_inference_id, timestamp, batch_id, data)
        return self._check(row)

    def _plainly_good(self, data: dict[str, Any]) -> bool:
        shape = (*data, *map(type, data.values()))
        if shape in self._good_shapes:
            return True
        if not data.keys() <= self._names:
            return False
        types = self._types
        for name, value in data.items():
            allowed = types.get(name)
            if allowed is not None and type(value) not in allowed:
                return False
        if any(data.get(name) is None for name in self._required):
            return False
        self._good_shapes.add(shape)
        return True

    def _check(self, row: object) -> InferenceRecord:
        """Every problem of the row in one message. Missing ``partner_inference_id`` gets a generated
        one and a missing ``inference_timestamp`` is now, as Arthur does."""
        if not isinstance(row, dict):
            raise InferenceRejected("inference must be a JSON object")
        data = row.get("inference_data")
        if not isinstance(data, dict):
            raise InferenceRejected("inference_data must be a JSON object")

        problems: list[str] = []
        by_name = self._by_name
        for name, value in data.items():
            attribute = by_name.get(name)
            if attribute is None:
                problems.append(f"unknown attribute {name!r}")
            elif value is not None and not _VALUE_CHECKS.get(attribute["value_type"], _unchecked)(value):
                problems.append(f"attribute {name!r} expects {attribute['value_type']}, got {type(value).__name__}")
        for name in self._required:
            if data.get(name) is None:
                problems.append(f"missing required input attribute {name!r}")

        partner_inference_id = row.get("partner_inference_id")
        if partner_inference_id is None:
            partner_inference_id = str(uuid.uuid4())
        elif not isinstance(partner_inference_id, str) or not partner_inference_id:
            problems.append("partner_inference_id must be a non-empty string")
        timestamp = row.get("inference_timestamp")
        if timestamp is None:
            timestamp = datetime.now(timezone.utc).isoformat()
        elif _parse_timestamp(timestamp) is None:
            problems.append(f"inference_timestamp {timestamp!r} is not an ISO-8601 time with a UTC offset")
        batch_id = row.get("batch_id")
        if batch_id is not None and not isinstance(batch_id, str):
            problems.append("batch_id must be a string")

        if problems:
            raise InferenceRejected("; ".join(problems))
        return InferenceRecord(partner_inference_id, timestamp, batch_id, data)
