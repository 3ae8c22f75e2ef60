"""``Receiver.handle``, the pure core of ``otel-arthur serve``: every status of the OTLP/HTTP contract, and a fuzz.

No server here: bodies go straight into ``handle`` and the records it accepts land in a fake intake.
The fuzz (hypothesis, CI-sized) throws random bytes and random but well-formed OTLP requests, in
both encodings, at decode + map and asserts the answer is always one of the documented statuses.
"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from servehelpers import otlp_json
from spanfixtures import convention_attribute_keys, load_spans

from otel_arthur import otlp, spool
from otel_arthur.config import ArthurSettings
from otel_arthur.conventions import CONVENTIONS
from otel_arthur.mapping import map_span
from otel_arthur.pipeline import Accepted, Pipeline, Refusal
from otel_arthur.serve.receiver import DEFAULT_RETRY_AFTER, Receiver
from otel_arthur.stats import Histogram

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
LIMIT = 1024 * 1024
DOCUMENTED = {200, 400, 413, 415}  # what client input alone can produce (no token set, intake never refuses)


class FakeIntake:
    """Takes every record (after a round trip through the spool's encoding), or refuses them all."""

    def __init__(self, refusal: Refusal | None = None, error: Exception | None = None) -> None:
        self.records: list = []
        self.received: list[tuple[int, int]] = []
        self.unmappable: list[tuple[int, str]] = []
        self.refusal = refusal
        self.error = error

    def accept(self, records):
        if self.error is not None:
            raise self.error
        if self.refusal is not None:
            return self.refusal
        # As the spool would store them: a decode process's (``Encoded``) already are.
        self.records.extend(spool.decode(r.body if isinstance(r, spool.Encoded) else spool.encode(r)) for r in records)
        return Accepted()

    def count_received(self, spans, generations):
        self.received.append((spans, generations))

    def drop_unmappable(self, count, reason):
        self.unmappable.append((count, reason))


def spans():
    return [s for name in ("openllmetry_chat", "openllmetry_chain", "openinference_stream", "genai_semconv")
            for s in load_spans(name)]


def status_of(reply) -> status_pb2.Status:
    status = status_pb2.Status()
    if reply.headers["Content-Type"] == otlp.JSON:
        json_format.Parse(reply.body, status)
    else:
        status.ParseFromString(reply.body)
    return status


def expected_records():
    return sorted(filter(None, map(map_span, spans())), key=lambda r: r.partner_inference_id)


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
def test_protobuf_request_spools_the_generation_spans_and_ignores_the_rest(encoding):
    intake = FakeIntake()
    receiver = Receiver(intake)
    body = encode_spans(spans()).SerializeToString()
    body = {None: body, "gzip": gzip.compress(body), "deflate": zlib.compress(body)}[encoding]
    reply = receiver.handle(body, PROTOBUF | ({"Content-Encoding": encoding} if encoding else {}))
    assert reply.status == 200 and reply.headers["Content-Type"] == otlp.PROTOBUF
    response = ExportTraceServiceResponse.FromString(reply.body)
    assert not response.HasField("partial_success")
    assert sorted(intake.records, key=lambda r: r.partner_inference_id) == expected_records()
    total, generations = len(spans()), len(expected_records())
    assert intake.received == [(total, generations)]
    counts = {s.name: s.value for s in receiver.counters.samples()}
    assert counts["otel_arthur_receiver_spans_received_total"] == total
    assert counts["otel_arthur_receiver_spans_ignored_total"] == total - generations > 0


def test_otlp_json_request_gives_the_same_records_and_a_json_answer():
    intake = FakeIntake()
    body = otlp_json(encode_spans(spans()))
    reply = Receiver(intake).handle(body, {"content-type": "application/json; charset=utf-8"})
    assert reply.status == 200 and reply.headers["Content-Type"] == otlp.JSON
    assert json.loads(reply.body) == {}
    assert sorted(intake.records, key=lambda r: r.partner_inference_id) == expected_records()


def test_unmappable_generation_spans_are_a_partial_success():
    request = encode_spans(spans())
    generation = next(s for s in request.resource_spans[0].scope_spans[0].spans if s.name == "ChatOpenAI.chat")
    broken = request.resource_spans[0].scope_spans[0].spans.add()
    broken.CopyFrom(generation)
    broken.span_id = b"\x01\x02"  # not 8 bytes
    no_start = request.resource_spans[0].scope_spans[0].spans.add()
    no_start.CopyFrom(generation)
    no_start.span_id = b"\x09" * 8
    no_start.start_time_unix_nano = 0
    intake = FakeIntake()
    receiver = Receiver(intake)
    reply = receiver.handle(request.SerializeToString(), PROTOBUF)
    assert reply.status == 200
    partial = ExportTraceServiceResponse.FromString(reply.body).partial_success
    assert partial.rejected_spans == 2
    assert "invalid trace or span id" in partial.error_message
    assert len(intake.records) == len(expected_records())
    counts = {s.name: s.value for s in receiver.counters.samples()}
    assert counts["otel_arthur_receiver_spans_rejected_total"] == 2


def test_a_record_larger_than_the_whole_spool_is_rejected_not_silently_dropped(tmp_path):
    settings = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                      spool_dir=tmp_path, spool_max_bytes=300)
    pipeline = Pipeline(settings, transport=NeverSends())
    try:
        receiver = Receiver(pipeline)
        reply = receiver.handle(encode_spans(spans()).SerializeToString(), PROTOBUF)
        assert reply.status == 200  # retrying could never help: no 503
        partial = ExportTraceServiceResponse.FromString(reply.body).partial_success
        generations = len(expected_records())
        assert partial.rejected_spans == generations and "larger than the whole spool" in partial.error_message
        assert pipeline.stats().spool_depth == 0
        counts = {s.name: s.value for s in receiver.counters.samples()}
        assert counts["otel_arthur_receiver_spans_rejected_total"] == generations
    finally:
        pipeline.shutdown(timeout=0)


