"""End to end into Arthur Engine: real ChatOpenAI over HTTP -> real instrumentor -> ArthurSpanExporter -> local Engine.

The local Engine stands in for the real one's ingest (``otel_arthur.local.engine``): it refuses
gzip and OTLP/JSON, so a stored span also proves it was sent as plain protobuf.
"""

from __future__ import annotations

import gzip
import json
import os

import pytest
import requests
from appruns import run_app
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_openai import ChatOpenAI
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servehelpers import JSON, PROTOBUF, otlp_json, serving
from spanfixtures import load_spans, reidentified

from otel_arthur import ArthurSpanExporter
from otel_arthur.config import EngineSettings
from otel_arthur.destinations.engine import EngineDestination
from otel_arthur.local import openai

SYSTEM = "You are terse."
ROLES = {"system": "system", "human": "user", "ai": "assistant"}


@pytest.fixture
def engine_tracing(add_processors, local_engine, arthur_env):
    """``engine_tracing()``: this test's spans to the local Engine, and captured: (exporter, processor, captured)."""

    def start():
        exporter = ArthurSpanExporter(engine_url=local_engine.url, engine_api_key=local_engine.api_key,
                                      allow_insecure=True)
        captured = InMemorySpanExporter()
        processor = BatchSpanProcessor(exporter)
        add_processors(processor, SimpleSpanProcessor(captured))
        return exporter, processor, captured

    return start


def _messages(attributes: dict, prefix: str) -> list[tuple[str, str]]:
    messages, index = [], 0
    while f"{prefix}.{index}.message.role" in attributes:
        messages.append((attributes[f"{prefix}.{index}.message.role"],
                         attributes.get(f"{prefix}.{index}.message.content", "")))
        index += 1
    return messages


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "streaming"])
def test_openllmetry_chat_reaches_the_engine_in_openinference_form(
        streaming, openllmetry_provider, engine_tracing, openai_server, local_engine):
    exporter, processor, captured = engine_tracing()
    llm = ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", model="gpt-4o-mini",
                     temperature=0.1, max_retries=0, streaming=streaming, stream_usage=True)
    chain = ChatPromptTemplate.from_messages([MessagesPlaceholder("history")]) | llm  # a workflow: CHAIN spans
    history, expected = [SystemMessage(SYSTEM)], []
    for question in ("What is a span?", "And a trace?"):
        history.append(HumanMessage(question))
        sent = list(history)
        history.append(chain.invoke({"history": history}))
        expected.append((sent, openai.complete([{"role": ROLES[m.type], "content": m.content} for m in sent])))
    assert processor.force_flush() and exporter.force_flush()

    ours = {f"{s.context.trace_id:032x}" for s in captured.get_finished_spans()}
    stored = [s for s in local_engine.spans() if s["trace_id"] in ours]
    llm_spans = sorted((s for s in stored if s["attributes"].get("openinference.span.kind") == "LLM"),
                       key=lambda s: s["start_time_unix_nano"])
    assert len(llm_spans) == 2  # exactly one per call
    for span, (sent, completion) in zip(llm_spans, expected):
        attributes = span["attributes"]
        assert _messages(attributes, "llm.input_messages") == [(ROLES[m.type], m.content) for m in sent]
        assert _messages(attributes, "llm.output_messages") == [("assistant", completion.content)]
        assert attributes["llm.model_name"].startswith("gpt-4o-mini")
        assert (attributes["llm.token_count.prompt"], attributes["llm.token_count.completion"],
                attributes["llm.token_count.total"]) == (completion.prompt_tokens, completion.completion_tokens,
                                                         completion.total_tokens)
        assert attributes["gen_ai.operation.name"] == "chat"  # the original attributes are kept
        assert span["resource_attributes"]["service.name"] == "e2e-chat"
    kinds = {s["span_id"]: s["attributes"].get("openinference.span.kind") for s in stored}
    assert "CHAIN" in kinds.values()
    # Every span sent is stored once (ids unique) and every request was plain protobuf (gzip is a 400 there).
    assert len(kinds) == len(stored)
    assert "400" not in local_engine.stats()["requests"].get("POST /api/v1/traces", {})
    exporter_stats = exporter.stats("engine")
    assert exporter_stats.delivered == len(stored) and exporter_stats.dead_lettered == 0


