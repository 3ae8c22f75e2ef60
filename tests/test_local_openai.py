"""The local OpenAI-compatible server, driven by the real ``langchain_openai.ChatOpenAI``."""

from __future__ import annotations

import argparse
import functools
import json
import operator
from collections.abc import Iterator

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from otel_arthur.local import openai_cli
from otel_arthur.local.openai import (
    DEFAULT_MODEL,
    ToolCallCompletion,
    call_tool,
    complete,
    create_app,
    error_status,
    reply_tokens,
)
from otel_arthur.local.runner import BackgroundServer

HISTORY = [
    SystemMessage("You are a terse assistant."),
    HumanMessage("What is OpenTelemetry?"),
    AIMessage("A vendor-neutral observability framework."),
    HumanMessage("Does it trace LLM calls?"),
]
HISTORY_WIRE = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is OpenTelemetry?"},
    {"role": "assistant", "content": "A vendor-neutral observability framework."},
    {"role": "user", "content": "Does it trace LLM calls?"},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21C in {city}"


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app()) as srv:
        yield srv


def chat(server: BackgroundServer, **kwargs: object) -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", base_url=server.url + "/v1", api_key="unused", max_retries=0, **kwargs)


# --- the pure reply function -------------------------------------------------------------------


def test_reply_echoes_the_last_user_message_and_counts_words() -> None:
    result = complete(HISTORY_WIRE)
    assert result.content == "Echo: Does it trace LLM calls?"
    assert result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (17, 6, 23)
    assert result.usage() == {"prompt_tokens": 17, "completion_tokens": 6, "total_tokens": 23}


def test_reply_reads_content_parts_and_survives_no_user_message() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "image_url"}]}]
    assert complete(parts).content == "Echo: one two"
    assert complete([{"role": "system", "content": "x"}]) == ("Echo:", "stop", 1, 1)


def test_max_tokens_cuts_the_reply_with_finish_reason_length() -> None:
    assert complete(HISTORY_WIRE, max_tokens=3)[:2] == ("Echo: Does it", "length")
    assert complete(HISTORY_WIRE, max_tokens=6).finish_reason == "stop"


def test_stream_tokens_join_back_to_the_reply() -> None:
    assert reply_tokens("Echo: Does it  trace") == ["Echo: ", "Does ", "it  ", "trace"]
    assert "".join(reply_tokens(complete(HISTORY_WIRE).content)) == complete(HISTORY_WIRE).content


def test_error_marker_is_read_from_the_last_user_message_only() -> None:
    assert error_status([{"role": "user", "content": "please [error 429] now"}]) == 429
    assert error_status([{"role": "user", "content": "[error 500]"}, {"role": "user", "content": "ok"}]) is None
    assert error_status([{"role": "user", "content": "[error 418]"}]) is None  # not one of ERRORS


def test_tool_call_goes_to_the_first_tool_with_the_place_after_in() -> None:
    other = {"type": "function", "function": {"name": "other", "parameters": {}}}
    result = call_tool([WEATHER_QUESTION], [WEATHER_TOOL, other])
    assert result == ToolCallCompletion("get_weather", '{"city": "Paris"}', 6, 2)
    assert result.usage() == {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}
    assert call_tool([WEATHER_QUESTION], [other, WEATHER_TOOL]) == ToolCallCompletion("other", "{}", 6, 1)


def test_tool_arguments_follow_the_schema() -> None:
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "location": {"type": "string"},
            "days": {"type": "integer"},
            "metric": {"type": "boolean"},
            "tags": {"type": "array"},
            "optional": {"type": "string"},
        },
        "required": ["query", "location", "days", "metric", "tags"],
    }
    search = [{"type": "function", "function": {"name": "search", "parameters": parameters}}]
    result = call_tool([{"role": "user", "content": "rain in the hills in Oslo"}], search)
    assert result is not None
    assert json.loads(result.arguments) == {
        "query": "rain in the hills in Oslo",
        "location": "Oslo",
        "days": 0,
        "metric": False,
        "tags": [],
    }
    no_place = call_tool([{"role": "user", "content": "weather here?"}], [WEATHER_TOOL])
    assert no_place is not None and json.loads(no_place.arguments) == {"city": "weather here?"}