class NeverSends:
    """A transport for a pipeline whose records must never leave the spool in the test."""

    def send(self, records):
        raise AssertionError("nothing should be delivered")

    def close(self):
        pass


def test_a_span_that_breaks_the_mapper_is_rejected_alone():
    def mapper(span):
        if span.name == "ChatOpenAI.chat":
            raise RecursionError("deep")
        return map_span(span)

    intake = FakeIntake()
    reply = Receiver(intake, mapper=mapper).handle(encode_spans(spans()).SerializeToString(), PROTOBUF)
    assert reply.status == 200
    partial = ExportTraceServiceResponse.FromString(reply.body).partial_success
    assert partial.rejected_spans >= 1 and "RecursionError" in partial.error_message
    assert len(intake.records) == len(expected_records()) - partial.rejected_spans


def test_a_span_serve_cannot_map_is_dropped_unmappable_as_in_the_exporter(tmp_path):
    def mapper(span):
        if span.name == "ChatOpenAI.chat":
            raise RecursionError("deep")
        return map_span(span)

    body = encode_spans(spans()).SerializeToString()
    settings = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                      spool_dir=tmp_path)
    pipeline = Pipeline(settings, transport=NeverSends())
    try:
        reply = Receiver(pipeline, mapper=mapper).handle(body, PROTOBUF)
        rejected = ExportTraceServiceResponse.FromString(reply.body).partial_success.rejected_spans
        assert reply.status == 200 and rejected >= 1
        assert pipeline.stats().dropped == {"unmappable": rejected}
        assert pipeline.stats().spooled == len(expected_records()) - rejected
    finally:
        pipeline.shutdown(timeout=0)
    refusing = FakeIntake(refusal=Refusal.SPOOL_FULL)
    assert Receiver(refusing, mapper=mapper).handle(body, PROTOBUF).status == 503
    assert refusing.unmappable == []  # the client sends them again: counted once, when answered 200


@pytest.mark.parametrize("authorization, status", [
    (None, 401), ("Bearer wrong", 401), ("Bearer s3cret-but-longer", 401), ("bearer s3cret", 401),
    ("s3cret", 401), ("Bearer s3cret", 200),
])
def test_bearer_token(authorization, status):
    receiver = Receiver(FakeIntake(), auth_token="s3cret")
    headers = PROTOBUF | ({"Authorization": authorization} if authorization else {})
    reply = receiver.handle(b"", headers)
    assert reply.status == status
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == "Bearer" and status_of(reply).code == 16
        assert b"s3cret" not in reply.body


