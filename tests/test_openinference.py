"""GenAI / OpenLLMetry span attributes -> OpenInference, from the recorded fixtures of every convention.

Expected values follow the mapping table in shared/reference/arthur-engine-api.md, and are checked
against what OpenInference's own instrumentor wrote for the same call (openinference_chat.json).
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openinference.semconv.trace import (
    MessageAttributes,
    SpanAttributes,
    ToolCallAttributes,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext
from spanfixtures import load_spans

from otel_arthur import conventions
from otel_arthur.mapping import map_span
from otel_arthur.openinference import MAX_MESSAGES, openinference_attributes, span_kind
from otel_arthur.privacy import ContentPolicy, RecordFilter
from otel_arthur.redaction import Redactor

CONVERSATION = [
    ("system", "You are a helpful assistant. Answer in one sentence."),
    ("user", "What is OpenTelemetry?"),
    ("assistant", "OpenTelemetry is an open standard for traces, metrics and logs."),
    ("user", "How does it help with LLM apps?"),
]
REPLY = "Echo: How does it help with LLM apps?"
# fixture -> (response model, user.id): the GenAI semconv recording carries no user id
GENERATIONS = {
    "openllmetry_chat": ("gpt-4o-mini-local", "user-1"),
    "openllmetry_stream": ("gpt-4o-mini", "user-1"),  # streaming: the response model is the request's
    "openllmetry_chain": ("gpt-4o-mini-local", "user-1"),
    "openllmetry_legacy": ("gpt-4o-mini-local", "user-1"),
    "genai_semconv": ("gpt-4o-mini-local", None),
}
MESSAGE_KEY = re.compile(r"^llm\.(input|output)_messages\.\d+\.")


def same(text):
    return text


def attributes_of(name, span_name=None, index=-1):
    spans = [s for s in load_spans(name) if span_name is None or s.name == span_name]
    return dict(spans[index].attributes)


def translate(attributes, **hooks):
    hooks.setdefault("text", same)
    return openinference_attributes(attributes, **hooks)


def messages_of(added):
    return {k: v for k, v in added.items() if MESSAGE_KEY.match(k)}


@pytest.mark.parametrize("fixture", sorted(GENERATIONS))
def test_generations_of_every_convention_follow_the_table(fixture):
    model, user = GENERATIONS[fixture]
    attributes = attributes_of(fixture, "ChatOpenAI.chat" if fixture == "openllmetry_chain" else None)
    added = translate(attributes)

    assert span_kind(attributes) == added[SpanAttributes.OPENINFERENCE_SPAN_KIND] == "LLM"
    assert added[SpanAttributes.LLM_MODEL_NAME] == model
    assert added[SpanAttributes.LLM_PROVIDER] == added[SpanAttributes.LLM_SYSTEM] == "openai"
    assert (added[SpanAttributes.LLM_TOKEN_COUNT_PROMPT], added[SpanAttributes.LLM_TOKEN_COUNT_COMPLETION],
            added[SpanAttributes.LLM_TOKEN_COUNT_TOTAL]) == (29, 8, 37)  # total summed where the span has none
    assert json.loads(added[SpanAttributes.LLM_INVOCATION_PARAMETERS]) == {"model": "gpt-4o-mini", "temperature": 0.1}
    for i, (role, content) in enumerate(CONVERSATION):
        assert added[f"llm.input_messages.{i}.message.role"] == role
        assert added[f"llm.input_messages.{i}.message.content"] == content
    assert "llm.input_messages.4.message.role" not in added
    assert added["llm.output_messages.0.message.role"] == "assistant"
    assert added["llm.output_messages.0.message.content"] == REPLY
    assert added[SpanAttributes.INPUT_VALUE] == CONVERSATION[-1][1]  # the last user message
    assert added[SpanAttributes.INPUT_MIME_TYPE] == "text/plain"
    assert (added[SpanAttributes.OUTPUT_VALUE], added[SpanAttributes.OUTPUT_MIME_TYPE]) == (REPLY, "text/plain")
    assert added[SpanAttributes.SESSION_ID] == "sess-1"
    assert added.get(SpanAttributes.USER_ID) == user


@pytest.mark.parametrize("fixture", sorted(GENERATIONS))
def test_messages_match_what_openinference_itself_records(fixture):
    theirs = attributes_of("openinference_chat")
    attributes = attributes_of(fixture, "ChatOpenAI.chat" if fixture == "openllmetry_chain" else None)
    assert messages_of(translate(attributes)) == messages_of(theirs)


@pytest.mark.parametrize("fixture", ["openinference_chat", "openinference_stream"])
def test_openinference_spans_pass_unchanged(fixture):
    attributes = attributes_of(fixture)
    assert span_kind(attributes) == "LLM"
    assert translate(attributes) == {}
    assert translate({"openinference.span.kind": "CHAIN", "gen_ai.operation.name": "chat"}) == {}


@pytest.mark.parametrize("fixture", ["genai_semconv", "openinference_chat", "openinference_stream",
                                     "openllmetry_chain", "openllmetry_chat", "openllmetry_error",
                                     "openllmetry_legacy", "openllmetry_stream"])
def test_the_translation_only_adds(fixture):
    for span in load_spans(fixture):
        added = translate(span.attributes)
        assert not set(added) & set(span.attributes)
        assert all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in added.values())


def test_chain_spans_become_chains_with_their_json_input_and_output():
    spans = {s.name: dict(s.attributes) for s in load_spans("openllmetry_chain")}
    for name in ("RunnableSequence.workflow", "execute_task ChatPromptTemplate"):
        attributes = spans[name]
        added = translate(attributes)
        # the workflow says invoke_agent too: OpenLLMetry's own span kind (workflow) decides
        assert added[SpanAttributes.OPENINFERENCE_SPAN_KIND] == "CHAIN"
        assert added[SpanAttributes.INPUT_VALUE] == attributes["traceloop.entity.input"]
        assert added[SpanAttributes.OUTPUT_VALUE] == attributes["traceloop.entity.output"]
        assert added[SpanAttributes.INPUT_MIME_TYPE] == added[SpanAttributes.OUTPUT_MIME_TYPE] == "application/json"
        assert (added[SpanAttributes.SESSION_ID], added[SpanAttributes.USER_ID]) == ("sess-1", "user-1")
        assert SpanAttributes.LLM_MODEL_NAME not in added and not messages_of(added)


def test_failed_call_keeps_its_input_and_invents_no_output():
    added = translate(attributes_of("openllmetry_error"))
    assert added["llm.input_messages.3.message.content"].endswith("[error 500]")
    assert added[SpanAttributes.INPUT_VALUE].endswith("[error 500]")
    assert added[SpanAttributes.LLM_MODEL_NAME] == "gpt-4o-mini"
    for absent in (SpanAttributes.OUTPUT_VALUE, "llm.output_messages.0.message.role",
                   SpanAttributes.LLM_TOKEN_COUNT_PROMPT, SpanAttributes.LLM_TOKEN_COUNT_TOTAL):
        assert absent not in added


def test_genai_without_content_gets_kind_usage_and_session_only():
    added = translate(attributes_of("genai_semconv", index=0))
    assert added[SpanAttributes.OPENINFERENCE_SPAN_KIND] == "LLM"
    assert added[SpanAttributes.LLM_TOKEN_COUNT_TOTAL] == 37
    assert added[SpanAttributes.SESSION_ID] == "sess-1"
    assert not messages_of(added) and SpanAttributes.INPUT_VALUE not in added


@pytest.mark.parametrize("attributes, kind", [
    ({}, None),
    ({"http.method": "POST", "url.full": "http://x"}, None),
    ({"db.system": "sqlite"}, None),
    ({"gen_ai.operation.name": "llm_request"}, None),
    ({"traceloop.span.kind": "unknown"}, None),
    ({"gen_ai.operation.name": ("chat",)}, None),
    ({"gen_ai.operation.name": "text_completion"}, "LLM"),
    ({"gen_ai.operation.name": "generate_content"}, "LLM"),
    ({"llm.request.type": "completion"}, "LLM"),
    ({"llm.request.type": "embedding"}, "EMBEDDING"),
    ({"llm.request.type": "rerank"}, "RERANKER"),
    ({"gen_ai.operation.name": "execute_tool"}, "TOOL"),
    ({"traceloop.span.kind": "tool"}, "TOOL"),
    ({"gen_ai.operation.name": "invoke_agent"}, "AGENT"),
    ({"gen_ai.operation.name": "create_agent"}, "AGENT"),
    ({"traceloop.span.kind": "agent", "gen_ai.operation.name": "invoke_agent"}, "AGENT"),
    ({"traceloop.span.kind": "task"}, "CHAIN"),
    ({"gen_ai.operation.name": "invoke_workflow"}, "CHAIN"),
    ({"gen_ai.operation.name": "embeddings"}, "EMBEDDING"),
    ({"gen_ai.operation.name": "retrieval"}, "RETRIEVER"),
    ({"openinference.span.kind": "RETRIEVER"}, "RETRIEVER"),
])
def test_span_kind_of_each_convention(attributes, kind):
    assert span_kind(attributes) == kind
    added = translate(attributes)
    assert added.get(SpanAttributes.OPENINFERENCE_SPAN_KIND) == (None if "openinference.span.kind" in attributes
                                                                  else kind)


def test_tool_span_input_and_output_from_genai_tool_call_attributes():
    added = translate({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.call.arguments": '{"city": "Oslo"}',
                       "gen_ai.tool.call.result": "sunny"})
    assert added[SpanAttributes.OPENINFERENCE_SPAN_KIND] == "TOOL"
    assert (added[SpanAttributes.INPUT_VALUE], added[SpanAttributes.INPUT_MIME_TYPE]) == ('{"city": "Oslo"}',
                                                                                          "application/json")
    assert (added[SpanAttributes.OUTPUT_VALUE], added[SpanAttributes.OUTPUT_MIME_TYPE]) == ("sunny", "text/plain")


def test_tool_calls_from_openllmetry_json_parts_and_tool_role_messages():
    added = translate({
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": json.dumps([
            {"role": "user", "parts": [{"type": "text", "content": "Weather in Oslo and Rome?"}]},
            {"role": "assistant", "parts": [
                {"type": "tool_call", "id": "call_1", "name": "weather", "arguments": {"city": "Oslo"}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "sunny"}]},
        ]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "finish_reason": "tool_call", "parts": [
            {"type": "tool_call", "id": "call_2", "name": "weather", "arguments": '{"city": "Rome"}'},
            {"type": "tool_call", "id": "call_3", "name": "clock"},
        ]}]),
    })
    calls = "llm.input_messages.1.message.tool_calls"
    assert added[f"{calls}.0.tool_call.function.name"] == "weather"
    assert json.loads(added[f"{calls}.0.tool_call.function.arguments"]) == {"city": "Oslo"}
    assert added[f"{calls}.0.tool_call.id"] == "call_1"
    assert "llm.input_messages.1.message.content" not in added  # a call alone has no text
    assert added["llm.input_messages.2.message.role"] == "tool"
    assert added["llm.input_messages.2.message.content"] == "sunny"
    assert added["llm.input_messages.2.message.tool_call_id"] == "call_1"
    assert added[SpanAttributes.INPUT_VALUE] == "Weather in Oslo and Rome?"
    calls = "llm.output_messages.0.message.tool_calls"
    assert added[f"{calls}.0.tool_call.function.arguments"] == '{"city": "Rome"}'
    assert added[f"{calls}.1.tool_call.function.name"] == "clock"
    assert f"{calls}.1.tool_call.function.arguments" not in added
    assert SpanAttributes.OUTPUT_VALUE not in added  # the reply is calls, no text


def test_tool_calls_from_legacy_indexed_attributes():
    added = translate({
        "llm.request.type": "chat",
        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "Weather in Oslo?",
        "gen_ai.prompt.1.role": "assistant",
        "gen_ai.prompt.1.tool_calls.0.id": "call_1", "gen_ai.prompt.1.tool_calls.0.name": "weather",
        "gen_ai.prompt.1.tool_calls.0.arguments": '{"city": "Oslo"}',
        "gen_ai.prompt.2.role": "tool", "gen_ai.prompt.2.content": "sunny", "gen_ai.prompt.2.tool_call_id": "call_1",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.tool_calls.0.name": "weather", "gen_ai.completion.0.tool_calls.0.arguments": "{}",
        "gen_ai.completion.0.tool_calls.1.name": "clock", "gen_ai.completion.0.tool_calls.1.arguments": "{}",
    })
    assert added["llm.input_messages.1.message.tool_calls.0.tool_call.function.name"] == "weather"
    assert added["llm.input_messages.1.message.tool_calls.0.tool_call.function.arguments"] == '{"city": "Oslo"}'
    assert added["llm.input_messages.1.message.tool_calls.0.tool_call.id"] == "call_1"
    assert added["llm.input_messages.2.message.tool_call_id"] == "call_1"
    assert added["llm.output_messages.0.message.tool_calls.1.tool_call.function.name"] == "clock"
    assert "llm.output_messages.1.message.role" not in added


def test_every_attribute_name_comes_from_openinference_semantic_conventions():
    library = {v for v in vars(SpanAttributes).values() if isinstance(v, str)}
    message_keys = {v for v in vars(MessageAttributes).values() if isinstance(v, str)}
    tool_call_keys = {v for v in vars(ToolCallAttributes).values() if isinstance(v, str)}
    # the tool-call test's span, for the indexed names below a message
    written = set(translate({
        "gen_ai.operation.name": "chat", "traceloop.association.properties.user_id": "u",
        "gen_ai.input.messages": json.dumps([{"role": "tool", "parts": [
            {"type": "tool_call_response", "id": "c", "response": "r"}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
            {"type": "text", "content": "t"}, {"type": "tool_call", "id": "c", "name": "n", "arguments": "{}"}]}]),
    }))
    for fixture in GENERATIONS:
        written |= set(translate(attributes_of(fixture)))
    written |= set(translate(attributes_of("openllmetry_chain", index=0)))
    message = re.compile(r"^(?P<prefix>llm\.(?:input|output)_messages)\.\d+\.(?P<key>message\.[a-z_]+)"
                         r"(?:\.\d+\.(?P<call>.+))?$")
    for name in written:
        match = message.match(name)
        if match is None:
            assert name in library, name
            continue
        assert match["prefix"] in library, name
        assert match["key"] in message_keys, name
        assert match["call"] is None or match["call"] in tool_call_keys, name
    assert {"llm.input_messages.0.message.tool_call_id",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments"} <= written


def test_the_names_read_from_openinference_spans_are_the_library_s():
    ours = conventions.OpenInference
    for name, theirs in [("SPAN_KIND", "OPENINFERENCE_SPAN_KIND"), ("INPUT_MESSAGES_PREFIX", "LLM_INPUT_MESSAGES"),
                         ("OUTPUT_MESSAGES_PREFIX", "LLM_OUTPUT_MESSAGES"), ("MODEL_NAME", "LLM_MODEL_NAME"),
                         ("PROVIDER", "LLM_PROVIDER"), ("INVOCATION_PARAMETERS", "LLM_INVOCATION_PARAMETERS"),
                         ("TOKEN_COUNT_PROMPT", "LLM_TOKEN_COUNT_PROMPT"),
                         ("TOKEN_COUNT_COMPLETION", "LLM_TOKEN_COUNT_COMPLETION"),
                         ("TOKEN_COUNT_TOTAL", "LLM_TOKEN_COUNT_TOTAL"), ("FINISH_REASON", "LLM_FINISH_REASON"),
                         ("METADATA", "METADATA"), ("SESSION_ID", "SESSION_ID"), ("USER_ID", "USER_ID")]:
        assert getattr(ours, name) == getattr(SpanAttributes, theirs)
    assert conventions.OPENINFERENCE.tool_call_keys == conventions.ToolCallKeys(
        ToolCallAttributes.TOOL_CALL_FUNCTION_NAME, ToolCallAttributes.TOOL_CALL_FUNCTION_ARGUMENTS_JSON,
        ToolCallAttributes.TOOL_CALL_ID)


# --- privacy --------------------------------------------------------------------------------------

TOOL_CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.input.messages": json.dumps([
        {"role": "user", "parts": [{"type": "text", "content": "mail bob@example.com"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "name": "send", "arguments": {"to": "bob@example.com"}}]},
    ]),
    "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [{"type": "text",
                                                                           "content": "sent to bob@example.com"}]}]),
}


def test_a_hook_returning_none_withholds_every_text_but_keeps_the_rest():
    added = translate(attributes_of("openllmetry_chat"), text=lambda text: None)
    assert added["llm.input_messages.0.message.role"] == "system"
    assert added[SpanAttributes.LLM_TOKEN_COUNT_TOTAL] == 37 and added[SpanAttributes.SESSION_ID] == "sess-1"
    assert not [k for k in added if k.endswith((".content", ".arguments")) or k.startswith(("input.", "output."))]
    added = translate(TOOL_CHAT, text=lambda text: None)
    assert added["llm.input_messages.1.message.tool_calls.0.tool_call.function.name"] == "send"
    assert "llm.input_messages.1.message.tool_calls.0.tool_call.function.arguments" not in added


def test_the_hook_sees_every_content_text_and_output_text_the_outputs():
    seen = []
    added = translate(TOOL_CHAT, text=lambda t: seen.append(t) or t.replace("bob@example.com", "[REDACTED:email]"),
                      output_text=lambda t: "out")
    assert added["llm.input_messages.0.message.content"] == "mail [REDACTED:email]"
    arguments = added["llm.input_messages.1.message.tool_calls.0.tool_call.function.arguments"]
    assert arguments == '{"to": "[REDACTED:email]"}'
    assert added[SpanAttributes.INPUT_VALUE] == "mail [REDACTED:email]"
    assert added["llm.output_messages.0.message.content"] == added[SpanAttributes.OUTPUT_VALUE] == "out"
    assert "sent to bob@example.com" not in seen


def test_record_filter_hooks_treat_texts_exactly_as_records():
    attributes = attributes_of("openllmetry_chat")
    attributes["gen_ai.output.messages"] = json.dumps([{"role": "assistant", "parts": [
        {"type": "text", "content": "write to bob@example.com " + "é" * 200}]}])
    record_filter = RecordFilter(ContentPolicy(), Redactor(["email"]), max_text_bytes=64)
    added = translate(attributes, text=record_filter.text_hook(output=False),
                      output_text=record_filter.text_hook(output=True))
    span = ReadableSpan(name="chat", context=SpanContext(1, 2, is_remote=False), attributes=attributes, start_time=1)
    record = record_filter(map_span(span))
    assert added["llm.output_messages.0.message.content"] == added[SpanAttributes.OUTPUT_VALUE] \
        == record.fields["completion"]
    assert record.fields["completion"].startswith("write to [REDACTED:email] é") and record.fields["truncated"]

    prompt_withheld = RecordFilter(ContentPolicy(send_prompt=False), None, max_text_bytes=65536)
    added = translate(attributes_of("openllmetry_chat"), text=prompt_withheld.text_hook(output=False),
                      output_text=prompt_withheld.text_hook(output=True))
    assert "llm.input_messages.1.message.content" not in added and SpanAttributes.INPUT_VALUE not in added
    assert added["llm.output_messages.0.message.content"] == REPLY


def test_a_json_value_the_hook_changed_is_no_longer_called_json():
    attributes = attributes_of("openllmetry_chain", index=0)
    added = translate(attributes, text=lambda t: t[:10] + " …[truncated]")
    assert added[SpanAttributes.INPUT_MIME_TYPE] == "text/plain"
    assert translate(attributes)[SpanAttributes.INPUT_MIME_TYPE] == "application/json"


# --- hostile values -------------------------------------------------------------------------------

def test_hostile_values_never_raise_and_translate_what_they_can():
    deep = "[" * 100_000
    added = translate({
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": deep,
        "gen_ai.system_instructions": b"\xff bytes",
        "gen_ai.output.messages": json.dumps([7, None, {"role": ["x"], "parts": [
            {"type": "text", "content": "bad \ud800 text"},
            {"type": "tool_call", "name": {"a": 1}, "arguments": [[[]]]}, "junk"]}]),
        "gen_ai.response.model": b"model",
        "gen_ai.request.model": "m\ud800",
        "gen_ai.usage.input_tokens": "29", "gen_ai.usage.output_tokens": 8.0, "gen_ai.usage.total_tokens": True,
        "gen_ai.request.temperature": float("nan"), "gen_ai.request.stop_sequences": ("a", b"b", None),
        "gen_ai.conversation.id": 42, "traceloop.association.properties.user_id": ["u"],
    })
    assert added["llm.output_messages.0.message.role"] == "unknown"
    assert added["llm.output_messages.0.message.content"] == "bad ? text"
    assert added["llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments"] == "[[[]]]"
    assert added[SpanAttributes.LLM_MODEL_NAME] == "m?"
    assert added[SpanAttributes.LLM_TOKEN_COUNT_COMPLETION] == 8
    assert SpanAttributes.LLM_TOKEN_COUNT_PROMPT not in added and SpanAttributes.LLM_TOKEN_COUNT_TOTAL not in added
    assert json.loads(added[SpanAttributes.LLM_INVOCATION_PARAMETERS]) == {"model": "m?", "stop": ["a"]}
    assert added[SpanAttributes.SESSION_ID] == "42" and SpanAttributes.USER_ID not in added
    assert not [k for k in added if k.startswith("llm.input_messages")]
    for value in added.values():
        str(value).encode("utf-8")


def test_a_huge_history_is_bounded_to_its_newest_messages():
    history = [{"role": "user", "parts": [{"type": "text", "content": f"m{i}"}]} for i in range(10 * MAX_MESSAGES)]
    added = translate({"gen_ai.operation.name": "chat", "gen_ai.input.messages": json.dumps(history)})
    assert len([k for k in added if k.endswith(".message.role")]) == MAX_MESSAGES
    assert added["llm.input_messages.0.message.content"] == f"m{9 * MAX_MESSAGES}"
    assert added[SpanAttributes.INPUT_VALUE] == f"m{10 * MAX_MESSAGES - 1}"


_KEYS = ["gen_ai.operation.name", "llm.request.type", "traceloop.span.kind", "gen_ai.input.messages",
         "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt.0.role", "gen_ai.prompt.0.content",
         "gen_ai.prompt.0.tool_calls.0.name", "gen_ai.completion.0.content", "gen_ai.request.model",
         "gen_ai.usage.input_tokens", "gen_ai.request.stop_sequences", "traceloop.entity.input",
         "gen_ai.conversation.id"]
_SCALARS = st.one_of(st.text(), st.binary(), st.integers(), st.floats(), st.booleans(), st.none(),
                     st.sampled_from(["chat", "execute_tool", "workflow", "[", "[{}]", '[{"parts": 1}]']))
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(
                         st.sampled_from(["role", "parts", "type", "content", "name", "arguments", "id", "response"])
                         | st.text(), children, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _SCALARS | _JSON.map(json.dumps) | st.lists(_SCALARS, max_size=3)))
def test_any_attributes_translate_without_raising_into_valid_values(attributes):
    added = translate(attributes)
    assert not set(added) & set(attributes)
    for value in added.values():
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool)
        str(value).encode("utf-8")


# --- cost -----------------------------------------------------------------------------------------

def test_a_priced_generation_gets_the_cost_its_v3_record_carries_unless_it_has_one():
    [span] = [s for s in load_spans("openllmetry_stream") if map_span(s) is not None]  # gpt-4o-mini
    added = translate(dict(span.attributes), start_time_ns=span.start_time)
    assert added[SpanAttributes.LLM_COST_TOTAL] == map_span(span).fields["cost_usd"] > 0
    assert SpanAttributes.LLM_COST_TOTAL not in translate({**span.attributes, SpanAttributes.LLM_COST_TOTAL: 0.5})
    for fixture in ("openllmetry_chat", "genai_semconv", "openllmetry_legacy", "openllmetry_error"):  # unpriced
        for attributes in (dict(s.attributes) for s in load_spans(fixture)):
            assert SpanAttributes.LLM_COST_TOTAL not in translate(attributes)
