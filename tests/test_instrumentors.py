"""The instrumentor matrix for provider SDKs (docs/instrumentors.md): real SDK -> real instrumentor ->
ArthurSpanExporter -> local Arthur, against the local OpenAI- and Anthropic-compatible endpoint.

Each instrumentor patches the same SDK methods, and none can be undone and redone in one process, so
each runs ``tests/apps/provider_chat.py`` in a process of its own. The app reports every call as it saw
it on the wire; the endpoint answers by definition (``openai.complete``), so each record is checked
exactly against both.
"""

from __future__ import annotations

from typing import Any

import pytest
from appruns import run_app, to_local_arthur

from otel_arthur.local import anthropic, openai
from otel_arthur.mapping import render_messages
from otel_arthur.privacy import CONTENT_NOT_CAPTURED

APP = "provider_chat.py"
SYSTEM = "You are terse."  # as the app says it
MAX_TOKENS = 50
# The official instrumentation puts content on spans only under the latest GenAI conventions.
GENAI_CONTENT_ON_SPANS = {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                          "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "span_only"}


def _run_app(instrumentor: str, openai_server: Any, local_arthur: Any, model_id: str,
             extra_env: dict[str, str]) -> list[dict[str, Any]]:
    env = {name: value for name, value in to_local_arthur(local_arthur, model_id, openai_server,
                                                          f"{instrumentor}-app").items()
           if not name.startswith(("OTEL_SEMCONV", "OTEL_INSTRUMENTATION_GENAI", "TRACELOOP_", "OPENINFERENCE_"))}
    env |= {"ANTHROPIC_BASE_URL": openai_server.url, "ANTHROPIC_API_KEY": "unused", **extra_env}
    calls = run_app(APP, env, instrumentor)
    assert [c["streaming"] for c in calls] == [False] * 3 + [True] * 3
    assert all(len(c["spans"]) == 1 for c in calls)  # one span per call
    return calls


def _records(local_arthur: Any, model_id: str, calls: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """(record, call) pairs; exactly one record per call, on the call's span."""
    by_span = {c["spans"][0]["span_id"]: c for c in calls}
    rows = [r for r in local_arthur.inferences(model_id) if r["inference_data"].get("span_id") in by_span]
    assert sorted(r["inference_data"]["span_id"] for r in rows) == sorted(by_span)
    pairs = [(r["inference_data"], by_span[r["inference_data"]["span_id"]]) for r in rows]
    for data, call in pairs:
        assert (data["trace_id"], data["span_id"]) == (call["spans"][0]["trace_id"], call["spans"][0]["span_id"])
        assert data["duration"] > 0
    return pairs


@pytest.mark.parametrize(("instrumentor", "extra_env"), [
    ("openllmetry-openai", {}),
    ("openinference-openai", {}),
    ("openai-v2", GENAI_CONTENT_ON_SPANS),
], ids=["openllmetry", "openinference", "openai-v2"])
def test_openai_sdk_instrumentor_makes_exact_records(instrumentor, extra_env, openai_server, local_arthur,
                                                     new_model):
    model_id = new_model()
    calls = _run_app(instrumentor, openai_server, local_arthur, model_id, extra_env)
    for data, call in _records(local_arthur, model_id, calls):
        server = openai.complete(call["messages"])  # what the endpoint answers by definition
        assert (call["reply"], call["usage"], call["finish_reason"], call["model"]) == \
            (server.content, [server.prompt_tokens, server.completion_tokens, server.total_tokens], "stop",
             openai.DEFAULT_MODEL)
        assert data["prompt"] == render_messages([(m["role"], m["content"]) for m in call["messages"]])
        assert data["completion"] == call["reply"]
        assert [data["prompt_tokens"], data["completion_tokens"], data["total_tokens"]] == call["usage"]
        assert data["finish_reason"] == "stop"
        assert (data["model"], data["provider"]) == (openai.DEFAULT_MODEL, "openai")
        assert data["temperature"] == 0.1
        assert data["service_name"] == f"{instrumentor}-app"
    last = [d for d, c in _records(local_arthur, model_id, calls) if c["messages"][-1]["content"] == "Thanks, bye."]
    assert [d["prompt"].count("\nAI: Echo:") for d in last] == [2, 2]  # history was kept, plain and streaming


def test_openai_v2_without_the_latest_conventions_sends_metrics_only(openai_server, local_arthur, new_model):
    """Its default mode puts content in log events, never on spans: records carry usage and the marker."""
    model_id = new_model()
    calls = _run_app("openai-v2", openai_server, local_arthur, model_id,
                     {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    for data, call in _records(local_arthur, model_id, calls):
        assert (data["prompt"], data["completion"]) == (CONTENT_NOT_CAPTURED, CONTENT_NOT_CAPTURED)
        assert [data["prompt_tokens"], data["completion_tokens"], data["total_tokens"]] == call["usage"]
        assert data["model"] == openai.DEFAULT_MODEL
        # Streaming, this mode records no finish reason at all.
        assert data.get("finish_reason") == (None if call["streaming"] else "stop")


def test_anthropic_sdk_with_openllmetry_makes_exact_records(openai_server, local_arthur, new_model):
    model_id = new_model()
    calls = _run_app("openllmetry-anthropic", openai_server, local_arthur, model_id, {})
    for data, call in _records(local_arthur, model_id, calls):
        chat = anthropic.openai_messages({"system": SYSTEM, "messages": call["messages"]})
        server = openai.complete(chat, MAX_TOKENS)  # what the endpoint answers by definition
        assert (call["reply"], call["usage"], call["finish_reason"], call["model"]) == \
            (server.content, [server.prompt_tokens, server.completion_tokens], "end_turn", anthropic.DEFAULT_MODEL)
        assert data["prompt"] == render_messages([(m["role"], m["content"]) for m in chat])  # System: … first
        assert data["completion"] == call["reply"]
        input_tokens, output_tokens = call["usage"]
        # OpenLLMetry adds message_start's output_tokens (Anthropic sends 1) to message_delta's, which is
        # already the total: a streamed call's completion count is one too many (instrumentor 0.62.4).
        completion_tokens = output_tokens + 1 if call["streaming"] else output_tokens
        assert [data["prompt_tokens"], data["completion_tokens"], data["total_tokens"]] == \
            [input_tokens, completion_tokens, input_tokens + completion_tokens]
        assert data["finish_reason"] == "stop"  # OpenLLMetry's name for end_turn
        assert (data["model"], data["provider"]) == (anthropic.DEFAULT_MODEL, "anthropic")
        assert data["service_name"] == "openllmetry-anthropic-app"
