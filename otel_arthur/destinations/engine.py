"""Arthur Engine: the AI spans of a trace, in OpenInference form, over ``POST /api/v1/traces``.

The Engine reads only OpenInference attributes (``../shared/reference/arthur-engine-api.md``), so
each span it gets carries them: spans already in OpenInference pass as they are, OpenLLMetry and
GenAI-semconv spans get them added (``otel_arthur.openinference``), every original attribute,
id, parent link, timing, status and event kept. What is spooled per span is its OTLP protobuf
(resource, scope and span, serialized apart so a request can group spans by resource and scope);
a re-sent span carries the same trace and span id.

Privacy is v3's (``RecordFilter``) applied to the whole span: the added OpenInference texts go
through its text hooks (a withheld one is left out); the span's own attributes that carry what
was said, in any convention (``conventions.CONTENT_ATTRIBUTES``), become ``[content withheld]``
when their side is withheld, as does every string attribute of its events; redaction and the
``max_text_bytes`` cap act on every string.

The Engine's 206 says how many spans it refused and why, not which: re-sending would store the
others twice, so the refused ones are counted as dropped (reason ``engine_rejected``), not as
delivered, and logged with the Engine's reasons.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from otel_arthur.clients.engine import EngineClient, EngineForbidden
from otel_arthur.clients.http import DROPPED, RecordResult
from otel_arthur.config import ENGINE_SPANS_AI, EngineSettings, display_url
from otel_arthur.conventions import CONTENT_ATTRIBUTES
from otel_arthur.delivery import AnswerWait, Sender, SenderObserver, send_in_batches
from otel_arthur.destinations import ENGINE_KEY_PREFIX
from otel_arthur.mapping import MappedSpans, map_spans, span_attributes
from otel_arthur.openinference import openinference_attributes, span_kind
from otel_arthur.privacy import CONTENT_WITHHELD, RecordFilter
from otel_arthur.stats import DropReason

_logger = logging.getLogger(__name__)

TASK_ATTRIBUTE = "arthur.task"  # the resource attribute the Engine routes a trace by, first
REJECTION_LOG_INTERVAL = 60.0  # seconds; at most one line about refused spans per interval
_VALUE_KINDS = {str: "string_value", bool: "bool_value", int: "int_value", float: "double_value"}  # AnyValue's fields
_DELIVERED = RecordResult(200, "")
_REJECTED = RecordResult(DROPPED, "refused by Arthur Engine inside a 206")


@dataclass(frozen=True, slots=True)
class EngineSpan:
    """One span as the Engine gets it: serialized OTLP ``Resource``, ``InstrumentationScope`` and ``Span``."""

    id: str  # <trace_id>-<span_id>, hex: the spool's identity column
    resource: bytes
    scope: bytes
    span: bytes


class EngineSpanCodec:
    """Spool rows: the three protobufs base64'd in a small JSON object."""

    @staticmethod
    def encode(item: EngineSpan) -> str:
        return json.dumps({"id": item.id, "resource": base64.b64encode(item.resource).decode("ascii"),
                           "scope": base64.b64encode(item.scope).decode("ascii"),
                           "span": base64.b64encode(item.span).decode("ascii")}, separators=(",", ":"))

    @staticmethod
    def decode(body: str) -> EngineSpan:
        row = json.loads(body)
        return EngineSpan(row["id"], base64.b64decode(row["resource"]), base64.b64decode(row["scope"]),
                          base64.b64decode(row["span"]))

    @staticmethod
    def identity(item: EngineSpan) -> str:
        return item.id

    @staticmethod
    def claimed(identity: str, body: str) -> EngineSpan:
        return EngineSpanCodec.decode(body)


def engine_key(settings: EngineSettings) -> str:
    """Which Engine and task spans are for (URL without user info); spool rows carry it."""
    return f"{ENGINE_KEY_PREFIX}{display_url(settings.url)} {settings.task_id or '-'}"


