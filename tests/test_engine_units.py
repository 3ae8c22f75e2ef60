"""Arthur Engine destination, piece by piece: settings, the spooled form, requests, privacy."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

from otel_arthur import ArthurSpanExporter
from otel_arthur.config import ConfigurationError, EngineSettings, engine_configured
from otel_arthur.destinations.engine import EngineDestination, EngineSpanCodec, build_request, engine_key
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
    from otel_arthur.engine_client import EngineClient

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
