"""OTLP/HTTP trace requests -> generation spans, and the responses the OTLP spec prescribes.

Pure functions, no HTTP: ``otel-arthur serve`` puts a server in front of them. Bodies are
decoded with ``opentelemetry-proto`` (binary protobuf, or OTLP/JSON: hex ids, enums as integers),
after bounded decompression, so a gzip bomb is refused at the limit without being inflated whole.
Only spans that ``classify`` marks as generations become ``PlainSpan`` values for the mapper; the
rest are counted and dropped on the spot, from their raw marker attributes. Spans are counted before the body is parsed (a walk
over the protobuf wire format), so a request of too many of them is refused before any is built:
parsing builds every message, and 20 MB of empty spans are 10 million of them (1.8 GB).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Container, Iterator, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otel_arthur.config import DEFAULT_MAX_SPANS_PER_REQUEST
from otel_arthur.conventions import CONVENTIONS, OpenInference
from otel_arthur.mapping import READ_KEYS, READ_PREFIXES, PlainSpan, classify
from otel_arthur.openinference import SPAN_KIND_RULES

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = (PROTOBUF, JSON)
_CHUNK = 64 * 1024
_JSON_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_SCALAR_KINDS = frozenset({"string_value", "int_value", "double_value", "bool_value"})
_STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_PRIMITIVES = (str, bool, int, float)

# Field numbers on the way to each span (opentelemetry/proto/trace/v1/trace.proto): a request's
# resource_spans = 1, a ResourceSpans' scope_spans = 2, a ScopeSpans' spans = 2.
_RESOURCE_SPANS, _SCOPE_SPANS, _SPANS = 1, 2, 2
_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
_MAX_GROUP_DEPTH = 100  # upb's own nesting limit


class _AnyText:
    """Marker values: any non-empty text (OpenInference's span kind says "AI work" whatever its value)."""

    def __contains__(self, value: object) -> bool:
        return bool(value)


def _generation_markers() -> dict[str, Container[str]]:
    """Marker attribute -> the values that make a span a generation, whichever convention says so."""
    values: dict[str, frozenset[str]] = {}
    for convention in CONVENTIONS:
        values[convention.marker] = values.get(convention.marker, frozenset()) | convention.generation_values
    return dict(values)


def _ai_markers() -> dict[str, Container[str]]:
    """Marker attribute -> the values that make a span AI work (``openinference.span_kind`` not None)."""
    values: dict[str, frozenset[str]] = {}
    for attribute, kinds in SPAN_KIND_RULES:
        values[attribute] = values.get(attribute, frozenset()) | frozenset(kinds)
    return {**values, OpenInference.SPAN_KIND: _AnyText()}


GENERATION_MARKERS = _generation_markers()
AI_MARKERS = _ai_markers()


class RequestError(ValueError):
    """A request the client must not retry as is; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[RequestError], tuple[int, str]]:  # raised in decode processes, re-raised here
        return type(self), (self.status, str(self))


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; refuses what OTLP/HTTP does not speak."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in CONTENT_TYPES:
        raise RequestError(415, f"unsupported content type {media or 'none'!r}: send {PROTOBUF} or {JSON}")
    return media


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body after ``Content-Encoding`` (identity, gzip, deflate), never more than ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        inflated = body
    elif encoding in ("gzip", "deflate"):
        inflated = _inflate(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS, limit)
    else:
        raise RequestError(415, f"unsupported content encoding {encoding!r}: use gzip, deflate or none")
    if len(inflated) > limit:
        raise RequestError(413, f"request body over the {limit}-byte limit")
    return inflated


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    """The inflated body: gzip member after member, as Go's reader (the Collector's) reads them; deflate
    (zlib framing) is one stream, so bytes after it are refused.

    The input is fed in chunks because zlib copies what is left of it after each call (``unconsumed_tail``,
    ``unused_data``): fed whole, a body of many tiny members would take quadratic time.
    """
    view = memoryview(body)
    inflater = zlib.decompressobj(wbits)
    pieces, size = [], 0
    try:
        for start in range(0, len(view), _CHUNK):
            data: bytes | memoryview = view[start:start + _CHUNK]
            while data:
                if inflater.eof:  # more bytes after a complete stream: the next gzip member, or garbage
                    if wbits == zlib.MAX_WBITS:
                        raise RequestError(400, "trailing bytes after the deflate stream")
                    inflater = zlib.decompressobj(wbits)
                piece = inflater.decompress(data, _CHUNK)
                size += len(piece)
                if size > limit:
                    raise RequestError(413, f"request body over the {limit}-byte limit once decompressed")
                pieces.append(piece)
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        if not inflater.eof:
            raise RequestError(400, "compressed body is truncated")
    except zlib.error as exc:
        raise RequestError(400, f"body is not valid compressed data: {exc}") from None
    return b"".join(pieces)


def parse_request(body: bytes, media: str,
                  max_spans: int = DEFAULT_MAX_SPANS_PER_REQUEST) -> ExportTraceServiceRequest:
    """The request; ``RequestError`` 400 when undecodable, 413 past ``max_spans`` spans or resource or scope groups."""
    request = ExportTraceServiceRequest()
    try:
        if media == PROTOBUF:
            _check_protobuf_counts(body, max_spans)
            request.ParseFromString(body)
        else:
            document = json.loads(body)
            if not isinstance(document, dict):  # ParseDict reads a list or a string as an empty request
                raise RequestError(400, "an OTLP/JSON body is a JSON object (ExportTraceServiceRequest)")
            _check_json_counts(document, max_spans)
            # The OTLP spec: receivers MUST ignore unknown fields in OTLP/JSON, for forward compatibility.
            json_format.ParseDict(_hex_ids_to_base64(document), request, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        if isinstance(exc, RequestError) and exc.status != 400:
            raise
        raise RequestError(400, f"cannot decode {media} body: {str(exc)[:200]}") from None
    return request


def _too_many(limit: int, what: str) -> RequestError:
    return RequestError(413, f"the request holds more than {limit} {what}, the limit per request"
                             " (--max-spans-per-request): send smaller batches (the Collector's send_batch_max_size)")


class _Counts:
    """Spans and resource or scope groups met so far; 413 as soon as either passes the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spans = self.groups = 0

    def span(self) -> None:
        self.spans += 1
        if self.spans > self.limit:
            raise _too_many(self.limit, "spans")

    def group(self, count: int = 1) -> None:
        self.groups += count
        if self.groups > self.limit:
            raise _too_many(self.limit, "resource or scope span groups")


