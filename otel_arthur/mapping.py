"""span -> classify -> record: pure functions from a finished span to an Arthur inference record.

``map_span`` returns ``None`` for anything that is not an LLM generation, after at most one
attribute lookup per convention, so non-LLM spans cost next to nothing. Generations become an
``InferenceRecord`` whose ``fields`` use the names of ``otel_arthur.fields.FIELDS``; a value the
span does not carry stays absent (usage that was not reported is not 0).

Attribute values are whatever the SDK kept (str, bytes, bool, int, float, None, sequences and
mappings of those, nested): each field becomes one JSON-safe scalar or stays absent, so no value
makes ``map_span`` or the spool raise. ``map_spans`` maps a batch span by span, so anything
unforeseen still costs only its own span.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_arthur.conventions import CONVENTIONS, GenAI, Convention, Messages
from otel_arthur.fields import COMPLETION, FIELDS, PROMPT, TRUNCATED, ValueType

_logger = logging.getLogger(__name__)

SERVICE_NAME = "service.name"
TRUNCATION_MARKER = " …[truncated]"  # ends a cut text, so whoever reads it in Arthur knows
MAX_SHORT_TEXT_BYTES = 1024
"""UTF-8 bytes of a text field other than prompt and completion (model, ids, error…): ample for any real one."""
_LONG_TEXTS = frozenset(name for name, spec in FIELDS.items() if spec.value_type == ValueType.UNSTRUCTURED_TEXT)
_INT64 = 2**63  # Arthur's INTEGER; a longer int is no count, and past 4300 digits json cannot even write it

Scalar = str | int | float | bool

# LangChain's get_buffer_string prefixes, which the seed's ArthurCallbackHandler logged.
_ROLE_PREFIXES = {
    "system": "System",
    "user": "Human",
    "human": "Human",
    "assistant": "AI",
    "ai": "AI",
    "tool": "Tool",
    "function": "Function",
}

Message = tuple[str, str]  # (role, text)


@dataclass(frozen=True, slots=True)
class InferenceRecord:
    """One generation, ready to bind to a model: identity, time, and named field values."""

    partner_inference_id: str
    inference_timestamp: str
    fields: dict[str, Any]


def classify(attributes: Mapping[str, Any]) -> Convention | None:
    """The convention that marks these attributes as a generation, or None."""
    for convention in CONVENTIONS:
        # Conventions share marker names across versions (legacy OpenLLMetry sets
        # gen_ai.operation.name=llm_request), so a non-matching value moves on to the next row.
        try:  # free unless it raises: an isinstance test would add a fifth to every ignored span's cost
            if attributes.get(convention.marker) in convention.generation_values:
                return convention
        except TypeError:  # an unhashable marker (the SDK keeps dicts and lists) is no generation
            continue
    return None


def partner_inference_id(trace_id: int, span_id: int) -> str:
    """Deterministic identity: a retried or re-exported span can never become a second inference."""
    return f"{trace_id:032x}-{span_id:016x}"


def span_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes, read-only, as cheaply as the SDK allows.

    ``ReadableSpan.attributes`` wraps the SDK's ``BoundedAttributes``, whose ``get`` is
    ``Mapping.get`` in Python: a missed key raises and catches ``KeyError`` (about 0.5 µs, the
    bulk of ignoring a span). Its plain dict answers the same in tens of nanoseconds; any other
    span (a ``ReadableSpan`` built by hand, another SDK) goes through the public property.
    """
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    if type(inner) is dict:
        return inner
    return span.attributes or {}


def map_span(span: ReadableSpan) -> InferenceRecord | None:
    attributes = span_attributes(span)
    convention = classify(attributes)
    if convention is None or span.context is None or span.start_time is None:
        return None

    fields: dict[str, Any] = {}
    get = attributes.get
    for name, keys in convention.scalars.items():
        for key in keys:  # _first(), inlined: this loop runs for every field of every generation
            value = get(key)
            if value is not None and (value := field_value(value)) is not None:
                fields[name] = value
                break

    inputs, outputs = _messages(attributes, convention)
    if convention.system_instructions:
        system = _parts_text(_json(attributes.get(convention.system_instructions)))
        if system:
            inputs.insert(0, ("system", system))
    if inputs:
        fields[PROMPT] = clean_text(render_messages(inputs))
    if outputs:
        fields[COMPLETION] = clean_text(outputs[0][1])
    if fields.get("finish_reason") is None and convention.message_layout == Messages.JSON:
        fields["finish_reason"] = _output_finish_reason(attributes.get(convention.output_messages))
    for source, wanted in convention.json_sources.items():
        document = _json(attributes.get(source))
        if isinstance(document, dict):
            for name, keys in wanted.items():
                if fields.get(name) is None:
                    fields[name] = field_value(_first(document, keys))

    if span.end_time is not None:
        fields["duration"] = (span.end_time - span.start_time) / 1e9
    fields["trace_id"] = f"{span.context.trace_id:032x}"
    fields["span_id"] = f"{span.context.span_id:016x}"
    if span.resource is not None:
        fields["service_name"] = field_value(span.resource.attributes.get(SERVICE_NAME))
    if span.status.status_code is StatusCode.ERROR:
        fields["error"] = field_value(span.status.description or attributes.get(GenAI.ERROR_TYPE)) or "error"

    return InferenceRecord(
        partner_inference_id=partner_inference_id(span.context.trace_id, span.context.span_id),
        inference_timestamp=_iso(span.start_time),
        fields={k: v for k, v in fields.items() if v is not None},
    )