def test_openinference_spans_pass_through_once(openai_server, local_engine, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARTHUR_")}
    env.update(ARTHUR_ENGINE_URL=local_engine.url, ARTHUR_ENGINE_API_KEY=local_engine.api_key,
               ARTHUR_ALLOW_INSECURE="true", OPENAI_BASE_URL=openai_server.url + "/v1", OPENAI_API_KEY="unused",
               OTEL_SERVICE_NAME="oi-chat", XDG_STATE_HOME=str(tmp_path))
    calls = run_app("openinference_chat.py", env)
    for call in calls:
        [ids] = call["spans"]
        [span] = [s for s in local_engine.spans(trace_id=ids["trace_id"]) if s["span_id"] == ids["span_id"]]
        attributes = span["attributes"]
        assert attributes["openinference.span.kind"] == "LLM"
        sent = [(m["type"], m["data"]["content"]) for m in call["messages"]]
        assert _messages(attributes, "llm.input_messages") == [(ROLES[kind], text) for kind, text in sent]
        assert attributes["llm.token_count.total"] == call["usage"]["total_tokens"]
    traces = {c["spans"][0]["trace_id"] for c in calls}
    stored = [s for t in traces for s in local_engine.spans(trace_id=t)]
    assert len({s["span_id"] for s in stored}) == len(stored)  # nothing doubled
    assert sum(s["attributes"].get("openinference.span.kind") == "LLM" for s in stored) == len(calls)


def test_a_tool_calling_turn_carries_the_call_and_its_result(
        openllmetry_provider, engine_tracing, openai_server, local_engine):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny and 21C in {city}"

    exporter, processor, captured = engine_tracing()
    llm = ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", model="gpt-4o-mini",
                     max_retries=0).bind_tools([get_weather])
    messages = [HumanMessage("What is the weather in Paris?")]
    asked = llm.invoke(messages)
    messages.append(asked)
    messages.extend(get_weather.invoke(call) for call in asked.tool_calls)
    final = llm.invoke(messages)
    assert processor.force_flush() and exporter.force_flush()
    assert final.content == "Echo: sunny and 21C in Paris"

    ours = {f"{s.context.trace_id:032x}" for s in captured.get_finished_spans()}
    stored = [s for s in local_engine.spans() if s["trace_id"] in ours]
    first, second = sorted((s["attributes"] for s in stored if s["attributes"]["openinference.span.kind"] == "LLM"),
                           key=lambda a: len(_messages(a, "llm.input_messages")))
    call = "llm.output_messages.0.message.tool_calls.0.tool_call.function"
    assert first[f"{call}.name"] == "get_weather"
    assert json.loads(first[f"{call}.arguments"]) == {"city": "Paris"}
    inputs = _messages(second, "llm.input_messages")
    assert inputs[0] == ("user", "What is the weather in Paris?")
    assert inputs[-1] == ("tool", "sunny and 21C in Paris")
    assert second["llm.input_messages.1.message.tool_calls.0.tool_call.function.name"] == "get_weather"
    assert _messages(second, "llm.output_messages") == [("assistant", "Echo: sunny and 21C in Paris")]
    tools = [s for s in stored if s["attributes"]["openinference.span.kind"] == "TOOL"]
    assert len(tools) == 1 and "get_weather" in tools[0]["name"]


def _engine_settings(local_engine, tmp_path, **overrides) -> EngineSettings:
    return EngineSettings(url=local_engine.url, api_key=local_engine.api_key, allow_insecure=True,
                          spool_dir=str(tmp_path), **overrides)


@pytest.mark.parametrize("body", ["protobuf", "protobuf+gzip", "json"])
def test_serve_takes_any_otlp_http_body_and_sends_the_engine_plain_protobuf_as_the_exporter_would(
        body, local_engine, tmp_path):
    trace_id = int.from_bytes(os.urandom(16), "big")
    spans = [reidentified(s, trace_id, index + 1) for index, s in enumerate(load_spans("openllmetry_chain"))]
    request = encode_spans(spans)
    if body == "json":
        data, headers = otlp_json(request), JSON
    else:
        data, headers = request.SerializeToString(), dict(PROTOBUF)
        if body.endswith("gzip"):
            data, headers = gzip.compress(data), headers | {"Content-Encoding": "gzip"}
    settings = _engine_settings(local_engine, tmp_path)
    with serving(settings) as served:
        assert requests.post(served.traces, data=data, headers=headers, timeout=10).status_code == 200
        assert served.pipeline.force_flush(10)
    stored = {s["span_id"]: s for s in local_engine.spans(trace_id=f"{trace_id:032x}")}
    # What the in-app exporter would have sent for the same spans: the two front doors agree.
    in_app = EngineDestination(settings).items(spans).records
    assert sorted(stored) == sorted(item.id.split("-")[1] for item in in_app)
    assert {s["attributes"].get("openinference.span.kind") for s in stored.values()} >= {"LLM", "CHAIN"}
    for item in in_app:
        expected = {kv.key for kv in Span.FromString(item.span).attributes}
        assert set(stored[item.id.split("-")[1]]["attributes"]) == expected
    assert "400" not in local_engine.stats()["requests"].get("POST /api/v1/traces", {})
