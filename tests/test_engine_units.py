"""Arthur Engine destination, piece by piece: settings, the spooled form, requests, privacy."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

from otel_arthur import ArthurSpanExporter
from otel_arthur.config import ConfigurationError, EngineSettings, engine_configured
from otel_arthur.destinations.engine import (
    EngineDestination,
    EngineSpanCodec,
    build_request,
    engine_key,
)
from otel_arthur.privacy import CONTENT_WITHHELD


def _settings(**overrides) -> EngineSettings:
    return EngineSettings.resolve(**{"engine_url": "https://engine.example", "engine_api_key": "engine-secret",
                                     **overrides})


def test_engine_settings_from_its_own_variables(arthur_env):
    arthur_env.setenv("ARTHUR_ENGINE_URL", "https://engine.example/")
    arthur_env.setenv("ARTHUR_ENGINE_API_KEY", "engine-secret")
    arthur_env.setenv("ARTHUR_TASK_ID", "6b7c1c1e-0000-4000-8000-000000000001")
    arthur_env.setenv("ARTHUR_ENGINE_SPANS", "ALL")
    settings = EngineSettings.resolve()
    assert (settings.url, settings.api_key, settings.task_id, settings.spans) == (
        "https://engine.example", "engine-secret", "6b7c1c1e-0000-4000-8000-000000000001", "all")
    assert "engine-secret" not in repr(settings)


def test_arthur_sdk_pair_counts_only_without_a_v3_url(arthur_env):
    arthur_env.setenv("ARTHUR_BASE_URL", "https://engine.example")
    arthur_env.setenv("ARTHUR_API_KEY", "the-key")
    assert engine_configured()
    assert EngineSettings.resolve().api_key == "the-key"
    # With a v3 URL, ARTHUR_API_KEY is the v3 key: it never goes to the Engine.
    arthur_env.setenv("ARTHUR_ENDPOINT_URL", "https://app.arthur.example")
    assert not engine_configured()
    arthur_env.setenv("ARTHUR_ENGINE_URL", "https://engine.example")
    with pytest.raises(ConfigurationError, match="ARTHUR_ENGINE_API_KEY") as raised:
        EngineSettings.resolve()
    assert "the-key" not in str(raised.value)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"engine_url": "http://engine.example"}, "plain http"),
    ({"engine_url": "engine.example"}, "not an http"),
    ({"engine_spans": "llm"}, "expected ai or all"),
])
def test_unusable_engine_settings_are_refused(arthur_env, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        _settings(**overrides)
    assert _settings(engine_url="http://engine.example", allow_insecure=True).url == "http://engine.example"


def test_no_destination_is_one_error_naming_both(arthur_env, caplog):
    with caplog.at_level(logging.ERROR):
        exporter = ArthurSpanExporter()
    [line] = [r.getMessage() for r in caplog.records]
    assert "ARTHUR_ENDPOINT_URL" in line and "ARTHUR_ENGINE_URL" in line
    exporter.shutdown()


def _span(span_id: int, *, resource: Resource, scope: str = "s", attributes=None) -> ReadableSpan:
    return ReadableSpan(name=f"span-{span_id}", context=SpanContext(7, span_id, False), start_time=1, end_time=2,
                        resource=resource, instrumentation_scope=InstrumentationScope(scope, "1.0"),
                        attributes=attributes or {"openinference.span.kind": "LLM"})


def test_requests_group_spans_by_resource_and_scope_and_carry_the_task(arthur_env, tmp_path):
    destination = EngineDestination(_settings(task_id="task-1", spool_dir=str(tmp_path)))
    chat, other = Resource.create({"service.name": "chat"}), Resource.create({"service.name": "other"})
    spans = [_span(1, resource=chat), _span(2, resource=chat), _span(3, resource=chat, scope="t"),
             _span(4, resource=other)]
    items = destination.items(spans).records
    assert [EngineSpanCodec.decode(EngineSpanCodec.encode(i)) for i in items] == items
    assert [i.id for i in items] == [f"{7:032x}-{n:016x}" for n in (1, 2, 3, 4)]
    request = ExportTraceServiceRequest.FromString(build_request(items))
    assert [[len(s.spans) for s in r.scope_spans] for r in request.resource_spans] == [[2, 1], [1]]
    for resource_spans in request.resource_spans:
        attributes = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
        assert attributes["arthur.task"] == "task-1"
    assert engine_key(destination.settings).endswith(" task-1")


def test_only_ai_spans_by_default(arthur_env, tmp_path):
    resource = Resource.create({})
    spans = [_span(1, resource=resource, attributes={"http.method": "GET"}),
             _span(2, resource=resource, attributes={"gen_ai.operation.name": "chat"}),
             _span(3, resource=resource, attributes={"traceloop.span.kind": "workflow"})]
    assert len(EngineDestination(_settings(spool_dir=str(tmp_path))).items(spans).records) == 2
    assert len(EngineDestination(_settings(spool_dir=str(tmp_path), engine_spans="all")).items(spans).records) == 3


SPAN_KINDS = [{"openinference.span.kind": "CHAIN"}, {"gen_ai.operation.name": "chat"},
              {"llm.request.type": "embedding"}, {"traceloop.span.kind": "tool"},
              {"gen_ai.operation.name": "execute_tool"}]


def test_serve_takes_every_kind_of_ai_span_and_converts_no_other(arthur_env, tmp_path, monkeypatch):
    """The raw markers let through every span ``span_kind`` reads as AI work; the rest are never converted."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from otel_arthur import otlp

    resource = Resource.create({})
    ai = [_span(n, resource=resource, attributes={**kind, "http.method": "GET"}) for n, kind in enumerate(SPAN_KINDS, 1)]
    others = [_span(10, resource=resource, attributes={"http.method": "GET", "gen_ai.operation.name": "foo"}),
              _span(11, resource=resource, attributes={"openinference.span.kind": ""})]
    request = encode_spans(ai + others)
    converted = []
    attribute_dict = otlp.attribute_dict
    monkeypatch.setattr(otlp, "attribute_dict", lambda kvs: converted.append(1) or attribute_dict(kvs))
    records = EngineDestination(_settings(spool_dir=str(tmp_path))).from_otlp(request).records
    assert [item.id for item in records] == [f"{7:032x}-{n:016x}" for n in range(1, len(SPAN_KINDS) + 1)]
    assert len(converted) == len(SPAN_KINDS)  # each AI span's attributes, no other span's
    assert len(EngineDestination(_settings(spool_dir=str(tmp_path), engine_spans="all")).from_otlp(request).records) \
        == len(ai + others)