class SpanPrivacy:
    """The privacy of v3 records (``RecordFilter``: content switch, redaction, size cap) for a whole span.

    The OpenInference attributes are translated through its text hooks; the span's own attributes
    and its events, which carry the same texts in their convention's form, are filtered in place.
    """

    def __init__(self, settings: EngineSettings, redact: Callable[[str], str] | None = None) -> None:
        self.filter = RecordFilter.from_settings(settings, redact)  # EngineSettings has the fields it reads
        content = self.filter.content
        self._withheld = frozenset(side for side, sent in (("input", content.send_prompt),
                                                           ("output", content.send_completion)) if not sent)
        self.input_text = self.filter.text_hook(output=False)
        self.output_text = self.filter.text_hook(output=True)
        self.text = self.filter.scrub  # every other string: redacted and cut as records' texts are
        # Without these, only a text over the size cap (or with a lone surrogate) changes.
        self.may_keep = not self._withheld and self.filter.redactor is None

    def keeps(self, attributes: Mapping[str, Any], span_bytes: int) -> bool:
        """Whether filtering would leave every text of these attributes (``otlp.attribute_dict``'s of a parsed
        span of ``span_bytes`` serialized) as it is: told from the converted values, without reading the message
        again, or from the size alone."""
        if not self.may_keep:
            return False
        # Each text is shorter than its span, and a parsed protobuf string is valid UTF-8 (no lone surrogate
        # to replace): within the cap, scrub keeps every one as it is, unread.
        if span_bytes <= self.filter.max_text_bytes:
            return True
        text = self.text
        for value in attributes.values():
            if type(value) is str:
                if text(value) is not value:
                    return False
            elif type(value) is tuple and not all(type(item) is not str or text(item) is item for item in value):
                return False
        return True

    def key_values(self, key_values: Any, *, events: bool = False) -> None:
        """Filter OTLP ``KeyValue``s in place: a span's attributes, or (``events``) an event's, whose
        texts are all withheld when any content is (events carry prompts and completions by any name)."""
        sides, side, text = self._withheld, CONTENT_ATTRIBUTES.side, self.text
        for kv in key_values:
            # With every side sent (the default) no key needs to be told apart: side() is the bulk of the cost.
            withheld = bool(sides) and (events or side(kv.key) in sides)
            value = kv.value
            kind = value.WhichOneof("value")
            if kind == "string_value":
                _filter_text(value, withheld, text)
            elif kind == "array_value":
                for item in value.array_value.values:
                    if item.WhichOneof("value") == "string_value":
                        _filter_text(item, withheld, text)


def _filter_text(value: Any, withheld: bool, text: Callable[[str], str]) -> None:
    """An ``AnyValue``'s text withheld or filtered, written back only when it changed (writing costs as much as reading)."""
    if withheld:
        value.string_value = CONTENT_WITHHELD
        return
    original = value.string_value
    filtered = text(original)
    if filtered is not original and filtered != original:
        value.string_value = filtered