def test_tool_choice_picks_the_named_tool_or_none() -> None:
    other = {"type": "function", "function": {"name": "other"}}
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert call_tool([WEATHER_QUESTION], [other, WEATHER_TOOL], named) == ToolCallCompletion(
        "get_weather", '{"city": "Paris"}', 6, 2
    )
    assert call_tool([WEATHER_QUESTION], [WEATHER_TOOL], "none") is None
    assert call_tool([WEATHER_QUESTION], None) is None


def test_a_tool_result_is_echoed_not_called_again() -> None:
    messages = [
        WEATHER_QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny and 21C in Paris"},
    ]
    assert call_tool(messages, [WEATHER_TOOL]) is None
    assert complete(messages) == ("Echo: sunny and 21C in Paris", "stop", 6 + 5, 6)


# --- over HTTP with ChatOpenAI ------------------------------------------------------------------


def test_invoke(server: BackgroundServer) -> None:
    expected = complete(HISTORY_WIRE)
    reply = chat(server, temperature=0.1).invoke(HISTORY)
    assert reply.content == expected.content
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["model_name"] == DEFAULT_MODEL
    assert reply.response_metadata["id"].startswith("chatcmpl-")
    assert reply.usage_metadata is not None
    assert (reply.usage_metadata["input_tokens"], reply.usage_metadata["output_tokens"]) == (17, 6)
    assert reply.usage_metadata["total_tokens"] == 23


def test_streaming_invoke_matches_non_streaming(server: BackgroundServer) -> None:
    plain = chat(server).invoke(HISTORY)
    streamed = chat(server, streaming=True, stream_usage=True).invoke(HISTORY)
    assert streamed.content == plain.content
    assert streamed.usage_metadata is not None and plain.usage_metadata is not None
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert streamed.usage_metadata[key] == plain.usage_metadata[key]
    assert streamed.response_metadata["finish_reason"] == "stop"


def test_stream_yields_one_chunk_per_word(server: BackgroundServer) -> None:
    chunks = list(chat(server, streaming=True, stream_usage=True).stream(HISTORY))
    contents = [c.content for c in chunks if c.content]
    assert contents == reply_tokens(complete(HISTORY_WIRE).content)
    total = functools.reduce(operator.add, chunks)
    assert total.content == "Echo: Does it trace LLM calls?"
    assert total.usage_metadata is not None and total.usage_metadata["total_tokens"] == 23
    assert total.response_metadata["finish_reason"] == "stop"


def test_stream_without_usage_sends_none(server: BackgroundServer) -> None:
    reply = chat(server, streaming=True, stream_usage=False).invoke(HISTORY)
    assert reply.content == "Echo: Does it trace LLM calls?"
    assert not reply.usage_metadata


def test_multi_turn_history_counts_every_message(server: BackgroundServer) -> None:
    llm = chat(server)
    first = llm.invoke([HumanMessage("hi")])
    second = llm.invoke([HumanMessage("hi"), first, HumanMessage("and again")])
    assert first.content == "Echo: hi"
    assert second.content == "Echo: and again"
    assert second.usage_metadata is not None and second.usage_metadata["input_tokens"] == 1 + 2 + 2


@pytest.mark.parametrize("streaming", [False, True])
def test_max_tokens_is_honoured(server: BackgroundServer, streaming: bool) -> None:
    reply = chat(server, max_tokens=2, streaming=streaming, stream_usage=True).invoke(HISTORY)
    assert reply.content == "Echo: Does"
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, openai.InternalServerError), (429, openai.RateLimitError), (401, openai.AuthenticationError)],
)
@pytest.mark.parametrize("streaming", [False, True])
def test_error_marker_fails_the_call(
    server: BackgroundServer, status: int, error: type[openai.APIStatusError], streaming: bool
) -> None:
    with pytest.raises(error) as caught:
        chat(server, streaming=streaming).invoke([HumanMessage(f"fail please [error {status}]")])
    assert caught.value.status_code == status
    assert caught.value.body is not None and "requested by the prompt" in caught.value.body["message"]