@pytest.mark.parametrize("overrides", [{}, {"max_text_bytes": 64}, {"redact_builtins": "email"},
                                       {"send_content": False}])
def test_serve_translates_every_span_as_the_exporter_does(arthur_env, tmp_path, overrides):
    """From a request (its own bytes and the added attributes', or a filtered copy) as from the SDK span."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.trace.v1.trace_pb2 import Span
    from spanfixtures import SPANS_DIR, load_spans

    spans = [span for path in sorted(SPANS_DIR.glob("*.json")) for span in load_spans(path.name)]
    destination = EngineDestination(_settings(spool_dir=str(tmp_path), engine_spans="all", **overrides))
    served = {item.id: Span.FromString(item.span) for item in destination.from_otlp(encode_spans(spans)).records}
    exported = {item.id: Span.FromString(item.span) for item in destination.items(spans).records}
    assert len(served) == len(spans) and any(span.events for span in served.values())
    assert served == exported


def test_added_attributes_are_encoded_as_the_sdk_encoder_encodes_them(arthur_env, tmp_path):
    """Scalars set in place, anything else through the SDK's encoder, which leaves out what it cannot encode."""
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    values = {"text": "t", "empty": "", "yes": True, "count": 7, "ratio": 0.5, "huge": 2**70, "texts": ("a", "b"),
              "counts": [1, 2], "kv": {"k": "v"}, "raw": b"\x00", "after": "kept"}
    span = Span()
    EngineDestination(_settings(spool_dir=str(tmp_path)))._add_attributes(span.attributes, values)
    assert list(span.attributes) == _encode_attributes(values)
    assert [kv.key for kv in span.attributes] == [key for key in values if key != "huge"]


def _attributes(item) -> dict:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    span = Span.FromString(item.span)
    return {kv.key: kv.value.string_value for kv in span.attributes}