def test_the_headers_alone_decide_401_415_413_and_503_before_the_body_is_read():
    receiver = Receiver(FakeIntake(), auth_token="t", max_body_bytes=LIMIT)
    token = {"Authorization": "Bearer t"}
    assert receiver.answer_from_headers(PROTOBUF | {"Authorization": "Bearer nope"}).status == 401
    assert receiver.answer_from_headers({"Content-Type": "text/plain"} | token).status == 415
    assert receiver.answer_from_headers(PROTOBUF | token | {"Content-Length": str(LIMIT + 1)}).status == 413
    assert receiver.answer_from_headers(PROTOBUF | token | {"Content-Length": str(LIMIT)}) is None
    receiver.stop_accepting()
    assert receiver.answer_from_headers(PROTOBUF | token).status == 503
    counts = {(s.name, tuple(s.labels.items())): s.value for s in receiver.counters.samples()}
    assert {code: counts[("otel_arthur_receiver_http_responses_total", (("code", code),))]
            for code in ("401", "413", "415", "503")} == {"401": 1, "413": 1, "415": 1, "503": 1}


def test_token_is_checked_before_anything_about_the_body():
    receiver = Receiver(FakeIntake(), auth_token="t", max_body_bytes=10)
    assert receiver.handle(b"x" * 100, {"Content-Type": "text/plain"}).status == 401


@pytest.mark.parametrize("headers, status", [
    ({"Content-Type": "text/plain"}, 415),
    ({}, 415),
    ({"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, 415),
    ({"Content-Type": "application/x-protobuf", "Content-Length": str(LIMIT + 1)}, 413),
])
def test_refused_by_headers(headers, status):
    reply = Receiver(FakeIntake(), max_body_bytes=LIMIT).handle(b"", headers)
    assert reply.status == status
    status_of(reply)  # a google.rpc.Status body


def test_body_over_the_limit_as_sent_or_once_inflated_is_413():
    receiver = Receiver(FakeIntake(), max_body_bytes=LIMIT)
    assert receiver.handle(b"\0" * (LIMIT + 1), PROTOBUF).status == 413
    bomb = gzip.compress(b"\0" * (4 * LIMIT))
    assert len(bomb) < LIMIT
    assert receiver.handle(bomb, PROTOBUF | {"Content-Encoding": "gzip"}).status == 413


@pytest.mark.parametrize("body, headers", [
    (encode_spans(spans()).SerializeToString()[:-7], PROTOBUF),
    (b"\xff\xfe not protobuf", PROTOBUF),
    (b'{"resourceSpans": [', JSON),
    (b"", JSON),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', JSON),
    (gzip.compress(b"data")[:-4], PROTOBUF | {"Content-Encoding": "gzip"}),
], ids=["truncated-protobuf", "garbage-protobuf", "invalid-json", "empty-json", "non-hex-id", "truncated-gzip"])
def test_undecodable_bodies_are_400_in_the_requests_content_type(body, headers):
    reply = Receiver(FakeIntake()).handle(body, headers)
    assert reply.status == 400 and reply.headers["Content-Type"] == headers["Content-Type"]
    assert status_of(reply).code == 3


@pytest.mark.parametrize("media", [PROTOBUF, JSON])
def test_more_spans_than_the_limit_is_413_and_none_is_mapped(media):
    def mapper(span):
        raise AssertionError("no span may be mapped")

    request = encode_spans(spans())
    body = request.SerializeToString() if media is PROTOBUF else otlp_json(request)
    receiver = Receiver(FakeIntake(), max_spans_per_request=len(spans()) - 1, mapper=mapper)
    reply = receiver.handle(gzip.compress(body), media | {"Content-Encoding": "gzip"})
    assert reply.status == 413 and status_of(reply).code == 8
    assert f"more than {len(spans()) - 1} spans" in status_of(reply).message
    assert "--max-spans-per-request" in status_of(reply).message
    counts = {(s.name, tuple(s.labels.items())): s.value for s in receiver.counters.samples()}
    assert counts[("otel_arthur_receiver_http_responses_total", (("code", "413"),))] == 1
    assert Receiver(FakeIntake(), max_spans_per_request=len(spans())).handle(body, media).status == 200


def test_empty_protobuf_body_is_an_empty_request():
    intake = FakeIntake()
    reply = Receiver(intake).handle(b"", PROTOBUF)
    assert reply.status == 200 and intake.records == [] and intake.received == [(0, 0)]


def test_non_utf8_inside_an_attribute_is_400():
    request = encode_spans(spans()[:1])
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="bad").value.string_value = "MARK"
    body = request.SerializeToString().replace(b"MARK", b"\xff\xfe\xc3(")
    assert Receiver(FakeIntake()).handle(body, PROTOBUF).status == 400
    raw_json = otlp_json(encode_spans(spans()[:1])).replace(b"ChatOpenAI", b"Chat\xff\xfeAI")
    assert Receiver(FakeIntake()).handle(raw_json, JSON).status == 400


@pytest.mark.parametrize("refusal", list(Refusal))
def test_refusals_are_503_with_retry_after_and_nothing_counted_as_received(refusal):
    intake = FakeIntake(refusal=refusal)
    receiver = Receiver(intake)
    reply = receiver.handle(encode_spans(spans()).SerializeToString(), PROTOBUF)
    assert reply.status == 503 and reply.headers["Retry-After"] == str(DEFAULT_RETRY_AFTER)
    assert status_of(reply).code == 14
    assert intake.received == []
    counts = {s.name: s.value for s in receiver.counters.samples()}
    assert counts["otel_arthur_receiver_spans_refused_total"] == len(spans())
    assert counts["otel_arthur_receiver_spans_received_total"] == 0


def test_an_intake_failure_is_503_never_500():
    reply = Receiver(FakeIntake(error=OSError("disk"))).handle(encode_spans(spans()).SerializeToString(), PROTOBUF)
    assert reply.status == 503 and "Retry-After" in reply.headers


def test_after_stop_accepting_every_request_is_503():
    receiver = Receiver(FakeIntake())
    receiver.stop_accepting()
    reply = receiver.handle(b"", PROTOBUF)
    assert reply.status == 503 and "shutting down" in status_of(reply).message


def test_responses_are_counted_by_status():
    receiver = Receiver(FakeIntake())
    for headers in (PROTOBUF, PROTOBUF, {"Content-Type": "text/plain"}):
        receiver.handle(b"", headers)
    counts = {(s.name, tuple(s.labels.items())): s.value for s in receiver.counters.samples()}
    assert counts[("otel_arthur_receiver_http_responses_total", (("code", "200"),))] == 2
    assert counts[("otel_arthur_receiver_http_responses_total", (("code", "415"),))] == 1


# -- the fuzz ------------------------------------------------------------------------------------

def _attribute_keys() -> list[str]:
    return sorted(set().union(*(convention_attribute_keys(c) for c in CONVENTIONS)))


MARKERS = [(c.marker, v) for c in CONVENTIONS for v in sorted(c.generation_values)]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["role", "parts", "content", "type", "finish_reason", "model", "session_id", "x"]),
        children, max_size=4),
    max_leaves=12,
)
scalars = st.one_of(
    st.text(max_size=30).map(lambda t: AnyValue(string_value=t)),
    json_values.map(lambda v: AnyValue(string_value=json.dumps(v))),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats().map(lambda f: AnyValue(double_value=f)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.binary(max_size=12).map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()),
)


