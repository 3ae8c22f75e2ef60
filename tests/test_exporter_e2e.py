"""End to end: real ChatOpenAI over HTTP -> real instrumentor -> ArthurSpanExporter -> local Arthur.

The local OpenAI endpoint answers deterministically (``openai.complete``), so every record's
content and usage can be asserted exactly.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from appruns import run_app, to_local_arthur
from langchain_core.messages import (
    HumanMessage,
    SystemMessage,
    get_buffer_string,
    messages_from_dict,
)
from langchain_openai import ChatOpenAI
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur import ArthurSpanExporter
from otel_arthur.local import openai
from otel_arthur.mapping import render_messages
from otel_arthur.privacy import CONTENT_NOT_CAPTURED

SYSTEM = "You are terse."
PRICED_MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def arthur_model(sdk_client):
    """A model onboarded by ``create-model``: every field has its attribute."""
    from otel_arthur.onboarding import create_model

    return create_model(sdk_client, "e2e-full", "e2e full")


@pytest.fixture(scope="module")
def minimal_arthur_model(sdk_client):
    """A generative-text model with only the input and output text attributes."""
    from arthurai.common.constants import InputType, OutputType

    model = sdk_client.model(partner_model_id="e2e-minimal", input_type=InputType.NLP,
                             output_type=OutputType.TokenSequence)
    model.build_token_sequence_model(input_column="input_text", output_text_column="output_text")
    return model.save()


@pytest.fixture
def instrument(local_arthur, openllmetry_provider, add_processors):
    """Route this test's LLM spans to ``model_id``; returns (flush: True once Arthur has them all, captured spans)."""

    def instrument_for(model_id):
        spans = InMemorySpanExporter()
        exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, model_id=model_id,
                                      allow_insecure=True)
        to_arthur = BatchSpanProcessor(exporter)
        add_processors(to_arthur, SimpleSpanProcessor(spans))
        # The processor's flush hands spans to the exporter, whose flush waits for delivery.
        return lambda: to_arthur.force_flush() and exporter.force_flush(), spans

    return instrument_for


def _chat(history, llm):
    reply = llm.invoke(history)
    history.append(reply)
    return reply


def _rows_for(local_arthur, model_id, span_ids):
    return [r for r in local_arthur.inferences(model_id) if r["inference_data"].get("span_id") in span_ids]


def _records_for(local_arthur, model_id, spans):
    by_span = {f"{s.context.span_id:016x}": s for s in spans if s.name == "ChatOpenAI.chat"}
    return _rows_for(local_arthur, model_id, by_span), by_span


def _as_openai(history):
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": m.content} for m in history]


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "streaming"])
def test_one_record_per_call_with_exact_content(streaming, instrument, openai_server, local_arthur, arthur_model):
    flush, spans = instrument(arthur_model)
    llm = ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", model="gpt-4o-mini",
                     temperature=0.1, max_retries=0, streaming=streaming, stream_usage=True)
    history = [SystemMessage(SYSTEM)]
    expected = []
    for question in ("What is a span?", "And a trace?", "Thanks, bye."):
        history.append(HumanMessage(question))
        prompt_messages = list(history)
        _chat(history, llm)
        expected.append((prompt_messages, openai.complete(_as_openai(prompt_messages))))
    assert flush()

    rows, by_span = _records_for(local_arthur, arthur_model, spans.get_finished_spans())
    assert len(rows) == 3
    rows.sort(key=lambda r: r["inference_timestamp"])
    for row, (prompt_messages, completion) in zip(rows, expected):
        data = row["inference_data"]
        span = by_span[data["span_id"]]
        roles = {"system": "system", "human": "user", "ai": "assistant"}
        assert data["prompt"] == render_messages([(roles[m.type], m.content) for m in prompt_messages])
        assert data["completion"] == completion.content
        assert (data["prompt_tokens"], data["completion_tokens"], data["total_tokens"]) == \
            (completion.prompt_tokens, completion.completion_tokens, completion.total_tokens)
        assert data["finish_reason"] == "stop"
        assert data["duration"] > 0
        assert data["temperature"] == 0.1
        assert data["service_name"] == "e2e-chat"
        assert data["trace_id"] == f"{span.context.trace_id:032x}"
        assert row["partner_inference_id"] == f"{data['trace_id']}-{data['span_id']}"
    assert rows[-1]["inference_data"]["prompt"].count("AI: Echo:") == 2  # history was kept


def test_failed_llm_call_is_recorded_with_its_error(instrument, openai_server, local_arthur, arthur_model):
    flush, spans = instrument(arthur_model)
    llm = ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(Exception):
        llm.invoke([HumanMessage("boom [error 500]")])
    assert flush()
    rows, _ = _records_for(local_arthur, arthur_model, spans.get_finished_spans())
    [row] = rows
    assert "500" in row["inference_data"]["error"]
    # Arthur requires the prediction attribute: the call that never answered carries the marker, not a reply.
    assert row["inference_data"]["completion"] == CONTENT_NOT_CAPTURED
    assert "prompt_tokens" not in row["inference_data"]


