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
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from otel_arthur.local import openai_cli
from otel_arthur.local.openai import DEFAULT_MODEL, complete, create_app, error_status, reply_tokens
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
