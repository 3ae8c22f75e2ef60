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


def check_inference(row: object, attributes: list[dict[str, Any]]) -> InferenceRecord:
    """Check one inference row against a model's attributes; raise ``InferenceRejected`` saying why.

    Missing ``partner_inference_id`` gets a generated one and a missing ``inference_timestamp`` is
    now, as Arthur does; every other problem in the row is reported in one message.
    """
    if not isinstance(row, dict):
        raise InferenceRejected("inference must be a JSON object")
    data = row.get("inference_data")
    if not isinstance(data, dict):
        raise InferenceRejected("inference_data must be a JSON object")

    problems: list[str] = []
    by_name = {a["name"]: a for a in attributes if a["stage"] not in _GROUND_TRUTH_STAGES}
    for name, value in data.items():
        attribute = by_name.get(name)
        if attribute is None:
            problems.append(f"unknown attribute {name!r}")
        elif value is not None and not _VALUE_CHECKS.get(attribute["value_type"], _unchecked)(value):
            problems.append(f"attribute {name!r} expects {attribute['value_type']}, got {type(value).__name__}")
    for attribute in by_name.values():
        if attribute["stage"] == "PIPELINE_INPUT" and data.get(attribute["name"]) is None:
            problems.append(f"missing required input attribute {attribute['name']!r}")

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
