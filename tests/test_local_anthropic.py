"""The local endpoint's Anthropic Messages API, driven by the real ``anthropic`` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from otel_arthur.local import openai
from otel_arthur.local.anthropic import DEFAULT_MODEL, openai_messages
from otel_arthur.local.runner import BackgroundServer

SYSTEM = "You are terse."
HISTORY = [
    {"role": "user", "content": "What is OpenTelemetry?"},
    {"role": "assistant", "content": [{"type": "text", "text": "A vendor-neutral observability framework."}]},
    {"role": "user", "content": [{"type": "text", "text": "Does it trace"}, {"type": "text", "text": "LLM calls?"}]},
]
WEATHER_TOOL = {"name": "get_weather", "description": "The weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WEATHER_QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(openai.create_app()) as running:
        yield running


@pytest.fixture
def client(server: BackgroundServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def test_the_reply_and_usage_follow_the_openai_endpoints_rules(client):
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, system=SYSTEM, messages=HISTORY)
    expected = openai.complete([{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": "What is OpenTelemetry?"},
                                {"role": "assistant", "content": "A vendor-neutral observability framework."},
                                {"role": "user", "content": "Does it trace LLM calls?"}])
    assert [block.text for block in message.content] == ["Echo: Does it trace LLM calls?"] == [expected.content]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (expected.prompt_tokens, 6)
    assert (message.stop_reason, message.model, message.role) == ("end_turn", DEFAULT_MODEL, "assistant")
    assert message.id.startswith("msg_local")


def test_streaming_sends_the_same_message_word_by_word(client):
    plain = client.messages.create(model="m", max_tokens=50, system=SYSTEM, messages=HISTORY)
    with client.messages.stream(model="m", max_tokens=50, system=SYSTEM, messages=HISTORY) as stream:
        deltas = list(stream.text_stream)
        streamed = stream.get_final_message()
    assert deltas == ["Echo: ", "Does ", "it ", "trace ", "LLM ", "calls?"]
    assert streamed.content[0].text == plain.content[0].text
    assert streamed.usage.model_dump() == plain.usage.model_dump()
    assert streamed.stop_reason == "end_turn"


def test_stream_events_are_anthropics(client):
    events = list(client.messages.create(model="m", max_tokens=2, messages=HISTORY[:1], stream=True))
    assert [e.type for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert (events[0].message.usage.input_tokens, events[0].message.usage.output_tokens) == (3, 1)
    assert (events[-2].delta.stop_reason, events[-2].usage.output_tokens) == ("max_tokens", 2)


def test_max_tokens_cuts_the_reply(client):
    message = client.messages.create(model="m", max_tokens=2, messages=HISTORY[:1])
    assert (message.content[0].text, message.stop_reason, message.usage.output_tokens) == \
        ("Echo: What", "max_tokens", 2)


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
def test_a_tool_is_called_and_its_result_echoed(client, streaming):
    def create(messages):
        if not streaming:
            return client.messages.create(model="m", max_tokens=50, tools=[WEATHER_TOOL], messages=messages)
        with client.messages.stream(model="m", max_tokens=50, tools=[WEATHER_TOOL], messages=messages) as stream:
            return stream.get_final_message()

    call = create([WEATHER_QUESTION])
    [block] = call.content
    assert (block.type, block.name, block.input, call.stop_reason) == ("tool_use", "get_weather", {"city": "Paris"},
                                                                     "tool_use")
    assert block.id.startswith("toolu_") and call.usage.output_tokens == 2  # the words of {"city": "Paris"}
    answer = create([WEATHER_QUESTION, {"role": "assistant", "content": [block.model_dump(exclude_none=True)]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                                   "content": "sunny and 21C in Paris"}]}])
    assert (answer.content[0].text, answer.stop_reason) == ("Echo: sunny and 21C in Paris", "end_turn")


def test_tool_results_become_tool_messages():
    chat = openai_messages({"system": [{"type": "text", "text": SYSTEM}], "messages": [
        WEATHER_QUESTION,
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "sunny"}]}]},
    ]})
    assert chat == [{"role": "system", "content": SYSTEM}, WEATHER_QUESTION,
                    {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"}]


def test_errors_on_demand_have_anthropics_shape(client):
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "boom [error 429]"}])
    assert raised.value.body == {"type": "error", "error": {"type": "rate_limit_error",
                                                            "message": "error 429 requested by the prompt"}}


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},  # max_tokens is required
    {"model": "m", "max_tokens": 5, "messages": "hi"},
    {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]},
    {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]},
])
def test_malformed_requests_get_400(server, body):
    response = httpx.post(f"{server.url}/v1/messages", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