@dataclass
class MappedSpans:
    """A batch mapped span by span: its records, and how many spans could not be mapped (with the first reason)."""

    records: list[InferenceRecord] = field(default_factory=list)
    unmappable: int = 0
    reason: str = ""

    def failed(self, reason: str) -> None:
        self.unmappable += 1
        self.reason = self.reason or reason


def map_spans(spans: Iterable[ReadableSpan | Exception],
              mapper: Callable[[ReadableSpan], InferenceRecord | None] = map_span) -> MappedSpans:
    """Map each span on its own: one the mapper raises on, or that comes as an exception saying why it
    is unusable (``otlp.generation_spans``), costs only itself. ``None`` (not a generation) is left out.

    The one isolation net of both front doors: the exporter's ``export`` and ``serve``'s decoding.
    """
    mapped = MappedSpans()
    for span in spans:
        if isinstance(span, Exception):
            mapped.failed(str(span))
            continue
        try:
            record = mapper(span)
        except Exception as exc:  # one odd span must not cost the others their place
            _logger.debug("Cannot map span %r", getattr(span, "name", None), exc_info=True)
            mapped.failed(f"span {getattr(span, 'name', '')!r} cannot be mapped: {type(exc).__name__}")
            continue
        if record is not None:
            mapped.records.append(record)
    return mapped


def render_messages(messages: Sequence[Message]) -> str:
    """``System: …\\nHuman: …\\nAI: …``, as LangChain's get_buffer_string renders a chat history."""
    return "\n".join(f"{_ROLE_PREFIXES.get(role.lower(), role)}: {text}" for role, text in messages)


def limit_text(record: InferenceRecord, max_bytes: int) -> InferenceRecord:
    """The record with every text cut to fit, marked ``truncated``: the prompt and completion to
    ``max_bytes`` of UTF-8, the other texts to ``MAX_SHORT_TEXT_BYTES`` (or ``max_bytes`` if smaller)."""
    short_bytes = min(MAX_SHORT_TEXT_BYTES, max_bytes)
    cut = {}
    for name, value in record.fields.items():
        # A character is at most 4 bytes of UTF-8: most fields are too short to be over either limit.
        if isinstance(value, str) and len(value) * 4 > short_bytes:
            limit = max_bytes if name in _LONG_TEXTS else short_bytes
            if _utf8_over(value, limit):
                cut[name] = _truncate_utf8(value, limit)
    if not cut:
        return record
    return replace(record, fields={**record.fields, **cut, TRUNCATED: True})


def _utf8_over(text: str, max_bytes: int) -> bool:
    # A character is at most 4 bytes of UTF-8: most texts are short enough to spare encoding a copy.
    return len(text) * 4 > max_bytes and len(text.encode("utf-8")) > max_bytes


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of UTF-8, ending in ``TRUNCATION_MARKER`` when it fits; never half a character."""
    marker = TRUNCATION_MARKER if max_bytes > len(TRUNCATION_MARKER.encode("utf-8")) else ""
    room = max_bytes - len(marker.encode("utf-8"))
    return text.encode("utf-8")[:room].decode("utf-8", "ignore") + marker


def field_value(value: Any) -> Scalar | None:
    """An attribute value as a record field: one JSON-safe scalar, or None when it holds none.

    Text loses lone surrogates, bytes are decoded (invalid UTF-8 replaced), a sequence gives its first
    item (``finish_reasons`` has one per choice); mappings, NaN, infinities and integers beyond 64 bits
    are no field value.
    """
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return None


def clean_text(text: str) -> str:
    """Lone surrogates cannot be encoded as UTF-8; replace them rather than fail the batch later."""
    if text.isascii():  # no surrogate possible; spares encoding a copy of every prompt
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _first(attributes: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc).isoformat()


def _json(raw: Any) -> Any:
    if not isinstance(raw, str):
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's limit
        return None


def _messages(attributes: Mapping[str, Any], convention: Convention) -> tuple[list[Message], list[Message]]:
    if convention.message_layout == Messages.JSON:
        return (_json_messages(attributes.get(convention.input_messages)),
                _json_messages(attributes.get(convention.output_messages)))
    return (_indexed_messages(attributes, convention.input_messages, convention.message_infix),
            _indexed_messages(attributes, convention.output_messages, convention.message_infix))


def _parts_text(parts: Any) -> str:
    """Text of a GenAI ``parts`` list (or a bare string); non-text parts are left out."""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        return ""
    return "".join(
        str(part.get("content", "")) for part in parts
        if isinstance(part, dict) and part.get("type", "text") == "text"
    )


def _json_messages(raw: Any) -> list[Message]:
    messages = _json(raw)
    if not isinstance(messages, list):
        return []
    return [
        (str(m.get("role") or "unknown"), _parts_text(m.get("parts", m.get("content"))))
        for m in messages if isinstance(m, dict)
    ]


def _output_finish_reason(raw: Any) -> Scalar | None:
    messages = _json(raw)
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return field_value(messages[0].get("finish_reason"))
    return None


def _text(value: Any) -> str:
    """An indexed message's role or content as text: "" when the attribute holds nothing usable."""
    if isinstance(value, str):
        return value
    scalar = field_value(value)
    return "" if scalar is None else str(scalar)


def _indexed_messages(attributes: Mapping[str, Any], prefix: str, infix: str) -> list[Message]:
    messages: list[Message] = []
    index = 0
    while True:
        base = f"{prefix}.{index}{infix}"
        role, content = attributes.get(f"{base}.role"), attributes.get(f"{base}.content")
        if role is None and content is None:
            return messages
        messages.append((_text(role) or "unknown", _text(content)))
        index += 1