class EngineDestination:
    name = "engine"
    title = "Arthur Engine"
    codec = EngineSpanCodec()
    calls = None  # a trace store: every span, the provider SDK's beside the framework's

    def __init__(self, settings: EngineSettings, redact: Callable[[str], str] | None = None) -> None:
        from opentelemetry.exporter.otlp.proto.common._internal import (  # the protobuf stack, once used
            _encode_attributes,
            _encode_instrumentation_scope,
            _encode_resource,
        )
        from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
            _encode_span,
        )

        self._encode_attributes, self._encode_span = _encode_attributes, _encode_span
        self._encode_resource, self._encode_scope = _encode_resource, _encode_instrumentation_scope
        self.settings = settings
        self.key = engine_key(settings)
        self.privacy = SpanPrivacy(settings, redact)
        self._only_ai = settings.spans == ENGINE_SPANS_AI
        # id(SDK resource or scope) -> (it, its bytes): a process has few; holding it keeps the id its own.
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}

    # -- the in-app front door: SDK spans --------------------------------------------------------

    def items(self, spans: Sequence[ReadableSpan]) -> MappedSpans:
        return map_spans(spans, self.item)

    def item(self, span: ReadableSpan) -> EngineSpan | None:
        """The span as the Engine gets it, or None when it is not sent (not AI work, with ``engine_spans=ai``)."""
        attributes = span_attributes(span)
        if (self._only_ai and span_kind(attributes) is None) or span.context is None:
            return None
        context = span.context
        return EngineSpan(f"{context.trace_id:032x}-{context.span_id:016x}",
                          self._cached(self._resources, span.resource, self._resource_bytes),
                          self._cached(self._scopes, span.instrumentation_scope, self._scope_bytes),
                          self._translated(self._encode_span(span), attributes))

    def _resource_bytes(self, resource: Any) -> bytes:
        return self._with_task(self._encode_resource(resource))

    def _scope_bytes(self, scope: Any) -> bytes:
        message = self._encode_scope(scope)
        return message.SerializeToString() if message is not None else b""

    @staticmethod
    def _cached(cache: dict[int, tuple[Any, bytes]], key: Any, encode: Callable[[Any], bytes]) -> bytes:
        cached = cache.get(id(key))
        if cached is None or cached[0] is not key:
            if len(cache) >= 256:  # a churn of resources or scopes must not grow it
                cache.clear()
            cached = cache[id(key)] = (key, encode(key))
        return cached[1]

    # -- serve's front door: OTLP requests -------------------------------------------------------

    def from_otlp(self, request: Any, converted: Any = None) -> MappedSpans:
        """The spans of a parsed ``ExportTraceServiceRequest``; one that cannot be translated costs only itself.

        ``converted`` (an ``otlp.Converted``, empty), when given, gets each span's converted attributes, for v3.
        """
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        from otel_arthur import otlp  # serve's decoding (the server extra)

        mapped = MappedSpans()
        for resource_spans in request.resource_spans:
            resource: bytes | None = None
            for scope_spans in resource_spans.scope_spans:
                scope: bytes | None = None
                for span in scope_spans.spans:
                    if converted is not None:
                        converted.append(None)
                    try:
                        if self._only_ai and not otlp.marked(span.attributes, otlp.AI_MARKERS):
                            continue  # decided from the raw markers, nothing converted
                        if converted is None:
                            attributes = otlp.attribute_dict(span.attributes)
                        else:
                            converted[-1] = otlp.marked_attribute_dict(span.attributes)
                            attributes = converted[-1][0]
                        if self._only_ai and span_kind(attributes) is None:
                            continue
                        if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id):
                            mapped.failed(f"span {span.name!r} has an invalid trace or span id")
                            continue
                        if resource is None:
                            resource = self._with_task(_copy(resource_spans.resource))
                        if scope is None:
                            scope = scope_spans.scope.SerializeToString()
                        mapped.records.append(EngineSpan(f"{span.trace_id.hex()}-{span.span_id.hex()}", resource,
                                                         scope, self._translated_otlp(span, attributes, Span)))
                    except Exception as exc:  # one odd span must not cost the others their place
                        mapped.failed(f"span {span.name!r} cannot be translated: {type(exc).__name__}")
        return mapped

    def _translated_otlp(self, span: Any, attributes: Mapping[str, Any], span_type: type) -> bytes:
        """``_translated`` of a request's span, which stays as it is: when privacy changes none of its texts
        (no events to read), its own bytes followed by the added attributes' (protobuf appends a repeated
        field's entries met later), sparing a copy of the span; else a copy, filtered."""
        if not span.events and self.privacy.may_keep:
            own = span.SerializeToString()
            if self.privacy.keeps(attributes, len(own)):
                appended = span_type()
                self._add_attributes(appended.attributes, self._added(attributes, span.start_time_unix_nano))
                return own + appended.SerializeToString()
        message = span_type()
        message.CopyFrom(span)
        return self._translated(message, attributes)

    # -- both ----------------------------------------------------------------------------------

    def _with_task(self, resource: Any) -> bytes:
        """A ``Resource`` message's bytes, with ``arthur.task`` set when a task id is."""
        if self.settings.task_id:
            kept = [kv for kv in resource.attributes if kv.key != TASK_ATTRIBUTE]
            del resource.attributes[:]
            resource.attributes.extend(kept + self._encode_attributes({TASK_ATTRIBUTE: self.settings.task_id}))
        return resource.SerializeToString()

    def _translated(self, message: Any, attributes: Mapping[str, Any]) -> bytes:
        """The OTLP ``Span`` message, privacy applied to what it carries, with the OpenInference attributes added."""
        added = self._added(attributes, message.start_time_unix_nano)
        self.privacy.key_values(message.attributes)
        self._add_attributes(message.attributes, added)
        for event in message.events:
            self.privacy.key_values(event.attributes, events=True)
        return message.SerializeToString()

    def _add_attributes(self, key_values: Any, attributes: Mapping[str, Any]) -> None:
        """``attributes`` appended to OTLP ``KeyValue``s: scalars set in place, at a third of the cost of the
        SDK encoder's ``KeyValue`` and ``AnyValue`` objects, which are copied in; other values through it."""
        for key, value in attributes.items():
            kind = _VALUE_KINDS.get(type(value))
            if kind is not None:
                try:
                    setattr(key_values.add(key=key).value, kind, value)
                    continue
                except ValueError:  # an integer past 64 bits: the encoder's to log and leave out
                    del key_values[-1]
            key_values.extend(self._encode_attributes({key: value}))

    def _added(self, attributes: Mapping[str, Any], start_time_ns: int) -> dict[str, Any]:
        """The OpenInference attributes to add, their texts through privacy's hooks."""
        privacy = self.privacy
        return openinference_attributes(attributes, text=privacy.input_text, output_text=privacy.output_text,
                                        start_time_ns=start_time_ns or None)

    def prepare(self, item: EngineSpan) -> EngineSpan:
        return item  # privacy was applied when the span was translated

    def sender(self, observer: SenderObserver) -> Sender:
        return EngineSender(self.settings, observer)


