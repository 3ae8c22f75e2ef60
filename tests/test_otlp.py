"""OTLP/HTTP decoding: real spans encoded as the OTLP exporters encode them -> the same records."""

import base64
import gzip
import json
import tracemalloc
import zlib

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from spanfixtures import load_spans

from otel_arthur import otlp
from otel_arthur.mapping import map_span

FIXTURES = ("openllmetry_chat", "openllmetry_chain", "openllmetry_error", "openinference_stream", "genai_semconv",
            "openllmetry_legacy")


def _spans():
    return [span for name in FIXTURES for span in load_spans(name)]


def _otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON per the spec: hex ids, enums as integers."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document).encode()


def _records(body, media, encoding=None):
    request = otlp.parse_request(otlp.decompress(body, encoding, 20 * 2**20), otlp.media_type(media))
    spans = list(otlp.generation_spans(request))
    assert not [s for s in spans if isinstance(s, otlp.RequestError)]
    return sorted((map_span(s) for s in spans), key=lambda r: r.partner_inference_id)


EXPECTED = sorted(filter(None, map(map_span, _spans())), key=lambda r: r.partner_inference_id)


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
def test_protobuf_gives_the_same_records_as_the_spans(encoding):
    body = encode_spans(_spans()).SerializeToString()
    body = {None: body, "gzip": gzip.compress(body), "deflate": zlib.compress(body)}[encoding]
    assert _records(body, "application/x-protobuf", encoding) == EXPECTED
    assert len(EXPECTED) == 7  # the chain's workflow and task spans are not generations


def test_otlp_json_gives_the_same_records_as_protobuf():
    assert _records(_otlp_json(encode_spans(_spans())), "application/json; charset=utf-8") == EXPECTED


def test_otlp_json_unknown_fields_are_ignored():
    """The OTLP spec: receivers MUST ignore unknown fields in OTLP/JSON (a newer sender's additions)."""
    document = json.loads(_otlp_json(encode_spans(_spans())))
    document["futureTopLevel"] = {"anything": [1, 2]}
    document["resourceSpans"][0]["futureResourceField"] = "x"
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["futureSpanField"] = 7
    span["attributes"][0]["value"]["futureValueField"] = True
    assert _records(json.dumps(document).encode(), otlp.JSON) == EXPECTED


def _gzip_members(body: bytes, size: int) -> bytes:
    """``body`` as consecutive gzip members of ``size`` bytes each, as a multi-member gzip stream."""
    return b"".join(gzip.compress(body[i:i + size]) for i in range(0, len(body), size))


