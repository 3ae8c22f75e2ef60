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

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, NamedTuple

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_arthur.conventions import CONVENTIONS, Convention, GenAI, Messages
from otel_arthur.fields import COMPLETION, COST_USD, FIELDS, PROMPT, TRUNCATED, ValueType
from otel_arthur.messages import (
    INT64_LIMIT,
    Message,
    clean_text,
    field_value,
    first,
    indexed_message_texts,
    json_message_texts,
    message_text,
    parse_json,
    parts_text,
)
from otel_arthur.pricing import cost_usd

_logger = logging.getLogger(__name__)

SERVICE_NAME = "service.name"
TRUNCATION_MARKER = " …[truncated]"  # ends a cut text, so whoever reads it in Arthur knows
MAX_SHORT_TEXT_BYTES = 1024
"""UTF-8 bytes of a text field other than prompt and completion (model, ids, error…): ample for any real one."""
_LONG_TEXTS = frozenset(name for name, spec in FIELDS.items() if spec.value_type == ValueType.UNSTRUCTURED_TEXT)


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


class SpanOrigin(NamedTuple):
    """Where a record's span sits, for ``dedupe`` to tell one call traced twice; never spooled. A tuple: a decode
    process hands it back with each record (``dedupe.Call``), and a tuple pickles in half a dataclass's time."""

    scope: str  # the instrumentation scope's name: which instrumentor made the span
    parent_span_id: int | None
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class InferenceRecord:
    """One generation, ready to bind to a model: identity, time, and named field values."""

    partner_inference_id: str
    inference_timestamp: str
    fields: dict[str, Any]
    origin: SpanOrigin | None = field(default=None, compare=False, repr=False)


def _read_attributes() -> tuple[frozenset[str], tuple[str, ...]]:
    """(keys, key prefixes) of every attribute ``map_span`` reads, of any convention: markers, scalars,
    JSON sources, messages (an indexed layout's by prefix), the error type."""
    keys = {GenAI.ERROR_TYPE}
    prefixes = []
    for convention in CONVENTIONS:
        keys.update((convention.marker, *convention.json_sources))
        keys.update(key for scalar_keys in convention.scalars.values() for key in scalar_keys)
        if convention.system_instructions:
            keys.add(convention.system_instructions)
        if convention.message_layout == Messages.JSON:
            keys.update((convention.input_messages, convention.output_messages))
        else:
            prefixes += [f"{convention.input_messages}.", f"{convention.output_messages}."]
    return frozenset(keys), tuple(prefixes)


READ_KEYS, READ_PREFIXES = _read_attributes()
"""What ``map_span`` reads: an attribute whose key is in ``READ_KEYS`` or starts with one of ``READ_PREFIXES``
(``serve`` converts only those from the protobuf; the record is the same as from all of them)."""


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


@dataclass(slots=True)
class PlainSpan:
    """A finished span as the mapper reads it, in plain values: what ``serve`` builds straight from the
    protobuf (``otlp.generation_spans``, ``attributes`` only those ``READ_KEYS`` and ``READ_PREFIXES``
    name), and what ``map_span`` reads of an SDK ``ReadableSpan``."""

    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start_ns: int
    end_ns: int | None
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    scope: str
    """The instrumentation scope's name."""
    error: str | None = None
    """None unless the span failed; then its status description ("" when it has none)."""


def plain_span(span: ReadableSpan, attributes: Mapping[str, Any]) -> PlainSpan | None:
    """An SDK span as a ``PlainSpan`` (``attributes``: ``span_attributes(span)``); None without context or start."""
    context = span.context
    if context is None or span.start_time is None:
        return None
    status = span.status
    scope = span.instrumentation_scope
    parent = span.parent
    resource = span.resource
    # Positional: a class called with keywords first gathers them into a dict (of every span).
    return PlainSpan(
        span.name, context.trace_id, context.span_id, parent.span_id if parent is not None else None,
        span.start_time, span.end_time, attributes, _plain_mapping(resource.attributes) if resource is not None else {},
        scope.name if scope is not None else "",
        (status.description or "") if status.status_code is StatusCode.ERROR else None,
    )