def test_privacy_acts_on_every_content_attribute(arthur_env, tmp_path, monkeypatch):
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "mail me at a@b.example"}]}]',
        "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"type": "text", "content": "sure"}]}]',
        "gen_ai.request.model": "gpt-4o-mini",
    }
    span = _span(1, resource=Resource.create({}), attributes=attributes)
    withheld = _attributes(EngineDestination(_settings(spool_dir=str(tmp_path), send_content=False)).item(span))
    content = [k for k in withheld if k.startswith(("gen_ai.input", "gen_ai.output", "llm.input_messages",
                                                    "llm.output_messages", "input.value", "output.value"))
               and not k.endswith(".role")]
    assert content and all(withheld[k] == CONTENT_WITHHELD for k in content)
    assert withheld["gen_ai.request.model"] == "gpt-4o-mini"

    redacted = _attributes(EngineDestination(_settings(spool_dir=str(tmp_path), redact_builtins="email",
                                                       max_text_bytes=64)).item(span))
    assert not any("a@b.example" in v for v in redacted.values())
    assert all(len(v.encode()) <= 64 for v in redacted.values())


def test_engine_url_secrets_are_never_shown(arthur_env):
    settings = _settings(engine_url="https://user:url-secret@engine.example/base?token=query-secret")
    from otel_arthur.clients.engine import EngineClient

    for shown in (repr(settings), repr(EngineClient(settings)), engine_key(settings)):
        assert "url-secret" not in shown and "query-secret" not in shown and "engine-secret" not in shown


def test_engine_dead_letters_read_back_as_spans(arthur_env, tmp_path):
    from otel_arthur.spool import Refused, Spool

    destination = EngineDestination(_settings(spool_dir=str(tmp_path)))
    items = destination.items([_span(1, resource=Resource.create({}))]).records
    spool = Spool(tmp_path, destination.key, 1_000_000, destination.codec)
    try:
        spool.append(items)
        [claimed] = spool.claim(1)
        spool.settle(refused=[Refused(claimed.seq, "batch_refused", "422")])
        [letter] = spool.dead_letters()  # what Pipeline.dead_letters() returns: the span, not a v3 record
        assert letter["record"] == items[0]
    finally:
        spool.close()


