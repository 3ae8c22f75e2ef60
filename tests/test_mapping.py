"""span -> record, from real spans recorded with each convention (tests/fixtures/spans)."""

import json
from datetime import datetime, timezone

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode
from spanfixtures import load_spans

from otel_arthur.mapping import (
    classify,
    map_span,
    partner_inference_id,
    render_messages,
)

PROMPT = ("System: You are a helpful assistant. Answer in one sentence.\n"
          "Human: What is OpenTelemetry?\n"
          "AI: OpenTelemetry is an open standard for traces, metrics and logs.\n"
          "Human: How does it help with LLM apps?")
COMPLETION = "Echo: How does it help with LLM apps?"
USAGE = {"prompt_tokens": 29, "completion_tokens": 8, "total_tokens": 37}


def generations(name):
    spans = load_spans(name)
    return [(span, record) for span, record in ((s, map_span(s)) for s in spans) if record is not None]


@pytest.mark.parametrize("fixture, has_user", [
    ("openllmetry_chat", True),
    ("openllmetry_stream", True),
    ("openllmetry_chain", True),
    ("openllmetry_legacy", True),
    ("openinference_chat", True),
    ("openinference_stream", True),
])
def test_each_convention_yields_the_same_record(fixture, has_user):
    [(span, record)] = generations(fixture)
    fields = record.fields
    assert fields["prompt"] == PROMPT
    assert fields["completion"] == COMPLETION
    assert {k: fields[k] for k in USAGE} == USAGE
    assert fields["finish_reason"] == "stop"
    assert fields["temperature"] == 0.1
    assert fields["provider"] == "openai"
    assert fields["model"].startswith("gpt-4o-mini")
    assert fields["session_id"] == "sess-1"
    assert fields.get("user_id") == ("user-1" if has_user else None)
    assert fields["service_name"] == "fixture-chat"
    assert fields["duration"] == (span.end_time - span.start_time) / 1e9 > 0
    assert fields["trace_id"] == f"{span.context.trace_id:032x}"
    assert fields["span_id"] == f"{span.context.span_id:016x}"
    assert record.partner_inference_id == f"{fields['trace_id']}-{fields['span_id']}"
    assert datetime.fromisoformat(record.inference_timestamp).timestamp() == pytest.approx(span.start_time / 1e9)
    assert "error" not in fields


def test_non_streaming_keeps_the_response_model():
    [(_, record)] = generations("openllmetry_chat")
    assert record.fields["model"] == "gpt-4o-mini-local"  # the server's answer, not the request's


def test_chain_spans_are_not_generations():
    spans = load_spans("openllmetry_chain")
    mapped = {span.name: map_span(span) for span in spans}
    assert mapped["RunnableSequence.workflow"] is None
    assert mapped["execute_task ChatPromptTemplate"] is None
    assert mapped["ChatOpenAI.chat"] is not None


def test_failed_call_carries_the_error_and_no_invented_usage():
    [(_, record)] = generations("openllmetry_error")
    assert "500" in record.fields["error"]
    assert record.fields["prompt"].endswith("[error 500]")
    for absent in ("completion", "prompt_tokens", "completion_tokens", "total_tokens", "finish_reason"):
        assert absent not in record.fields


def test_genai_semconv_with_and_without_content():
    without, with_content = (record for _, record in generations("genai_semconv"))
    assert "prompt" not in without.fields and "completion" not in without.fields
    assert without.fields["prompt_tokens"] == 29 and without.fields["finish_reason"] == "stop"
    assert without.fields["session_id"] == "sess-1"
    assert with_content.fields["prompt"] == PROMPT and with_content.fields["completion"] == COMPLETION


def _span(attributes, status=Status(StatusCode.UNSET)):
    return ReadableSpan(
        name="span", context=SpanContext(0xABC, 0xDEF, is_remote=False), attributes=attributes,
        start_time=1_700_000_000_000_000_000, end_time=1_700_000_001_500_000_000, status=status,
        resource=Resource.create({"service.name": "svc"}),
    )