def _plain_mapping(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """The plain dict under the SDK's ``BoundedAttributes`` (a resource's), whose ``get`` is ``Mapping.get`` in Python."""
    inner = getattr(attributes, "_dict", None)
    return inner if type(inner) is dict else attributes


def map_span(span: ReadableSpan | PlainSpan) -> InferenceRecord | None:
    """The record of a generation span, None for any other span; after at most one lookup per convention
    when the span is no generation."""
    if type(span) is PlainSpan:
        attributes = span.attributes
        convention = classify(attributes)
        plain: PlainSpan | None = span
    else:
        attributes = span_attributes(span)
        convention = classify(attributes)
        plain = plain_span(span, attributes) if convention is not None else None
    if convention is None or plain is None:
        return None
    return _record(plain, attributes, convention)


def _record(span: PlainSpan, attributes: Mapping[str, Any], convention: Convention) -> InferenceRecord:
    # One pass per piece, in the order the record's fields are written (the spooled JSON keeps it); a value
    # that is absent is never written, so no pass over the fields to take Nones out.
    fields: dict[str, Any] = {}
    get = attributes.get
    for name, keys in convention.scalars.items():
        for key in keys:  # first() and field_value(), inlined for the usual text and count: this runs for every field
            value = get(key)
            if value is None:
                continue
            kind = type(value)
            if kind is str:
                if not value.isascii():
                    value = clean_text(value)
            elif kind is not int or not -INT64_LIMIT <= value < INT64_LIMIT:
                value = field_value(value)
                if value is None:
                    continue
            fields[name] = value
            break

    outputs: Any = None
    if convention.message_layout == Messages.JSON:
        outputs = parse_json(get(convention.output_messages))  # read once: the completion and its finish reason
        inputs = json_message_texts(parse_json(get(convention.input_messages)))
        completion = json_message_texts(outputs)[:1]
    else:
        inputs = indexed_message_texts(attributes, convention.input_messages, convention)
        completion = indexed_message_texts(attributes, convention.output_messages, convention, limit=1)
    if convention.system_instructions:
        system = parts_text(parse_json(get(convention.system_instructions)))
        if system:
            inputs.insert(0, ("system", system))
    if inputs:
        fields[PROMPT] = clean_text(render_messages(inputs))
    if completion:
        fields[COMPLETION] = clean_text(completion[0][1])
    if "finish_reason" not in fields and isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        if (finish_reason := field_value(outputs[0].get("finish_reason"))) is not None:
            fields["finish_reason"] = finish_reason
    for source, wanted in convention.json_sources.items():
        if wanted.keys() <= fields.keys():  # every field it could give is there already: not parsed
            continue
        document = parse_json(get(source))
        if isinstance(document, dict):
            for name, keys in wanted.items():
                if name not in fields and (value := field_value(first(document, keys))) is not None:
                    fields[name] = value
    if "total_tokens" not in fields:  # the GenAI semconv has no total: the official instrumentation sets none
        if (total := _total_tokens(fields.get("prompt_tokens"), fields.get("completion_tokens"))) is not None:
            fields["total_tokens"] = total
    cost = cost_usd(fields.get("model"), fields.get("provider"), fields.get("prompt_tokens"),
                    fields.get("completion_tokens"), span.start_ns)
    if cost is not None:
        fields[COST_USD] = cost

    start_ns, end_ns = span.start_ns, span.end_ns
    if end_ns is not None:
        fields["duration"] = (end_ns - start_ns) / 1e9
    try:  # as f"{id:032x}" writes them, at half its cost
        trace_id = fields["trace_id"] = span.trace_id.to_bytes(16, "big").hex()
        span_id = fields["span_id"] = span.span_id.to_bytes(8, "big").hex()
    except OverflowError:  # no SDK or OTLP id is out of range, but a span made by hand may hold one
        trace_id = fields["trace_id"] = f"{span.trace_id:032x}"
        span_id = fields["span_id"] = f"{span.span_id:016x}"
    if (service_name := field_value(span.resource.get(SERVICE_NAME))) is not None:
        fields["service_name"] = service_name
    if span.error is not None:
        fields["error"] = field_value(span.error or get(GenAI.ERROR_TYPE)) or "error"

    # partner_inference_id(), from the texts written already; positional, as PlainSpan in plain_span
    return InferenceRecord(f"{trace_id}-{span_id}", _iso(start_ns), fields,
                           SpanOrigin(span.scope, span.parent_span_id, start_ns, end_ns or start_ns))


@dataclass
class MappedSpans:
    """A batch mapped span by span: its records (what the mapper makes: v3 records, Engine spans),
    and how many spans could not be mapped (with the first reason)."""

    records: list[Any] = field(default_factory=list)
    unmappable: int = 0
    reason: str = ""

    def failed(self, reason: str) -> None:
        self.unmappable += 1
        self.reason = self.reason or reason

    def extend(self, later: MappedSpans) -> None:
        """``later``'s spans, mapped after these: their records, their failures (the first reason kept)."""
        self.records += later.records
        self.unmappable += later.unmappable
        self.reason = self.reason or later.reason


def map_spans(spans: Iterable[ReadableSpan | PlainSpan | Exception],
              mapper: Callable[[Any], Any] = map_span) -> MappedSpans:
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


def render_messages(messages: Sequence[Message | tuple[str, str]]) -> str:
    """``System: …\\nHuman: …\\nAI: …``, as LangChain's get_buffer_string renders a chat history;
    a ``Message`` reads as ``message_text`` says."""
    return "\n".join([
        f"{_ROLE_PREFIXES.get(message[0]) or _ROLE_PREFIXES.get(message[0].lower(), message[0])}: "
        f"{message_text(message) if isinstance(message, Message) else message[1]}"
        for message in messages
    ])


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


def cut_text(text: str, max_bytes: int) -> str:
    """``text`` if it fits in ``max_bytes`` of UTF-8, else cut as ``limit_text`` cuts a prompt."""
    return _truncate_utf8(text, max_bytes) if _utf8_over(text, max_bytes) else text


def _utf8_over(text: str, max_bytes: int) -> bool:
    # A character is at most 4 bytes of UTF-8: most texts are short enough to spare encoding a copy.
    return len(text) * 4 > max_bytes and len(text.encode("utf-8")) > max_bytes


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of UTF-8, ending in ``TRUNCATION_MARKER`` when it fits; never half a character."""
    marker = TRUNCATION_MARKER if max_bytes > len(TRUNCATION_MARKER.encode("utf-8")) else ""
    room = max_bytes - len(marker.encode("utf-8"))
    return text.encode("utf-8")[:room].decode("utf-8", "ignore") + marker


_MAX_CACHED_SECONDS = 4096
_iso_seconds: dict[int, str] = {}


def _iso(time_ns: int) -> str:
    """``datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc).isoformat()``, the same text: the date and
    time of each second written once (spans arrive by the second), the microseconds rounded as it rounds them."""
    timestamp = time_ns / 1e9
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)  # half to even, as fromtimestamp rounds
    if micros >= 1_000_000 or fraction < 0:  # rounds up to the next second, or before 1970: rare, written directly
        return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()
    second = int(whole)
    prefix = _iso_seconds.get(second)
    if prefix is None:
        if len(_iso_seconds) >= _MAX_CACHED_SECONDS:
            _iso_seconds.clear()
        prefix = _iso_seconds[second] = datetime.fromtimestamp(second, tz=timezone.utc).isoformat()[:-len("+00:00")]
    return f"{prefix}.{micros:06d}+00:00" if micros else f"{prefix}+00:00"


def _total_tokens(prompt_tokens: Any, completion_tokens: Any) -> int | None:
    """Prompt plus completion tokens when both are counts, else None (an unknown part is no 0)."""
    counts = (prompt_tokens, completion_tokens)
    if all(isinstance(count, int) and not isinstance(count, bool) for count in counts):
        return prompt_tokens + completion_tokens
    return None