class _Observer:
    def __init__(self) -> None:
        self.dropped: dict[str, int] = {}

    def observe_request(self, seconds: float) -> None:
        pass

    def drop(self, reason: str, amount: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + amount


class _Client:
    """An Engine client answering as told: a task check raising ``task_error``, a 206 refusing ``rejected``."""

    def __init__(self, *, task_error: Exception | None = None, rejected: int = 0) -> None:
        self.task_error, self.rejected = task_error, rejected

    def get_task(self, task_id: str) -> dict:
        if self.task_error is not None:
            raise self.task_error
        return {"id": task_id}

    def send_traces(self, body: bytes, spans: int, read_timeout: float | None = None):
        from otel_arthur.clients.engine import IngestResult

        return IngestResult(spans, self.rejected, ("Invalid span data format: boom",) if self.rejected else ())

    def set_deadline(self, deadline: float) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_key_that_may_write_traces_but_not_read_tasks_does_not_block_delivery(arthur_env, tmp_path):
    from otel_arthur.clients.engine import EngineForbidden, EngineTaskNotFound
    from otel_arthur.clients.http import SetupError
    from otel_arthur.destinations.engine import EngineSender

    settings = _settings(task_id="6b7c1c1e-0000-4000-8000-000000000001", spool_dir=str(tmp_path))
    EngineSender(settings, _Observer(), _Client(task_error=EngineForbidden("403"))).prepare()  # checked no further
    for refusal in (EngineTaskNotFound("no task"), SetupError("401")):
        with pytest.raises(SetupError):
            EngineSender(settings, _Observer(), _Client(task_error=refusal)).prepare()


def test_spans_refused_inside_a_206_are_dropped_not_delivered_and_not_sent_again(arthur_env, tmp_path):
    from otel_arthur.destinations.engine import EngineSender
    from otel_arthur.pipeline import Pipeline

    destination = EngineDestination(_settings(spool_dir=str(tmp_path)))
    observer = _Observer()
    sender = EngineSender(destination.settings, observer, _Client(rejected=2))
    items = destination.items([_span(n, resource=Resource.create({})) for n in range(1, 6)]).records
    results = sender.send(items)
    assert [r.ok for r in results].count(True) == 3 and [r.dropped for r in results].count(True) == 2
    assert observer.dropped == {"engine_rejected": 2}

    class RefusingEngine(EngineDestination):
        def sender(self, observer):
            return EngineSender(self.settings, observer, _Client(rejected=2))

    pipeline = Pipeline(to=RefusingEngine(destination.settings))
    try:
        assert pipeline.submit(items)
        assert not pipeline.force_flush(10)  # settled, but not all delivered
        stats = pipeline.stats()
        assert (stats.delivered, stats.dead_lettered, stats.spool_depth) == (3, 0, 0)
    finally:
        pipeline.shutdown(1)


def test_without_the_engine_extra_the_engine_is_one_error_naming_it_and_v3_runs_on(arthur_env, tmp_path, caplog,
                                                                                  monkeypatch):
    import otel_arthur.exporter

    def no_protobuf_stack(settings, redact=None):
        if isinstance(settings, EngineSettings):
            raise ImportError("No module named 'opentelemetry.exporter.otlp.proto.common'")
        return real(settings, redact)

    real = otel_arthur.exporter.destination_for
    monkeypatch.setattr(otel_arthur.exporter, "destination_for", no_protobuf_stack)
    with caplog.at_level(logging.ERROR):
        exporter = ArthurSpanExporter(url="https://a.example", api_key="k", model_id="m", spool_dir=str(tmp_path),
                                      engine_url="https://engine.example", engine_api_key="engine-secret")
    try:
        [line] = [r.getMessage() for r in caplog.records]
        assert "otel-arthur[engine]" in line and "engine-secret" not in line
        assert [p.destination.name for p in exporter._pipelines] == ["v3"]
    finally:
        exporter.shutdown(0)


def test_a_priced_generation_reaches_the_engine_with_the_cost_of_its_v3_record(arthur_env, tmp_path):
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from otel_arthur.mapping import map_span

    attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                  "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 1000,
                  "gen_ai.usage.output_tokens": 100}
    span = ReadableSpan(name="chat", context=SpanContext(7, 1, False), start_time=1_700_000_000_000_000_000,
                        end_time=1_700_000_001_000_000_000, resource=Resource.create({}), attributes=attributes)
    [item] = EngineDestination(_settings(spool_dir=str(tmp_path))).items([span]).records
    sent = {kv.key: kv.value for kv in Span.FromString(item.span).attributes}
    assert sent["llm.cost.total"].double_value == map_span(span).fields["cost_usd"] > 0


def test_a_span_within_the_text_cap_is_translated_unread_exactly_as_when_read(arthur_env, tmp_path):
    """Privacy tells a span within the cap unchanged from its size alone (parsed strings are valid UTF-8, each
    shorter than the span): at the cap, at the longest text's UTF-8 size and just under it, served == exported."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    prompt = "Grüße, 日本語 and 🙂 " * 20
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                  "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": prompt,
                  "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "ok"}
    spans = [_span(1, resource=Resource.create({}), attributes=attributes)]
    request = encode_spans(spans)
    span_bytes = len(request.resource_spans[0].scope_spans[0].spans[0].SerializeToString())
    longest = len(prompt.encode())
    for cap in (span_bytes, longest, longest - 1):
        destination = EngineDestination(_settings(spool_dir=str(tmp_path), max_text_bytes=cap))
        served = Span.FromString(destination.from_otlp(request).records[0].span)
        assert served == Span.FromString(destination.items(spans).records[0].span)
        content = next(kv.value.string_value for kv in served.attributes if kv.key == "gen_ai.prompt.0.content")
        assert (content == prompt) == (cap >= longest)


def test_a_request_cannot_carry_a_text_that_is_not_valid_utf8():
    """What lets privacy skip reading a span within the cap: no lone surrogate gets past parsing, either encoding."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from otel_arthur import otlp

    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="x")
    span.attributes.add(key="k").value.string_value = "a-b"
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    body = request.SerializeToString().replace(b"a-b", b"\xed\xa0\x80")  # U+D800 encoded as UTF-8 would be
    with pytest.raises(otlp.RequestError):
        otlp.parse_request(body, otlp.PROTOBUF)
    document = ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x", "attributes": [{"key": "k", "value":'
                ' {"stringValue": "a\\ud800b"}}]}]}]}]}')
    with pytest.raises(otlp.RequestError):
        otlp.parse_request(document.encode(), otlp.JSON)


