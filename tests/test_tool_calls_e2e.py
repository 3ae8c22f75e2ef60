"""End to end, tool calls: real ChatOpenAI with tools -> real instrumentor -> ArthurSpanExporter -> local Arthur.

One tool-calling turn (the model calls ``get_weather``, the tool answers, the model answers) gives two
records, whichever instrumentor and whether the app drives the turn itself (``bind_tools``) or a
LangGraph agent does. The local OpenAI endpoint answers deterministically, so each record is exact.
"""

from __future__ import annotations

import pytest
from appruns import run_app, to_local_arthur
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur import ArthurSpanExporter

QUESTION = "What is the weather in Paris?"
CALL = 'get_weather({"city": "Paris"})'
# The two records of the turn: what Arthur must hold, field by field (usage: the server's word counts).
ASKED = {"prompt": f"Human: {QUESTION}", "completion": CALL,
         "prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}
ANSWERED = {"prompt": f"Human: {QUESTION}\nAI: {CALL}\nTool: sunny and 21C in Paris",
            "completion": "Echo: sunny and 21C in Paris", "finish_reason": "stop",
            "prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21C in {city}"


def _llm(openai_server) -> ChatOpenAI:
    return ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", model="gpt-4o-mini", max_retries=0)


@pytest.fixture
def to_arthur(add_processors, local_arthur, new_model):
    """OpenLLMetry's spans to a fresh model; yields (model id, flush: True once Arthur has them all, captured spans)."""
    model_id = new_model()
    exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, model_id=model_id,
                                  allow_insecure=True)
    processor = BatchSpanProcessor(exporter)
    captured = InMemorySpanExporter()
    add_processors(processor, SimpleSpanProcessor(captured))
    return model_id, lambda: processor.force_flush() and exporter.force_flush(), captured


def _records(local_arthur, model_id: str) -> list[dict]:
    rows = sorted(local_arthur.inferences(model_id), key=lambda r: r["inference_timestamp"])
    return [r["inference_data"] for r in rows]


def _assert_the_turn(records: list[dict], tool_finish_reason: str) -> None:
    asked, answered = records
    assert {k: asked[k] for k in ASKED} == ASKED
    assert asked["finish_reason"] == tool_finish_reason
    assert {k: answered[k] for k in ANSWERED} == ANSWERED


def _generation_ids(spans) -> set[str]:
    return {f"{s.context.span_id:016x}" for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"}


def test_a_bind_tools_turn_through_openllmetry_gives_exact_records(to_arthur, local_arthur, openai_server):
    model_id, flush, captured = to_arthur
    llm = _llm(openai_server).bind_tools([get_weather])
    messages = [HumanMessage(QUESTION)]
    asked = llm.invoke(messages)
    messages.append(asked)
    messages.extend(get_weather.invoke(call) for call in asked.tool_calls)
    assert llm.invoke(messages).content == ANSWERED["completion"]
    assert flush()

    records = _records(local_arthur, model_id)
    assert {r["span_id"] for r in records} == _generation_ids(captured.get_finished_spans())
    _assert_the_turn(records, "tool_call")  # OpenLLMetry writes the GenAI reason, not OpenAI's tool_calls


def test_a_langgraph_agent_through_openllmetry_gives_exact_records(to_arthur, local_arthur, openai_server):
    from langchain.agents import (
        create_agent,  # LangGraph's agent (create_react_agent's successor)
    )

    model_id, flush, captured = to_arthur
    state = create_agent(_llm(openai_server), tools=[get_weather]).invoke({"messages": [HumanMessage(QUESTION)]})
    assert [m.type for m in state["messages"]] == ["human", "ai", "tool", "ai"]
    assert state["messages"][-1].content == ANSWERED["completion"]
    assert flush()

    records = _records(local_arthur, model_id)
    assert {r["span_id"] for r in records} == _generation_ids(captured.get_finished_spans())
    _assert_the_turn(records, "tool_call")
    assert len({r["trace_id"] for r in records}) == 1  # one agent run, one trace


def test_openinference_bind_tools_turn_and_agent_in_their_own_process(local_arthur, new_model, openai_server):
    """The same two, instrumented by OpenInference (never in one process with OpenLLMetry)."""
    model_id = new_model()
    scenarios = run_app("openinference_tools.py",
                        to_local_arthur(local_arthur, model_id, openai_server, "openinference-tools"))
    by_span = {r["span_id"]: r for r in _records(local_arthur, model_id)}
    for name in ("bind_tools", "agent"):
        scenario = scenarios[name]
        assert scenario["answer"] == ANSWERED["completion"], name
        ids = [s["span_id"] for s in scenario["llm_spans"]]
        assert len(ids) == 2, name
        _assert_the_turn([by_span[i] for i in ids], "tool_calls")  # OpenInference keeps OpenAI's reason
        assert {by_span[i]["service_name"] for i in ids} == {"openinference-tools"}
    assert len(by_span) == 4  # one record per LLM call, nothing else