@pytest.mark.parametrize("attributes", [
    {},
    {"http.method": "POST", "url.full": "http://x"},
    {"db.system": "sqlite"},
    {"gen_ai.operation.name": "invoke_agent"},
    {"openinference.span.kind": "CHAIN"},
    {"llm.request.type": "embedding"},
])
def test_other_spans_are_ignored(attributes):
    assert classify(attributes) is None
    assert map_span(_span(attributes)) is None


def test_unknown_content_is_replaced_not_fatal():
    record = map_span(_span({
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "bad \\ud800 text"}]}]',
        "gen_ai.output.messages": "not json",
    }))
    assert record.fields["prompt"] == "Human: bad ? text"
    record.fields["prompt"].encode("utf-8")
    assert "completion" not in record.fields
    assert record.fields["duration"] == 1.5
    assert record.inference_timestamp == "2023-11-14T22:13:20+00:00"


@pytest.mark.parametrize("start_ns", [
    1_700_000_000_000_000_000, 1_700_000_000_000_000_001, 1_700_000_000_000_000_500, 1_700_000_000_000_001_500,
    1_700_000_000_999_999_499, 1_700_000_000_999_999_500, 1_700_000_000_999_999_999, 1_700_000_000_123_456_789,
    1, 999_999_999,
])
def test_timestamp_is_the_start_time_as_datetime_writes_it(start_ns):
    """Written from a per-second cache: the same text, the microseconds rounded half to even as
    ``fromtimestamp`` rounds them (up into the next second too)."""
    span = ReadableSpan(name="span", context=SpanContext(0xABC, 0xDEF, is_remote=False),
                        attributes={"gen_ai.operation.name": "chat"}, start_time=start_ns, end_time=start_ns)
    expected = datetime.fromtimestamp(start_ns / 1e9, tz=timezone.utc).isoformat()
    assert map_span(span).inference_timestamp == expected
    assert map_span(span).inference_timestamp == expected  # from the cache


@pytest.mark.parametrize(("message", "prompt"), [
    ({"role": "user", "parts": [{"type": "text", "content": "hi"}]}, "Human: hi"),
    ({"role": "user", "content": "hi"}, "Human: hi"),
    ({"role": "user", "parts": None, "content": "hi"}, "Human: "),
    ({"role": "", "parts": [{"content": "hi"}]}, "unknown: hi"),
    ({"role": 7, "parts": [{"type": "text", "content": {"a": 1}}]}, '7: {"a": 1}'),
])
def test_json_messages_read_alike_one_text_part_or_not(message, prompt):
    record = map_span(_span({"gen_ai.operation.name": "chat", "gen_ai.input.messages": json.dumps([message])}))
    assert record.fields["prompt"] == prompt


def test_identity_is_deterministic():
    assert partner_inference_id(0xABC, 0xDEF) == partner_inference_id(0xABC, 0xDEF)
    assert partner_inference_id(0xABC, 0xDEF) != partner_inference_id(0xABC, 0xDEE)
    assert map_span(_span({"llm.request.type": "chat"})).partner_inference_id == \
        "00000000000000000000000000000abc-0000000000000def"