def _check_protobuf_counts(body: bytes, limit: int) -> None:
    """Counts from the wire format, building nothing, and stopping at the limit: the work is bounded by it."""
    counts = _Counts(limit)
    for number, start, end in _length_delimited(body, 0, len(body)):
        if number != _RESOURCE_SPANS:
            continue
        counts.group()
        for number, scope_start, scope_end in _length_delimited(body, start, end):
            if number != _SCOPE_SPANS:
                continue
            counts.group()
            for number, _, _ in _length_delimited(body, scope_start, scope_end):
                if number == _SPANS:
                    counts.span()


def _length_delimited(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in ``data[pos:end]``.

    Fields of other wire types are skipped; a field of a message type sent with another wire type
    is an unknown field to protobuf too, so not counted.
    """
    while pos < end:
        key, pos = _varint(data, pos, end)
        wire_type = key & 7
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise RequestError(400, "truncated protobuf message")
            yield key >> 3, pos, pos + length
            pos += length
        else:
            pos = _skip(data, pos, end, key, 0)


def _skip(data: bytes, pos: int, end: int, key: int, depth: int) -> int:
    """Where the value of a field of any wire type but length-delimited ends."""
    wire_type = key & 7
    if wire_type == _VARINT:
        return _varint(data, pos, end)[1]
    if wire_type in (_FIXED64, _FIXED32):
        pos += 8 if wire_type == _FIXED64 else 4
    elif wire_type == _START_GROUP and depth < _MAX_GROUP_DEPTH:  # a proto2 group in an unknown field
        while True:
            inner, pos = _varint(data, pos, end)
            if inner == (key & ~7) | _END_GROUP:
                break
            if inner & 7 == _LENGTH_DELIMITED:
                length, pos = _varint(data, pos, end)
                pos += length
            else:
                pos = _skip(data, pos, end, inner, depth + 1)
    else:  # an end-group without its start, wire types 6 and 7, or groups nested past upb's limit
        raise RequestError(400, f"invalid protobuf: wire type {wire_type} of field {key >> 3}")
    if pos > end:
        raise RequestError(400, "truncated protobuf message")
    return pos


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and where it ends."""
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise RequestError(400, "truncated or invalid protobuf varint")


def _check_json_counts(document: dict[str, Any], limit: int) -> None:
    """The same counts in parsed OTLP/JSON, before the hex ids are converted and protobuf messages built."""
    counts = _Counts(limit)
    for resource_spans in _json_items(document, "resourceSpans", "resource_spans"):
        counts.group()
        for scope_spans in _json_items(resource_spans, "scopeSpans", "scope_spans"):
            counts.group()
            for _ in _json_items(scope_spans, "spans"):
                counts.span()


def _json_items(node: Any, *keys: str) -> Iterator[Any]:
    """The items under either spelling of a field (protobuf's JSON mapping takes both); what is not a
    list is left for ``ParseDict`` to refuse."""
    if isinstance(node, dict):
        for key in keys:
            value = node.get(key)
            if isinstance(value, list):
                yield from value


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex where protobuf's JSON mapping expects base64 bytes."""
    if isinstance(node, dict):
        converted = {}
        for key, value in node.items():
            if key in _JSON_ID_FIELDS and isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise RequestError(400, f"{key} {value[:40]!r} is not hex") from None
            converted[key] = _hex_ids_to_base64(value)
        return converted
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    return node


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the Python value the SDK would have recorded."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return json.dumps({kv.key: any_value(kv.value) for kv in value.kvlist_value.values}, default=str)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def attribute_dict(key_values: Any) -> dict[str, Any]:
    """OTLP ``KeyValue``s as a dict of Python values."""
    attributes = {}
    for kv in key_values:
        value = kv.value
        # Most values are text: read first, it spares asking which kind (each call into the message
        # costs as much as the read); other scalars are read in place.
        text = value.string_value
        attributes[kv.key] = text if text else _non_text(value)
    return attributes


def marked_attribute_dict(key_values: Any,
                          markers: Mapping[str, Container[str]] = GENERATION_MARKERS) -> tuple[dict[str, Any], bool]:
    """``attribute_dict``'s dict, and ``marked``'s answer, in one pass (when every value is converted anyway)."""
    attributes = {}
    found = False
    for kv in key_values:
        key, value = kv.key, kv.value
        text = value.string_value  # non-empty only for a text: the marker test is marked()'s
        if text:
            attributes[key] = text
            if not found and (wanted := markers.get(key)) is not None:
                found = text in wanted
        else:
            attributes[key] = _non_text(value)
    return attributes, found


Converted = list["tuple[dict[str, Any], bool] | None"]
"""Per span of a request, in order: its attributes converted by another destination's pass and whether a generation
marker holds a marking text (``marked_attribute_dict``), or None where that pass converted nothing."""


def generation_attributes(key_values: Any) -> dict[str, Any] | None:
    """The attributes the mapper reads (``mapping.READ_KEYS``, ``READ_PREFIXES``) as a dict of Python values
    when a marker says the span is a generation; None, nothing converted, for any other span.

    One pass over the keys finds both the marker and the ``KeyValue``s to convert (reading a key costs as
    much as a dict lookup, so the keys are read once); the values of the others are never read."""
    read = []
    generation = False
    known, markers = _mapper_reads, GENERATION_MARKERS
    for kv in key_values:
        key = kv.key
        reads = known.get(key)  # one lookup, where the set and the prefixes take two tests
        if reads is None:
            reads = _remember_key(key)
        if reads:  # every generation marker is a key the mapper reads
            read.append((key, kv))
            if not generation and (wanted := markers.get(key)) is not None:
                value = kv.value
                generation = value.WhichOneof("value") == "string_value" and value.string_value in wanted
    return converted_values(read) if generation else None


_MAX_KNOWN_KEYS = 4096
_mapper_reads: dict[str, bool] = {}
"""Attribute key -> whether the mapper reads it, for the keys met so far (a process meets few)."""


def _remember_key(key: str) -> bool:
    if len(_mapper_reads) >= _MAX_KNOWN_KEYS:  # a churn of keys (ids in them) must not grow it
        _mapper_reads.clear()
    reads = _mapper_reads[key] = key in READ_KEYS or key.startswith(READ_PREFIXES)
    return reads


def converted_values(read: list[tuple[str, Any]]) -> dict[str, Any]:
    """(key, ``KeyValue``) pairs as a dict of Python values."""
    attributes = {}
    for key, kv in read:
        value = kv.value
        text = value.string_value
        attributes[key] = text if text else _non_text(value)
    return attributes


def _non_text(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in _SCALAR_KINDS else any_value(value)


def marked(key_values: Any, markers: Mapping[str, Container[str]] = GENERATION_MARKERS) -> bool:
    """Whether a marker attribute (``GENERATION_MARKERS``, ``AI_MARKERS``) holds a marking text, read from
    the raw ``KeyValue``s: converts one value at most, where converting them all costs ten times as much,
    spent in vain on every span that is not one. A span it passes is still classified from all its attributes."""
    for kv in key_values:
        wanted = markers.get(kv.key)
        if wanted is not None:
            value = kv.value
            if value.WhichOneof("value") == "string_value" and value.string_value in wanted:
                return True
    return False


def generation_spans(request: ExportTraceServiceRequest,
                     converted: Converted | None = None) -> Iterator[PlainSpan | RequestError]:
    """Each generation span as a ``PlainSpan``, or a ``RequestError`` saying why it is unusable.

    Non-generation spans yield nothing, decided from their marker attributes as they are on the wire.
    Built straight from the protobuf: one pass over a span's keys finds its marker and the attributes the
    mapper reads, converted only then (or taken from ``converted``: every attribute, the record the same);
    the resource's once per ``ResourceSpans``; no SDK objects.
    """
    ordinal = -1
    for resource_spans in request.resource_spans:
        resource: dict[str, Any] | None = None
        for scope_spans in resource_spans.scope_spans:
            scope: str | None = None
            for span in scope_spans.spans:
                ordinal += 1
                shared = converted[ordinal] if converted is not None else None
                if shared is None:
                    attributes = generation_attributes(span.attributes)
                else:
                    attributes = shared[0] if shared[1] else None
                if attributes is None or classify(attributes) is None:
                    continue
                trace_id, span_id = span.trace_id, span.span_id
                if len(trace_id) != 16 or len(span_id) != 8 or not any(trace_id):
                    yield RequestError(400, f"span {span.name!r} has an invalid trace or span id")
                    continue
                start = span.start_time_unix_nano
                if not start:
                    yield RequestError(400, f"span {span.name!r} has no start time")
                    continue
                if resource is None:
                    resource = _resource(attribute_dict(resource_spans.resource.attributes))
                if scope is None:
                    scope = scope_spans.scope.name
                status = span.status
                yield PlainSpan(  # positional: a class called with keywords first gathers them into a dict
                    span.name, int.from_bytes(trace_id, "big"), int.from_bytes(span_id, "big"),
                    _parent_id(span.parent_span_id), start, span.end_time_unix_nano or None, attributes, resource,
                    scope, status.message if status.code == _STATUS_ERROR else None,
                )


def _parent_id(parent_span_id: bytes) -> int | None:
    """The parent as ``dedupe`` reads it; a malformed id counts as none (the span is still recorded)."""
    if len(parent_span_id) != 8 or not any(parent_span_id):
        return None
    return int.from_bytes(parent_span_id, "big")


def _resource(attributes: dict[str, Any]) -> dict[str, Any]:
    """Only what the SDK would keep of a resource (a ``ReadableSpan``'s, which the in-app exporter maps)."""
    return {key: value for key, value in attributes.items() if key and _valid_value(value)}


def _valid_value(value: Any) -> bool:
    if isinstance(value, _PRIMITIVES):
        return True
    return (isinstance(value, tuple) and all(isinstance(v, _PRIMITIVES) for v in value)
            and len({type(v) for v in value}) <= 1)


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def encode_response(media: str, rejected_spans: int = 0, error_message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse``, in the request's own content type."""
    response = ExportTraceServiceResponse()
    if rejected_spans or error_message:
        response.partial_success.rejected_spans = rejected_spans
        response.partial_success.error_message = error_message
    return _encode(response, media)


def encode_status(media: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` error body, as OTLP/HTTP prescribes for failures."""
    return _encode(status_pb2.Status(code=code, message=message), media)


def _encode(message: Any, media: str) -> bytes:
    if media == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()