@pytest.mark.parametrize("chunk", [otlp._CHUNK, 7])  # 7: member ends and headers straddle the input chunks
@pytest.mark.parametrize("members", ["halves", "empty-first", "hundreds"])
def test_gzip_members_are_all_inflated(members, chunk, monkeypatch):
    monkeypatch.setattr(otlp, "_CHUNK", chunk)
    body = encode_spans(_spans()).SerializeToString()
    body = {"halves": _gzip_members(body, len(body) // 2 + 1), "empty-first": gzip.compress(b"") + gzip.compress(body),
            "hundreds": _gzip_members(body, 100)}[members]
    assert _records(body, otlp.PROTOBUF, "gzip") == EXPECTED


def test_gzip_bomb_over_many_members_is_refused_at_the_limit():
    """1 GiB of zeros in 4096 members: refused once past the limit, holding little more than the limit."""
    bomb = gzip.compress(b"\0" * 2**18) * 4096
    tracemalloc.start()
    try:
        with pytest.raises(otlp.RequestError) as error:
            otlp.decompress(bomb, "gzip", 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.value.status == 413
    assert peak < 4 * 2**20


def test_empty_body_is_an_empty_request():
    assert list(otlp.generation_spans(otlp.parse_request(b"", otlp.PROTOBUF))) == []


@pytest.mark.parametrize("body, media, status", [
    (encode_spans(load_spans("openllmetry_chat")).SerializeToString()[:-7], otlp.PROTOBUF, 400),
    (b"{not json", otlp.JSON, 400),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', otlp.JSON, 400),
    (b'{"resourceSpans": 5}', otlp.JSON, 400),
    (b"[]", otlp.JSON, 400),
    (b'"x"', otlp.JSON, 400),
])
def test_undecodable_bodies_are_400(body, media, status):
    with pytest.raises(otlp.RequestError) as error:
        otlp.parse_request(body, media)
    assert error.value.status == status


def test_invalid_utf8_inside_a_string_attribute_is_400():
    request = encode_spans(load_spans("openllmetry_chat"))
    body = request.SerializeToString().replace(b"What is OpenTelemetry?", b"What is \xff\xfeenTelemetry?")
    with pytest.raises(otlp.RequestError) as error:
        otlp.parse_request(body, otlp.PROTOBUF)
    assert error.value.status == 400


def test_gzip_bomb_is_refused_at_the_limit():
    bomb = gzip.compress(b"\0" * (50 * 2**20))
    with pytest.raises(otlp.RequestError) as error:
        otlp.decompress(bomb, "gzip", 20 * 2**20)
    assert error.value.status == 413


@pytest.mark.parametrize("encoding, body, status", [("br", b"x", 415), ("gzip", b"not gzip", 400),
                                                    ("gzip", gzip.compress(b"abc" * 100)[:-10], 400),
                                                    (None, b"x" * 1001, 413)])
def test_bad_encodings(encoding, body, status):
    with pytest.raises(otlp.RequestError) as error:
        otlp.decompress(body, encoding, 1000)
    assert error.value.status == status


@pytest.mark.parametrize("encoding, body", [
    ("gzip", gzip.compress(b"abc") + b"trailing"),
    ("gzip", gzip.compress(b"abc") + b"\0" * 8),
    ("gzip", gzip.compress(b"abc") + b"\x1f\x8b"),  # a member cut short in its header
    ("gzip", gzip.compress(b"x" * 200_000) + b"junk"),  # a member inflated over several bounded calls
    ("deflate", zlib.compress(b"abc") + b"trailing"),  # zlib framing holds one stream only
], ids=["gzip-garbage", "gzip-zeros", "gzip-cut-header", "gzip-long-member", "deflate-garbage"])
def test_trailing_bytes_after_the_compressed_body_are_400(encoding, body):
    with pytest.raises(otlp.RequestError) as error:
        otlp.decompress(body, encoding, 20 * 2**20)
    assert error.value.status == 400


def test_unsupported_content_type_is_415():
    with pytest.raises(otlp.RequestError) as error:
        otlp.media_type("text/plain")
    assert error.value.status == 415


def test_generation_span_with_bad_ids_is_reported_not_fatal():
    request = encode_spans(load_spans("openllmetry_chat"))
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\0" * 16
    [outcome] = otlp.generation_spans(request)
    assert isinstance(outcome, otlp.RequestError)


@pytest.mark.parametrize("media", [otlp.PROTOBUF, otlp.JSON])
def test_responses_in_the_requests_content_type(media):
    body = otlp.encode_response(media, 2, "2 spans could not be mapped")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse()
    if media == otlp.JSON:
        json_format.Parse(body, response)
    else:
        response.ParseFromString(body)
    assert response.partial_success.rejected_spans == 2
    assert otlp.encode_response(media) in (b"", b"{}")


def _length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2: its key, its length as a varint, the payload."""
    length, varint = len(payload), bytearray()
    while length >= 0x80:
        varint.append(length & 0x7F | 0x80)
        length >>= 7
    varint.append(length)
    return bytes([field << 3 | 2]) + bytes(varint) + payload


def empty_spans_request(spans: int) -> bytes:
    """An ExportTraceServiceRequest of ``spans`` empty spans (2 bytes each) in one resource and scope."""
    return _length_delimited(1, _length_delimited(2, b"\x12\x00" * spans))


def test_more_spans_than_the_limit_is_413_before_any_is_built():
    """10 million empty spans in 20 MB: parsed, they took 1.8 GB; counted on the wire, nothing is built."""
    body = empty_spans_request(10_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(otlp.RequestError) as error:
            otlp.parse_request(body, otlp.PROTOBUF, 1_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.value.status == 413 and "more than 1000 spans" in str(error.value)
    assert peak < 2**20
    assert otlp.count_spans(otlp.parse_request(empty_spans_request(1_000), otlp.PROTOBUF, 1_000)) == 1_000


@pytest.mark.parametrize("media", [otlp.PROTOBUF, otlp.JSON])
def test_more_resource_or_scope_groups_than_the_limit_is_413(media):
    request = ExportTraceServiceRequest()
    for _ in range(6):
        request.resource_spans.add().scope_spans.add()
    body = request.SerializeToString() if media == otlp.PROTOBUF else json_format.MessageToJson(request).encode()
    with pytest.raises(otlp.RequestError) as error:
        otlp.parse_request(body, media, 10)
    assert error.value.status == 413 and "groups" in str(error.value)
    assert len(otlp.parse_request(body, media, 12).resource_spans) == 6


def test_more_otlp_json_spans_than_the_limit_is_413():
    body = _otlp_json(encode_spans(_spans()))
    with pytest.raises(otlp.RequestError) as error:
        otlp.parse_request(body, otlp.JSON, len(_spans()) - 1)
    assert error.value.status == 413 and f"more than {len(_spans()) - 1} spans" in str(error.value)
    assert otlp.count_spans(otlp.parse_request(body, otlp.JSON, len(_spans()))) == len(_spans())


def test_spans_are_counted_past_unknown_fields_of_every_wire_type():
    """An unknown varint, fixed64, fixed32 and group (nested) before the spans: none hides a span from the count."""
    unknown = b"\x78\x01" + b"\x79" + b"\0" * 8 + b"\x7d" + b"\0" * 4 + b"\x7b\x08\x01\x0b\x10\x02\x0c\x7c"
    body = unknown + _length_delimited(1, unknown + _length_delimited(2, unknown + b"\x12\x00" * 3))
    assert otlp.count_spans(otlp.parse_request(body, otlp.PROTOBUF, 3)) == 3
    with pytest.raises(otlp.RequestError) as error:
        otlp.parse_request(body, otlp.PROTOBUF, 2)
    assert error.value.status == 413


def test_spans_that_are_no_generation_are_never_converted(monkeypatch):
    """Decided from the raw marker attributes: only generations (and their resource, once) are converted."""
    converted = []
    attribute_dict = otlp.attribute_dict
    converted_values = otlp.converted_values
    monkeypatch.setattr(otlp, "attribute_dict", lambda kvs: converted.append(len(kvs)) or attribute_dict(kvs))
    monkeypatch.setattr(otlp, "converted_values", lambda kvs: converted.append(len(kvs)) or converted_values(kvs))
    spans = list(otlp.generation_spans(encode_spans(_spans())))
    assert len(spans) == len(EXPECTED) and len(_spans()) > len(EXPECTED)
    resources = {id(span.resource) for span in spans}
    assert len(converted) == len(EXPECTED) + len(resources)


def test_plain_spans_carry_only_the_attributes_the_mapper_reads():
    """The rest stay unread in the protobuf; what is kept is every attribute ``map_span`` reads."""
    from otel_arthur.mapping import READ_KEYS, READ_PREFIXES

    by_id = {f"{span.context.trace_id:032x}-{span.context.span_id:016x}": span for span in _spans()}
    for plain in otlp.generation_spans(encode_spans(_spans())):
        sdk = by_id[f"{plain.trace_id:032x}-{plain.span_id:016x}"]
        read = {key for key in sdk.attributes if key in READ_KEYS or key.startswith(READ_PREFIXES)}
        assert set(plain.attributes) == read and read < set(sdk.attributes)


def test_a_churn_of_attribute_keys_leaves_the_memory_of_keys_bounded():
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    marker = KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat"))
    for batch in range(3):
        key_values = [marker, *(KeyValue(key=f"request.{batch}.{n}", value=AnyValue(int_value=n))
                                for n in range(otlp._MAX_KNOWN_KEYS))]
        assert otlp.generation_attributes(key_values) == {"gen_ai.operation.name": "chat"}
        assert len(otlp._mapper_reads) <= otlp._MAX_KNOWN_KEYS


def test_plain_spans_map_as_the_sdk_spans_they_were_encoded_from():
    spans = otlp.generation_spans(encode_spans(_spans()))
    assert all(isinstance(span, otlp.PlainSpan) for span in spans)
    by_id = {record.partner_inference_id: record for record in EXPECTED}
    for span in otlp.generation_spans(encode_spans(_spans())):
        record = map_span(span)
        assert record == by_id[record.partner_inference_id]
        assert record.origin == by_id[record.partner_inference_id].origin  # what dedupe compares


def test_attribute_values_of_every_kind_convert_as_any_value_says():
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    values = [AnyValue(string_value="text"), AnyValue(string_value=""), AnyValue(int_value=0), AnyValue(int_value=-7),
              AnyValue(double_value=0.0), AnyValue(double_value=2.5), AnyValue(bool_value=False),
              AnyValue(bool_value=True), AnyValue(bytes_value=b"\x00\xff"), AnyValue()]
    values.append(AnyValue(array_value={"values": values[:4]}))
    values.append(AnyValue(kvlist_value={"values": [KeyValue(key="k", value=values[0])]}))
    key_values = [KeyValue(key=f"k{n}", value=value) for n, value in enumerate(values)]
    converted = otlp.attribute_dict(key_values)
    assert converted == {kv.key: otlp.any_value(kv.value) for kv in key_values}
    assert [type(v) for v in converted.values()] == [str, str, int, int, float, float, bool, bool, str, type(None),
                                                     tuple, str]