def test_openinference_instrumentor_in_its_own_process(openai_server, local_arthur, arthur_model):
    """The same conversation as above, invoke and streaming, instrumented by OpenInference.

    OpenInference and OpenLLMetry both patch LangChain as "langchain": never in one process. The app
    reports each call as it saw it on the wire (messages sent, reply, the server's usage) with the
    ids of the LLM span recorded for it; Arthur must hold exactly one matching record per call.
    """
    calls = run_app("openinference_chat.py",
                    to_local_arthur(local_arthur, arthur_model, openai_server, "openinference-app"))
    assert [c["streaming"] for c in calls] == [False] * 3 + [True] * 3
    assert all(len(c["spans"]) == 1 for c in calls)  # one LLM span per call
    by_span = {c["spans"][0]["span_id"]: c for c in calls}
    rows = _rows_for(local_arthur, arthur_model, by_span)
    assert sorted(r["inference_data"]["span_id"] for r in rows) == sorted(by_span)  # one record per call

    for row in rows:
        data = row["inference_data"]
        call = by_span[data["span_id"]]
        sent = messages_from_dict(call["messages"])
        usage = call["usage"]  # what the server reported for this request, as ChatOpenAI read it
        server = openai.complete(_as_openai(sent))  # and what the local server answers by definition
        assert (call["reply"], usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == \
            (server.content, server.prompt_tokens, server.completion_tokens, server.total_tokens)
        assert data["prompt"] == get_buffer_string(sent)  # System: …\nHuman: …\nAI: …\nHuman: …
        assert data["completion"] == call["reply"]
        assert (data["prompt_tokens"], data["completion_tokens"], data["total_tokens"]) == \
            (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"])
        assert data["finish_reason"] == call["finish_reason"] == "stop"
        assert data["duration"] > 0
        assert data["temperature"] == 0.1
        # OpenInference names the response's model on a plain call, but the requested one when streaming.
        assert data["model"] == ("gpt-4o-mini" if call["streaming"] else openai.DEFAULT_MODEL)
        assert data["service_name"] == "openinference-app"
        assert data["session_id"] == "oi-session"
        assert (data["trace_id"], data["span_id"]) == (call["spans"][0]["trace_id"], call["spans"][0]["span_id"])
        assert re.fullmatch(r"[0-9a-f]{32}", data["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", data["span_id"])
        assert row["partner_inference_id"] == f"{data['trace_id']}-{data['span_id']}"
    for streaming in (False, True):  # history was kept: the last prompt holds both earlier answers
        last = [c for c in calls if c["streaming"] == streaming][-1]
        [row] = [r for r in rows if r["inference_data"]["span_id"] == last["spans"][0]["span_id"]]
        assert row["inference_data"]["prompt"].count("\nAI: Echo:") == 2


@pytest.fixture(scope="module")
def priced_openai_server():
    """The local OpenAI endpoint answering as a dated snapshot of a model genai-prices has a price for."""
    from otel_arthur.local.runner import BackgroundServer

    with BackgroundServer(openai.create_app(model=PRICED_MODEL)) as server:
        yield server


def test_a_call_of_a_priced_model_carries_its_cost(instrument, priced_openai_server, openai_server, local_arthur,
                                                   arthur_model):
    import genai_prices

    flush, spans = instrument(arthur_model)
    for server in (priced_openai_server, openai_server):
        llm = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="gpt-4o-mini", max_retries=0)
        llm.invoke([HumanMessage("What does a call cost?")])
    assert flush()

    rows, by_span = _records_for(local_arthur, arthur_model, spans.get_finished_spans())
    [priced] = [r["inference_data"] for r in rows if r["inference_data"]["model"] == PRICED_MODEL]
    [unpriced] = [r["inference_data"] for r in rows if r["inference_data"]["model"] == openai.DEFAULT_MODEL]
    usage = genai_prices.Usage(input_tokens=priced["prompt_tokens"], output_tokens=priced["completion_tokens"])
    started = datetime.fromtimestamp(by_span[priced["span_id"]].start_time / 1e9, tz=timezone.utc)
    price = genai_prices.calc_price(usage, PRICED_MODEL, provider_id="openai", genai_request_timestamp=started)
    assert priced["cost_usd"] == float(price.total_price) > 0
    assert "cost_usd" not in unpriced  # a model with no price has no cost, not 0


@pytest.mark.parametrize("batch_size", ["1", "512"], ids=["a-span-per-export", "batched"])
def test_langchain_and_openai_instrumentors_both_on_make_one_record_per_call(
        batch_size, openai_server, local_arthur, sdk_client, request):
    """OpenInference's LangChain and OpenAI instrumentors in one process: two generation spans per
    call (``dedupe``'s docstring: siblings, or roots of two traces), one record, whichever span
    each export batch brought first."""
    from otel_arthur.onboarding import create_model

    model_id = create_model(sdk_client, f"e2e-two-instrumentors-{batch_size}", request.node.name)
    env = to_local_arthur(local_arthur, model_id, openai_server, "two-instrumentors")
    calls = run_app("openinference_two_instrumentors.py", env | {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": batch_size})
    assert len(calls) == 8
    for call in calls:  # what makes this a test of deduplication: each call traced twice
        assert sorted(s["scope"] for s in call["spans"]) == ["openinference.instrumentation.langchain",
                                                            "openinference.instrumentation.openai"]
        assert len({s["trace_id"] for s in call["spans"]}) == (1 if call["under_app_span"] else 2)
    rows = local_arthur.inferences(model_id)
    assert len(rows) == len(calls)
    for call in calls:
        span_ids = {s["span_id"] for s in call["spans"]}
        [row] = [r for r in rows if r["inference_data"]["span_id"] in span_ids]
        assert row["inference_data"]["completion"] == call["reply"]


def test_model_lacking_optional_attributes_gets_prompt_and_completion(
        minimal_arthur_model, local_arthur, openai_server, instrument, caplog):
    caplog.set_level(logging.INFO, logger="otel_arthur")
    flush, _ = instrument(minimal_arthur_model)
    llm = ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", max_retries=0)
    for question in ("one", "two"):
        llm.invoke([HumanMessage(question)])
    assert flush()
    rows = local_arthur.inferences(minimal_arthur_model)
    assert [set(r["inference_data"]) for r in rows] == [{"input_text", "output_text"}] * 2
    assert sorted(r["inference_data"]["output_text"] for r in rows) == ["Echo: one", "Echo: two"]
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "prompt_tokens" in skipped[0].getMessage()


def test_unreachable_arthur_spools_and_never_raises_into_the_app(caplog, tmp_path):
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    from otel_arthur.retry import RetryPolicy

    exporter = ArthurSpanExporter(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                  timeout=1, spool_dir=tmp_path,
                                  retry_policy=RetryPolicy(initial_interval=0.01, max_interval=0.02))
    spans = [ReadableSpan(name="chat", context=SpanContext(1, span_id, False), start_time=1, end_time=2,
                          attributes={"gen_ai.operation.name": "chat"}) for span_id in (2, 3)]
    with caplog.at_level(logging.WARNING):
        for span in spans:
            assert exporter.export([span]) is SpanExportResult.SUCCESS  # spooled: Arthur down is not the app's problem
        assert not exporter.force_flush(timeout_millis=500)
        assert exporter.stats().spooled == 2 and exporter.stats().spool_depth == 2
        # Said at start-up, not at exit (a delivery process first starts an interpreter: up to seconds on a busy machine).
        deadline = time.monotonic() + 10
        while not any("Arthur unreachable" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("Arthur unreachable" in r.getMessage() for r in caplog.records)
        exporter.shutdown()
        exporter.shutdown()  # idempotent
    assert len([r for r in caplog.records if "Arthur unreachable" in r.getMessage()]) == 1  # one line per state change
    [remaining] = [r.getMessage() for r in caplog.records if "remain" in r.getMessage()]
    assert remaining.startswith("2 records") and str(tmp_path) in remaining and "connection refused" in remaining
    assert exporter.export(spans) is SpanExportResult.FAILURE


def test_missing_configuration_disables_without_raising(monkeypatch, caplog):
    for name in ("ARTHUR_ENDPOINT_URL", "ARTHUR_API_KEY", "ARTHUR_MODEL_ID"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.ERROR):
        exporter = ArthurSpanExporter()
    assert "no Arthur URL" in caplog.text
    assert exporter.export([]) is SpanExportResult.SUCCESS


def test_unusable_spool_disables_without_raising(tmp_path, caplog):
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with caplog.at_level(logging.ERROR):
        exporter = ArthurSpanExporter(url="https://a.example", api_key="k", model_id="m", spool_dir=not_a_directory)
    assert "cannot use the spool" in caplog.text and str(not_a_directory) in caplog.text
    span = ReadableSpan(name="chat", context=SpanContext(1, 2, False), start_time=1, end_time=2,
                        attributes={"gen_ai.operation.name": "chat"})
    assert exporter.export([span]) is SpanExportResult.FAILURE
    assert exporter.force_flush() and exporter.stats().spooled == 0
    exporter.shutdown()


def test_import_and_construction_stay_light():
    code = (
        "import sys, otel_arthur\n"
        "otel_arthur.ArthurSpanExporter(url='https://a.example', api_key='k', model_id='m')\n"
        "heavy = [m for m in ('arthurai', 'pandas', 'langchain', 'langchain_core', 'numpy', 'genai_prices')\n"
        "         if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
