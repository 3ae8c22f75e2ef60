"""The recorded span fixtures load as real ``ReadableSpan`` objects and say what the README says."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from spanfixtures import SPANS_DIR, dump_spans, load_span, load_spans, read_json

from otel_arthur.local.openai import complete

# fixture -> (attribute, value) that marks its generation span in that convention
GENERATION_MARKERS = {
    "openllmetry_chat": ("gen_ai.operation.name", "chat"),
    "openllmetry_stream": ("gen_ai.operation.name", "chat"),
    "openllmetry_chain": ("gen_ai.operation.name", "chat"),
    "openllmetry_error": ("gen_ai.operation.name", "chat"),
    "openllmetry_legacy": ("llm.request.type", "chat"),
    "openinference_chat": ("openinference.span.kind", "LLM"),
    "openinference_stream": ("openinference.span.kind", "LLM"),
    "genai_semconv": ("gen_ai.operation.name", "chat"),
    "openllmetry_tools": ("gen_ai.operation.name", "chat"),
    "openllmetry_image": ("gen_ai.operation.name", "chat"),
    "openllmetry_legacy_tools": ("llm.request.type", "chat"),
    "openllmetry_legacy_image": ("llm.request.type", "chat"),
    "openinference_tools": ("openinference.span.kind", "LLM"),
    "openinference_image": ("openinference.span.kind", "LLM"),
}
FORMAT_KEYS = [
    "name", "kind", "trace_id", "span_id", "parent_span_id", "start_time_unix_nano", "end_time_unix_nano",
    "status", "attributes", "resource", "events",
]  # fmt: skip
# the recorded conversation (see fixtures/spans/README.md), as the server saw it
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
    {"role": "user", "content": "What is OpenTelemetry?"},
    {"role": "assistant", "content": "OpenTelemetry is an open standard for traces, metrics and logs."},
    {"role": "user", "content": "How does it help with LLM apps?"},
]
# the attribute holding the reply's text and the input token count, per convention
REPLY_AND_INPUT_TOKENS = {
    "openllmetry": ("gen_ai.output.messages", "gen_ai.usage.input_tokens"),
    "openllmetry_legacy": ("gen_ai.completion.0.content", "gen_ai.usage.input_tokens"),
    "openinference": ("llm.output_messages.0.message.content", "llm.token_count.prompt"),
}


def generations(name: str) -> list[ReadableSpan]:
    key, value = GENERATION_MARKERS[name]
    return [s for s in load_spans(name) if s.attributes and s.attributes.get(key) == value]


def test_every_file_is_covered() -> None:
    assert {p.stem for p in SPANS_DIR.glob("*.json")} == set(GENERATION_MARKERS)


@pytest.mark.parametrize("name", sorted(GENERATION_MARKERS))
def test_round_trip(name: str) -> None:
    spans = load_spans(name)
    assert all(isinstance(s, ReadableSpan) for s in spans)
    assert dump_spans(spans) == read_json(name)
    assert all(list(span) == FORMAT_KEYS for span in read_json(name))


@pytest.mark.parametrize("name", sorted(GENERATION_MARKERS))
def test_holds_a_generation_span(name: str) -> None:
    found = generations(name)
    assert found, f"{name} has no span marked {GENERATION_MARKERS[name]}"
    for span in load_spans(name):
        assert span.resource.attributes["service.name"] == "fixture-chat"
        assert span.end_time is not None and span.start_time is not None and span.end_time >= span.start_time


def test_dump_then_load_keeps_a_live_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "t"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
        child.set_attributes({"s": "x", "i": 1, "f": 0.5, "b": True, "seq": ("a", "b")})
        child.add_event("e", {"n": (1, 2)})
        child.set_status(StatusCode.ERROR, "boom")
    original = dump_spans(exporter.get_finished_spans())
    rebuilt = [load_span(s) for s in original]
    assert dump_spans(rebuilt) == original
    child_span = next(s for s in rebuilt if s.name == "child")
    assert child_span.attributes == {"s": "x", "i": 1, "f": 0.5, "b": True, "seq": ("a", "b")}
    assert child_span.events[0].attributes == {"n": (1, 2)}
    assert child_span.parent is not None and child_span.status.description == "boom"


def test_loaded_spans_are_what_the_sdk_would_hand_an_exporter() -> None:
    (span,) = load_spans("openllmetry_chat.json")
    assert span.kind is SpanKind.CLIENT
    assert span.parent is None
    assert span.get_span_context().trace_id > 0  # type: ignore[union-attr]
    assert span.attributes is not None
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)  # lists back to tuples
    assert span.status.status_code is StatusCode.UNSET


def test_chain_has_non_generation_parents() -> None:
    spans = load_spans("openllmetry_chain")
    (generation,) = generations("openllmetry_chain")
    others = [s for s in spans if s.name != generation.name]
    assert {s.attributes["gen_ai.operation.name"] for s in others if s.attributes} == {"invoke_agent", "execute_task"}
    assert generation.parent is not None
    assert generation.parent.span_id in {s.get_span_context().span_id for s in others}  # type: ignore[union-attr]


def test_error_fixture_failed() -> None:
    (span,) = generations("openllmetry_error")
    assert span.status.status_code is StatusCode.ERROR
    assert "500" in (span.status.description or "")
    assert [e.name for e in span.events] == ["exception"]


@pytest.mark.parametrize(
    ("name", "convention"),
    [
        ("openllmetry_chat", "openllmetry"),
        ("openllmetry_stream", "openllmetry"),
        ("openllmetry_chain", "openllmetry"),
        ("openllmetry_legacy", "openllmetry_legacy"),
        ("openinference_chat", "openinference"),
        ("openinference_stream", "openinference"),
    ],
)
def test_recorded_values_match_the_server(name: str, convention: str) -> None:
    expected = complete(CONVERSATION)
    reply_key, tokens_key = REPLY_AND_INPUT_TOKENS[convention]
    (span,) = generations(name)
    assert span.attributes is not None
    assert expected.content in str(span.attributes[reply_key])
    assert span.attributes[tokens_key] == expected.prompt_tokens == 29


def test_genai_semconv_has_one_span_without_content_and_one_with() -> None:
    bare, full = generations("genai_semconv")
    assert bare.attributes is not None and full.attributes is not None
    assert not any(k in bare.attributes for k in ("gen_ai.input.messages", "gen_ai.output.messages"))
    output = json.loads(str(full.attributes["gen_ai.output.messages"]))
    assert output[0]["parts"][0]["content"] == complete(CONVERSATION).content
    assert full.attributes["gen_ai.conversation.id"] == "sess-1"