@pytest.mark.parametrize("engine_spans", ["ai", "all"])
def test_both_destinations_share_the_conversion_and_store_what_each_stores_alone(arthur_env, tmp_path, monkeypatch,
                                                                               engine_spans):
    """serve with v3 and the Engine converts each span's attributes once; the records and spans are each one's own,
    a marker that is not a text (bytes whose base64 reads as a marking value) included."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.trace.v1.trace_pb2 import Span
    from spanfixtures import SPANS_DIR, load_spans

    from otel_arthur import otlp
    from otel_arthur.destinations import OtlpExtraction

    request = encode_spans([span for path in sorted(SPANS_DIR.glob("*.json")) for span in load_spans(path.name)])
    odd = Span(trace_id=b"\x07" * 16, span_id=b"\x08" * 8, name="bytes marker", start_time_unix_nano=5)
    odd.attributes.add(key="gen_ai.operation.name").value.bytes_value = b"r\x16\xad"  # base64: "chat"
    odd.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o-mini"
    request.resource_spans[0].scope_spans[0].spans.append(odd)
    settings = _settings(spool_dir=str(tmp_path), engine_spans=engine_spans)
    alone = {**OtlpExtraction()(request), **OtlpExtraction(v3_mapper=None, engine=settings)(request)}
    conversions = {"generation": 0, "any": 0}
    generation_attributes, marked_attribute_dict = otlp.generation_attributes, otlp.marked_attribute_dict
    monkeypatch.setattr(otlp, "generation_attributes", lambda kvs: conversions.__setitem__(
        "generation", conversions["generation"] + 1) or generation_attributes(kvs))
    monkeypatch.setattr(otlp, "marked_attribute_dict", lambda kvs: conversions.__setitem__(
        "any", conversions["any"] + 1) or marked_attribute_dict(kvs))
    both = OtlpExtraction(engine=settings)(request)
    assert both["v3"].records == alone["v3"].records and len(both["v3"].records) > 5
    assert both["engine"].records == alone["engine"].records
    assert both["v3"].unmappable == alone["v3"].unmappable
    spans = otlp.count_spans(request)
    assert conversions["any"] == len(both["engine"].records) and conversions["generation"] + conversions["any"] == spans


def test_decode_processes_hand_back_each_destinations_items_as_its_spool_stores_them(arthur_env, tmp_path):
    """``OtlpExtraction.encoded``: each item prepared and encoded by its destination, v3's with what dedupe compares."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from spanfixtures import SPANS_DIR, load_spans

    from otel_arthur.config import ArthurSettings
    from otel_arthur.dedupe import call_of
    from otel_arthur.destinations import OtlpExtraction, destination_for
    from otel_arthur.spool import Encoded

    request = encode_spans([span for path in sorted(SPANS_DIR.glob("*.json")) for span in load_spans(path.name)])
    v3 = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                spool_dir=str(tmp_path), send_content=False)
    engine = _settings(spool_dir=str(tmp_path), engine_spans="all")
    extraction = OtlpExtraction(engine=engine, v3=v3)
    mapped = extraction(request)
    encoded = extraction.encoded(extraction(request))
    for name, settings in (("v3", v3), ("engine", engine)):
        destination = destination_for(settings)
        codec, items = destination.codec, mapped[name].records
        assert len(items) > 5 and encoded[name].unmappable == mapped[name].unmappable
        assert encoded[name].records == [
            Encoded(codec.identity(item), codec.encode(destination.prepare(item)),
                    call_of(item) if name == "v3" else None) for item in items]
    assert any(CONTENT_WITHHELD in item.body for item in encoded["v3"].records)  # v3's privacy applied
    with pytest.raises(ValueError, match="settings are needed"):
        OtlpExtraction().encoded(OtlpExtraction()(request))  # v3's privacy unknown: never spooled without it