def test_rendering_matches_get_buffer_string():
    from langchain_core.messages import (
        AIMessage,
        HumanMessage,
        SystemMessage,
        get_buffer_string,
    )

    history = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello"), HumanMessage("bye")]
    ours = render_messages([("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "bye")])
    assert ours == get_buffer_string(history)


def test_over_long_texts_are_cut_at_a_character_boundary_and_flagged():
    from otel_arthur.mapping import TRUNCATION_MARKER, InferenceRecord, limit_text

    prompt, completion = "é" * 100, "short"  # 200 bytes of UTF-8, two per character
    record = InferenceRecord("id", "2024-05-01T12:00:00+00:00", {"prompt": prompt, "completion": completion})
    assert limit_text(record, 200) is record
    cut = limit_text(record, 64)
    marker = len(TRUNCATION_MARKER.encode("utf-8"))
    assert cut.fields["prompt"] == "é" * ((64 - marker) // 2) + TRUNCATION_MARKER  # 49 bytes of room: 24 whole é
    assert len(cut.fields["prompt"].encode("utf-8")) <= 64
    assert cut.fields["completion"] == completion and cut.fields["truncated"] is True
    assert record.fields == {"prompt": prompt, "completion": completion}  # the original is left alone
    assert limit_text(record, 3).fields["prompt"] == "é"  # no room for the marker: the text alone, still whole


def test_json_nested_past_the_recursion_limit_is_left_out_not_fatal():
    deep = "[" * 100_000  # json.loads raises RecursionError, not ValueError, on this
    record = map_span(_span({
        "gen_ai.operation.name": "chat", "gen_ai.input.messages": deep, "gen_ai.output.messages": deep,
        "gen_ai.system_instructions": deep, "gen_ai.usage.input_tokens": 3,
    }))
    assert "prompt" not in record.fields and "completion" not in record.fields
    assert record.fields["prompt_tokens"] == 3


def test_an_unhashable_marker_value_marks_nothing():
    assert classify({"gen_ai.operation.name": ["chat"]}) is None
    assert classify({"gen_ai.operation.name": ["chat"], "llm.request.type": "chat"}).name == "openllmetry-legacy"


def test_tool_calls_and_results_are_part_of_the_prompt():
    record = map_span(_span({
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": json.dumps([
            {"role": "user", "parts": [{"type": "text", "content": "weather?"}]},
            {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "weather", "arguments": {}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "sunny"}]},
        ]),
    }))
    assert record.fields["prompt"] == "Human: weather?\nAI: weather({})\nTool: sunny"


WEATHER_PROMPT = "Human: What is the weather in Paris?"


@pytest.mark.parametrize("fixture, finish_reason", [
    ("openllmetry_tools", "tool_call"),  # OpenLLMetry >= 0.55 maps OpenAI's reason to the GenAI one
    ("openllmetry_legacy_tools", "tool_calls"),
    ("openinference_tools", "tool_calls"),
])
def test_a_tool_calling_turn_reads_the_same_in_every_convention(fixture, finish_reason):
    (_, asked), (_, answered) = generations(fixture)
    assert asked.fields["prompt"] == WEATHER_PROMPT
    assert asked.fields["completion"] == 'get_weather({"city": "Paris"})'
    assert asked.fields["finish_reason"] == finish_reason
    assert (asked.fields["prompt_tokens"], asked.fields["completion_tokens"]) == (6, 2)
    assert answered.fields["prompt"] == (f'{WEATHER_PROMPT}\nAI: get_weather({{"city": "Paris"}})\n'
                                         "Tool: sunny and 21C in Paris")
    assert answered.fields["completion"] == "Echo: sunny and 21C in Paris"
    assert answered.fields["finish_reason"] == "stop"


@pytest.mark.parametrize("fixture", ["openllmetry_image", "openllmetry_legacy_image", "openinference_image"])
def test_an_image_in_a_message_is_a_placeholder_in_every_convention(fixture):
    [(_, record)] = generations(fixture)
    assert record.fields["prompt"] == "Human: What is in this picture? [image]"
    assert record.fields["completion"] == "Echo: What is in this picture?"


def _genai_output(*parts):
    return map_span(_span({"gen_ai.operation.name": "chat", "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": list(parts)}])})).fields["completion"]


def test_a_completion_is_its_text_then_one_line_per_call_with_arguments_in_one_json_form():
    completion = _genai_output(
        {"type": "text", "content": "Checking both."},
        {"type": "tool_call", "id": "1", "name": "weather", "arguments": '{"city":"Z\\u00fcrich","days":2}'},
        {"type": "tool_call", "id": "2", "name": "weather", "arguments": {"city": "Rome", "days": 2}},
        {"type": "tool_call", "id": "3", "name": "clock"},
        {"type": "tool_call", "id": "4", "name": "search", "arguments": "not json {"},
        {"type": "tool_call", "id": "5", "arguments": "{}"},
    )
    assert completion == ('Checking both.\n'
                          'weather({"city": "Zürich", "days": 2})\n'
                          'weather({"city": "Rome", "days": 2})\n'
                          'clock()\n'
                          'search(not json {)\n'
                          '?({})')