def _copy(message: Any) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def build_request(items: Sequence[EngineSpan]) -> bytes:
    """One ``ExportTraceServiceRequest``, spans grouped under their resource and scope, in order of arrival."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    resources: dict[bytes, Any] = {}
    scopes: dict[tuple[bytes, bytes], Any] = {}
    for item in items:
        scope_spans = scopes.get((item.resource, item.scope))
        if scope_spans is None:
            resource_spans = resources.get(item.resource)
            if resource_spans is None:
                resource_spans = resources[item.resource] = request.resource_spans.add()
                resource_spans.resource.ParseFromString(item.resource)
            scope_spans = scopes[(item.resource, item.scope)] = resource_spans.scope_spans.add()
            scope_spans.scope.ParseFromString(item.scope)
        scope_spans.spans.add().ParseFromString(item.span)
    return request.SerializeToString()


class EngineSender:
    """Sends spooled spans in requests bounded by span count and bytes; refused-in-a-206 spans are counted."""

    def __init__(self, settings: EngineSettings, observer: SenderObserver, client: EngineClient | None = None) -> None:
        self._settings = settings
        self._observer = observer
        self._client = client or EngineClient(settings)
        self._wait = AnswerWait(settings.timeout)
        self._rejection_log_at = 0.0
        self._unreported = 0

    def prepare(self) -> None:
        """With a task id, check the task exists (a wrong one is one ERROR line at start-up, not 500s later).

        A key whose role may write traces but not read tasks (VALIDATION-USER, CHAT-USER) is answered
        403: that leaves the task unchecked, not delivery blocked.
        """
        if not self._settings.task_id:
            return
        try:
            self._client.get_task(self._settings.task_id)
        except EngineForbidden as exc:
            _logger.info("Cannot check Arthur Engine task %s (%s); delivering to it unchecked",
                         self._settings.task_id, exc)

    def send(self, items: Sequence[EngineSpan]) -> list[RecordResult]:
        sizes = [len(item.span) + len(item.resource) + len(item.scope) for item in items]

        def post(batch: range) -> list[RecordResult]:
            chosen = items[batch.start:batch.stop]
            body = build_request(chosen)
            answer = self._client.send_traces(body, len(chosen), self._wait.read_timeout(len(body)))
            if answer.rejected:
                self._rejected(answer.rejected, len(chosen), answer.reasons)
            # The 206 says how many, not which: as many results as refusals say so, whichever spans they fall on.
            return [_DELIVERED] * (len(chosen) - answer.rejected) + [_REJECTED] * answer.rejected

        return send_in_batches(sizes, self._settings.batch_max_records, self._settings.batch_max_bytes, post,
                               self._wait, self._observer.observe_request)

    def set_deadline(self, deadline: float) -> None:
        """No request lasts past ``deadline`` (``time.monotonic()``): shutdown's."""
        self._client.set_deadline(deadline)

    def _rejected(self, rejected: int, sent: int, reasons: tuple[str, ...]) -> None:
        self._observer.drop(DropReason.ENGINE_REJECTED, rejected)
        self._unreported += rejected
        now = time.monotonic()
        if now >= self._rejection_log_at:
            _logger.warning("Arthur Engine refused %d spans (latest: %d of %d in one request: %s); it does not say"
                            " which, so they are counted as dropped (reason %s), not sent again",
                            self._unreported, rejected, sent, "; ".join(reasons) or "no reason given",
                            DropReason.ENGINE_REJECTED)
            self._unreported = 0
            self._rejection_log_at = now + REJECTION_LOG_INTERVAL

    def close(self) -> None:
        self._client.close()
