"""OTLP/HTTP decoding: real spans encoded as the OTLP exporters encode them -> the same records."""

import base64
import gzip
import json
import zlib

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_arthur import otlp
from otel_arthur.mapping import map_span
from spanfixtures import load_spans

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


def test_empty_body_is_an_empty_request():
    assert list(otlp.generation_spans(otlp.parse_request(b"", otlp.PROTOBUF))) == []


@pytest.mark.parametrize("body, media, status", [
    (encode_spans(load_spans("openllmetry_chat")).SerializeToString()[:-7], otlp.PROTOBUF, 400),
    (b"{not json", otlp.JSON, 400),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', otlp.JSON, 400),
    (b'{"resourceSpans": 5}', otlp.JSON, 400),
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
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    response = ExportTraceServiceResponse()
    if media == otlp.JSON:
        json_format.Parse(body, response)
    else:
        response.ParseFromString(body)
    assert response.partial_success.rejected_spans == 2
    assert otlp.encode_response(media) in (b"", b"{}")