def test_every_part_that_is_not_text_leaves_a_placeholder():
    completion = _genai_output(
        {"type": "text", "content": "Here:"},
        {"type": "uri", "modality": "image", "uri": "https://example.com/a.png"},
        {"type": "blob", "modality": "audio", "mime_type": "audio/wav", "content": "UklGR"},
        {"type": "file", "file_id": "f1"},
        {"type": "reasoning", "content": "the user wants pictures"},
        {"type": 7},
    )
    assert completion == "Here: [image] [audio] [file] [reasoning] [part]"
    assert _genai_output({"type": "blob", "modality": "video", "content": "AAAA"}) == "[video]"


def test_openinference_content_parts_and_legacy_content_blocks_leave_placeholders():
    openinference = map_span(_span({
        "openinference.span.kind": "LLM",
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.contents.0.message_content.type": "text",
        "llm.input_messages.0.message.contents.0.message_content.text": "Transcribe",
        "llm.input_messages.0.message.contents.1.message_content.type": "audio",
        "llm.input_messages.0.message.contents.2.message_content.type": "text",
        "llm.input_messages.0.message.contents.2.message_content.text": " please.",
    }))
    assert openinference.fields["prompt"] == "Human: Transcribe please. [audio]"
    blocks = [{"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
              {"type": "file", "file": {"file_id": "f1"}}]
    legacy = map_span(_span({
        "llm.request.type": "chat",
        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": json.dumps(blocks),
        "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": '[{"not": "blocks"}]',
    }))
    assert legacy.fields["prompt"] == 'Human: [audio] [file]\nHuman: [{"not": "blocks"}]'


def test_other_texts_are_cut_to_the_short_cap_and_flagged():
    from otel_arthur.mapping import (
        MAX_SHORT_TEXT_BYTES,
        TRUNCATION_MARKER,
        InferenceRecord,
        limit_text,
    )

    fields = {"prompt": "p" * 5_000, "model": "m" * 200_000, "error": "ü" * 600, "session_id": "s" * 1024,
              "prompt_tokens": 3}
    cut = limit_text(InferenceRecord("id", "2024-05-01T12:00:00+00:00", fields), 64 * 1024)
    assert cut.fields["prompt"] == fields["prompt"]  # under max_text_bytes
    for name in ("model", "error"):
        assert cut.fields[name].endswith(TRUNCATION_MARKER)
        assert len(cut.fields[name].encode("utf-8")) <= MAX_SHORT_TEXT_BYTES
    assert cut.fields["session_id"] == fields["session_id"] and cut.fields["prompt_tokens"] == 3  # exactly the cap
    assert cut.fields["truncated"] is True
    assert len(limit_text(cut, 100).fields["session_id"].encode("utf-8")) <= 100  # never over max_text_bytes


@pytest.mark.parametrize("attributes, expected", [
    ({"gen_ai.request.model": b"gpt-\xff"}, {"model": "gpt-\ufffd"}),
    ({"gen_ai.request.model": ("\ud800x", "other")}, {"model": "?x"}),
    ({"gen_ai.response.finish_reasons": (b"stop",)}, {"finish_reason": "stop"}),
    ({"gen_ai.response.finish_reasons": b"stop"}, {"finish_reason": "stop"}),
    ({"gen_ai.request.model": {"name": "gpt"}, "gen_ai.response.model": ({"a": 1},)}, {"model": None}),
    ({"gen_ai.request.temperature": float("nan"), "gen_ai.usage.input_tokens": 10**5000},
     {"temperature": None, "prompt_tokens": None}),
    ({"gen_ai.usage.input_tokens": float("inf"), "gen_ai.usage.output_tokens": 2**63 - 1},
     {"prompt_tokens": None, "completion_tokens": 2**63 - 1}),
    ({"gen_ai.input.messages": "[" * 100_000 + "]" * 100_000}, {"prompt": None}),
    ({"gen_ai.input.messages": '[{"role": "user", "parts": "hi"}]',
      "gen_ai.output.messages": '[{"role": "assistant", "parts": [], "finish_reason": ' + "[" * 500 + "]" * 500 + "}]"},
     {"prompt": "Human: hi", "finish_reason": None}),
], ids=["bytes", "surrogate-in-sequence", "bytes-in-sequence", "bytes-not-a-sequence", "mappings", "nan-huge-int",
        "inf-int64", "deep-json", "nested-json-finish-reason"])
def test_hostile_attribute_values_become_json_safe_fields(attributes, expected):
    from otel_arthur import spool

    record = map_span(_span({"gen_ai.operation.name": "chat", **attributes}))
    assert {name: record.fields.get(name) for name in expected} == expected
    assert spool.decode(spool.encode(record)) == record
    spool.encode(record).encode("utf-8")  # what the spool stores: no lone surrogate left


@pytest.mark.parametrize("attributes, expected", [
    ({"llm.input_messages.0.message.role": b"user", "llm.input_messages.0.message.content": b"hi \xff"},
     "Human: hi \ufffd"),
    ({"llm.input_messages.0.message.role": ("user",), "llm.input_messages.0.message.content": 10**5000},
     "Human: "),
    ({"llm.input_messages.0.message.role": {"r": 1}, "llm.input_messages.0.message.content": ("a\ud800", "b")},
     "unknown: a?"),
], ids=["bytes", "huge-int", "mapping-and-surrogate"])
def test_hostile_indexed_messages_become_text(attributes, expected):
    record = map_span(_span({"openinference.span.kind": "LLM", **attributes}))
    assert record.fields["prompt"] == expected


@pytest.mark.parametrize("marker", [{"kind": "LLM"}, ["chat"], ({"kind": "LLM"},)])  # unhashable
def test_a_marker_that_is_no_text_is_no_generation(marker):
    for convention in ("openinference.span.kind", "gen_ai.operation.name", "llm.request.type"):
        assert classify({convention: marker}) is None
        assert map_span(_span({convention: marker})) is None


def test_map_spans_costs_an_unmappable_span_only_itself():
    from otel_arthur.mapping import map_spans

    good = _span({"gen_ai.operation.name": "chat"})
    odd = ReadableSpan(name="odd", context=SpanContext(0xABC, 0x1, is_remote=False),
                       attributes={"gen_ai.operation.name": "chat"}, start_time=2**90)  # past year 9999
    mapped = map_spans([good, odd, _span({}), ValueError("span 'x' has an invalid id"), good])
    assert mapped.records == [map_span(good)] * 2
    assert mapped.unmappable == 2
    assert mapped.reason.startswith("span 'odd' cannot be mapped: ")  # the exception's type, never its text


@pytest.mark.parametrize(("usage", "total"), [
    ({"gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 5}, 12),  # the official instrumentation's
    ({"gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 5, "gen_ai.usage.total_tokens": 13}, 13),
    ({"gen_ai.usage.input_tokens": 7}, None),
    ({"gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 5.0}, None),
    ({"gen_ai.usage.input_tokens": True, "gen_ai.usage.output_tokens": 5}, None),
])
def test_total_tokens_are_the_sum_only_when_the_span_has_no_total_and_both_counts(usage, total):
    record = map_span(_span({"gen_ai.operation.name": "chat", **usage}))
    assert record.fields.get("total_tokens") == total


def test_openinference_provider_sdk_spans_name_the_provider_in_llm_system():
    record = map_span(_span({"openinference.span.kind": "LLM", "llm.system": "openai"}))
    assert record.fields["provider"] == "openai"
    record = map_span(_span({"openinference.span.kind": "LLM", "llm.system": "openai", "llm.provider": "azure"}))
    assert record.fields["provider"] == "azure"


# --- cost ------------------------------------------------------------------------------------------

START = datetime.fromtimestamp(1_700_000_000, tz=timezone.utc)  # _span's start


def library_cost(model, input_tokens, output_tokens, provider="openai"):
    """What genai-prices itself says the call cost, at the span's start."""
    import genai_prices

    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return float(genai_prices.calc_price(usage, model, provider_id=provider, genai_request_timestamp=START).total_price)


@pytest.mark.parametrize("attributes", [
    {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
     "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 1234,
     "gen_ai.usage.output_tokens": 567},
    {"llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.response.model": "gpt-4o-2024-08-06",
     "gen_ai.usage.prompt_tokens": 1234, "gen_ai.usage.completion_tokens": 567},
    {"openinference.span.kind": "LLM", "llm.provider": "openai", "llm.model_name": "gpt-4o-2024-08-06",
     "llm.token_count.prompt": 1234, "llm.token_count.completion": 567},
], ids=["genai", "legacy", "openinference"])
def test_the_cost_is_the_price_data_s_own_calculation(attributes):
    fields = map_span(_span(attributes)).fields
    assert fields["cost_usd"] == library_cost("gpt-4o-2024-08-06", 1234, 567) > 0  # the response model's price


def test_recorded_calls_carry_a_cost_only_when_their_model_is_priced():
    [(span, record)] = generations("openllmetry_stream")  # the response model is the request's: gpt-4o-mini
    import genai_prices

    usage = genai_prices.Usage(input_tokens=29, output_tokens=8)
    at = datetime.fromtimestamp(span.start_time / 1e9, tz=timezone.utc)
    expected = genai_prices.calc_price(usage, "gpt-4o-mini", provider_id="openai", genai_request_timestamp=at)
    assert record.fields["cost_usd"] == float(expected.total_price) > 0
    for fixture in ("openllmetry_chat", "openinference_chat", "genai_semconv", "openllmetry_error"):
        for _, record in generations(fixture):  # gpt-4o-mini-local, and a failed call with no usage
            assert "cost_usd" not in record.fields


def test_a_provider_the_price_data_does_not_know_is_priced_by_its_model():
    fields = map_span(_span({"gen_ai.operation.name": "chat", "gen_ai.system": "Langchain",
                             "gen_ai.request.model": "claude-3-5-sonnet-20241022",
                             "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10})).fields
    assert fields["cost_usd"] == library_cost("claude-3-5-sonnet-20241022", 100, 10, provider="anthropic") > 0


PRICED_CALL = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
               "gen_ai.usage.input_tokens": 29, "gen_ai.usage.output_tokens": 8}


@pytest.mark.parametrize("changed", [
    {"gen_ai.request.model": "gpt-4o-mini-local"},
    {"gen_ai.request.model": "no-such-model"},
    {"gen_ai.provider.name": "no-such-provider", "gen_ai.request.model": "no-such-model"},
    {"gen_ai.request.model": None},
    {"gen_ai.usage.output_tokens": None},
    {"gen_ai.usage.input_tokens": None},
    {"gen_ai.usage.input_tokens": None, "gen_ai.usage.output_tokens": None, "gen_ai.usage.total_tokens": 37},
    {"gen_ai.usage.input_tokens": "29"},
    {"gen_ai.usage.input_tokens": -1},
], ids=["local-model", "unknown-model", "unknown-provider-and-model", "no-model", "no-output-tokens",
        "no-input-tokens", "total-only", "text-count", "negative-count"])
def test_no_cost_unless_the_model_and_both_counts_are_known_and_priced(changed):
    assert map_span(_span(PRICED_CALL)).fields["cost_usd"] > 0
    attributes = {key: value for key, value in {**PRICED_CALL, **changed}.items() if value is not None}
    assert "cost_usd" not in map_span(_span(attributes)).fields


@pytest.mark.parametrize("raw", [
    '[{"role": "user", "parts": [{"type": "text", "content": "hi \\u00e9"}]}]',
    '{"text": "\\ud800 lone"}',  # a lone surrogate escape: orjson refuses it, the standard library reads it
    '{"n": NaN, "big": 123456789012345678901234567890}',
    '{"x": 1.1e-7, "y": 0.30000000000000004, "same": 1, "same": 2}',
    "[" * 500 + "]" * 500,
], ids=["plain", "lone-surrogate", "nan-big-int", "floats-duplicate-keys", "nested"])
def test_message_json_reads_as_the_standard_library_reads_it(raw):
    from otel_arthur.messages import parse_json

    expected = json.loads(raw)
    assert repr(parse_json(raw)) == repr(expected)