def _array(values):
    value = AnyValue()
    value.array_value.values.extend(values)
    return value


def _kvlist(pairs):
    value = AnyValue()
    value.kvlist_value.values.extend(KeyValue(key=k, value=v) for k, v in pairs)
    return value


any_values = st.one_of(scalars, st.lists(scalars, max_size=3).map(_array),
                       st.lists(st.tuples(st.text(max_size=5), scalars), max_size=3).map(_kvlist))
attributes = st.lists(st.tuples(st.sampled_from(_attribute_keys()) | st.text(max_size=10), any_values), max_size=12)


@st.composite
def otlp_spans(draw):
    valid_ids = draw(st.integers(0, 9)) > 0  # mostly: a bad id is rejected before the mapper sees the span
    span = Span(name=draw(st.text(max_size=20)),
                trace_id=draw(st.binary(min_size=16, max_size=16) if valid_ids else st.binary(max_size=20)),
                span_id=draw(st.binary(min_size=8, max_size=8) if valid_ids else st.binary(max_size=10)),
                kind=draw(st.integers(0, 5)),
                start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                end_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                flags=draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        marker, value = draw(st.sampled_from(MARKERS))
        span.attributes.add(key=marker).value.string_value = value
    span.attributes.extend(KeyValue(key=k, value=v) for k, v in draw(attributes))
    span.status.code = draw(st.integers(0, 2))
    span.status.message = draw(st.text(max_size=10))
    return span


@st.composite
def requests_(draw):
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        resource_spans = ResourceSpans()
        resource_spans.resource.attributes.extend(KeyValue(key=k, value=v) for k, v in draw(attributes))
        resource_spans.scope_spans.append(ScopeSpans(spans=draw(st.lists(otlp_spans(), min_size=1, max_size=4))))
        request.resource_spans.append(resource_spans)
    return request


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _records_in(request: ExportTraceServiceRequest, body: bytes, headers: dict[str, str]):
    intake = FakeIntake()
    reply = Receiver(intake, max_body_bytes=LIMIT).handle(body, headers)
    assert reply.status == 200, reply.body
    response = ExportTraceServiceResponse()
    json_format.Parse(reply.body, response) if headers["Content-Type"] == otlp.JSON else response.ParseFromString(
        reply.body)
    generation_count = sum(1 for _ in otlp.generation_spans(request))
    assert len(intake.records) + response.partial_success.rejected_spans == generation_count
    return sorted(intake.records, key=lambda r: r.partner_inference_id)


@FUZZ
@given(request=requests_())
def test_fuzz_well_formed_requests_are_accepted_the_same_in_both_encodings(request):
    from_protobuf = _records_in(request, request.SerializeToString(), dict(PROTOBUF))
    from_json = _records_in(request, otlp_json(request), dict(JSON))
    assert json.dumps([spool.encode(r) for r in from_json]) == json.dumps([spool.encode(r) for r in from_protobuf])


@FUZZ
@given(body=st.binary(max_size=2048), media=st.sampled_from([otlp.PROTOBUF, otlp.JSON]),
       encoding=st.sampled_from([None, "gzip", "deflate"]), compress=st.booleans())
def test_fuzz_arbitrary_bytes_get_a_documented_status(body, media, encoding, compress):
    if compress and encoding:
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    headers = {"Content-Type": media} | ({"Content-Encoding": encoding} if encoding else {})
    reply = Receiver(FakeIntake(), max_body_bytes=LIMIT).handle(body, headers)
    assert reply.status in DOCUMENTED


@FUZZ
@given(request=requests_(), cut=st.integers(0, 400), flip=st.integers(0, 255))
def test_fuzz_damaged_requests_get_a_documented_status(request, cut, flip):
    body = bytearray(request.SerializeToString())
    if body:
        body[cut % len(body)] ^= flip
    for data in (bytes(body), bytes(body[: len(body) - cut % (len(body) + 1)])):
        reply = Receiver(FakeIntake(), max_body_bytes=LIMIT).handle(data, dict(PROTOBUF))
        assert reply.status in DOCUMENTED


def test_latency_histogram_buckets_are_cumulative_and_inclusive():
    histogram = Histogram(bounds=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(seconds)
    samples = {(s.name, s.labels.get("le")): s.value
               for s in histogram.snapshot().samples("otel_arthur_arthur_request_duration_seconds")}
    assert samples[("otel_arthur_arthur_request_duration_seconds_bucket", "0.1")] == 2  # le: 0.1 itself counts
    assert samples[("otel_arthur_arthur_request_duration_seconds_bucket", "1.0")] == 4
    assert samples[("otel_arthur_arthur_request_duration_seconds_bucket", "+Inf")] == 5
    assert samples[("otel_arthur_arthur_request_duration_seconds_count", None)] == 5
    assert samples[("otel_arthur_arthur_request_duration_seconds_sum", None)] == pytest.approx(8.65)


def test_odd_but_valid_input_logs_nothing_per_span(caplog):
    """An OK status with a message, resource attributes the SDK would drop: no warning per span (#log flood)."""
    request = encode_spans(spans())
    for resource_spans in request.resource_spans:
        resource_spans.resource.attributes.add(key="").value.string_value = "empty key"
        resource_spans.resource.attributes.add(key="mixed").value.array_value.values.extend(
            [AnyValue(string_value="a"), AnyValue(int_value=1)])
        for span in resource_spans.scope_spans[0].spans:
            span.status.code, span.status.message = 1, "fine"
    with caplog.at_level("WARNING"):
        reply = Receiver(FakeIntake()).handle(request.SerializeToString(), PROTOBUF)
    assert reply.status == 200
    assert caplog.records == []