def test_error_body_is_openai_shaped(server: BackgroundServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "[error 429]"}]}
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 429
    assert response.json() == {
        "error": {
            "message": "error 429 requested by the prompt",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"messages": "hi"}', b'{"messages": [], "max_tokens": 0}'],
)
def test_bad_requests_get_400(server: BackgroundServer, body: bytes) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_stream_wire_format(server: BackgroundServer) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a b"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]] == ["Echo: ", "a ", "b"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_plain_response_shape(server: BackgroundServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "a b"}]}
    payload = httpx.post(server.url + "/v1/chat/completions", json=body).json()
    assert payload["object"] == "chat.completion"
    assert payload["model"] == DEFAULT_MODEL
    assert isinstance(payload["created"], int)
    assert payload["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Echo: a b"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert payload["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_models_lists_the_served_model() -> None:
    with BackgroundServer(create_app(model="my-model")) as srv:
        payload = httpx.get(srv.url + "/v1/models").json()
        reply = chat(srv).invoke("x")
    assert [m["id"] for m in payload["data"]] == ["my-model"]
    assert reply.response_metadata["model_name"] == "my-model"


def _tool_request(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [WEATHER_QUESTION], "tools": [WEATHER_TOOL], **extra}


def test_tool_call_response_shape() -> None:
    with BackgroundServer(create_app()) as srv:
        payloads = [httpx.post(srv.url + "/v1/chat/completions", json=_tool_request()).json() for _ in range(2)]
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert [p["choices"] for p in payloads] == [
        [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, **call}]},
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ]
        for call_id in ("call_1", "call_2")  # counted within one server's life
    ]
    assert payloads[0]["usage"] == {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}


def test_tool_call_stream_wire_format(server: BackgroundServer) -> None:
    body = _tool_request(stream=True, stream_options={"include_usage": True})
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    [opening] = first["tool_calls"]
    assert opening["id"].startswith("call_")
    assert opening == {
        "index": 0,
        "id": opening["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    pieces = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:-2]]
    assert pieces == [
        [{"index": 0, "function": {"arguments": '{"city": '}}],
        [{"index": 0, "function": {"arguments": '"Paris"}'}}],
    ]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": []},
        {"tools": [{"type": "function"}]},
        {"tools": "get_weather"},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        {"tool_choice": {"type": "function", "function": {"name": "missing"}}},
    ],
)
def test_bad_tools_get_400(server: BackgroundServer, extra: dict[str, object]) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", json=_tool_request(**extra))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("streaming", [False, True])
def test_langchain_tool_round_trip(server: BackgroundServer, streaming: bool) -> None:
    llm = chat(server, streaming=streaming, stream_usage=True).bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    called = llm.invoke([question])
    assert isinstance(called, AIMessage)
    assert [(c["name"], c["args"]) for c in called.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert called.tool_calls[0]["id"] is not None and called.tool_calls[0]["id"].startswith("call_")
    assert called.response_metadata["finish_reason"] == "tool_calls"
    assert called.usage_metadata is not None and called.usage_metadata["output_tokens"] == 2

    result = get_weather.invoke(called.tool_calls[0])
    assert isinstance(result, ToolMessage) and result.content == "sunny and 21C in Paris"
    answer = llm.invoke([question, called, result])
    assert answer.content == "Echo: sunny and 21C in Paris"
    assert not answer.tool_calls
    assert answer.response_metadata["finish_reason"] == "stop"


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_defaults_and_run(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    openai_cli.add_arguments(parser)
    assert "default: 127.0.0.1" in parser.format_help()
    args = parser.parse_args(["--port", "9999", "--model", "m"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 9999, "m")

    calls: list[dict[str, object]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    assert openai_cli.run(args) == 0
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 9999
