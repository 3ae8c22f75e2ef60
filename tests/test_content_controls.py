"""Content switches: records without prompt or completion still deliver their metrics, whoever withheld them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanContext

from otel_arthur import ArthurSpanExporter
from otel_arthur.binding import bind
from otel_arthur.clients.http import RetryableError
from otel_arthur.clients.v3 import ArthurModel, ModelAttribute
from otel_arthur.config import ArthurSettings
from otel_arthur.mapping import InferenceRecord, map_span
from otel_arthur.pipeline import Pipeline
from otel_arthur.privacy import (
    CONTENT_NOT_CAPTURED,
    CONTENT_WITHHELD,
    ContentPolicy,
    RecordFilter,
)
from otel_arthur.retry import RetryPolicy

QUICK = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=1)
SWITCHES = ("ARTHUR_SEND_CONTENT", "TRACELOOP_TRACE_CONTENT", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
            "OPENINFERENCE_HIDE_INPUTS", "OPENINFERENCE_HIDE_INPUT_MESSAGES", "OPENINFERENCE_HIDE_INPUT_TEXT",
            "OPENINFERENCE_HIDE_PROMPTS", "OPENINFERENCE_HIDE_OUTPUTS", "OPENINFERENCE_HIDE_OUTPUT_MESSAGES",
            "OPENINFERENCE_HIDE_OUTPUT_TEXT", "OPENINFERENCE_HIDE_CHOICES", "ARTHUR_REDACT", "ARTHUR_REDACT_PATTERNS")
PROMPT_TEXT = "a confidential question"
METRICS = {"model": "gpt-4o-mini", "prompt_tokens": 11, "completion_tokens": 5, "finish_reason": "stop"}


@pytest.fixture(autouse=True)
def no_switches(monkeypatch):
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env, send_content, expected", [
    ({}, None, (True, True)),
    ({"TRACELOOP_TRACE_CONTENT": "false"}, None, (False, False)),
    ({"TRACELOOP_TRACE_CONTENT": "true"}, None, (True, True)),
    ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"}, None, (False, False)),
    ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "NO_CONTENT"}, None, (False, False)),
    ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"}, None, (True, True)),
    ({"OPENINFERENCE_HIDE_INPUTS": "true"}, None, (False, True)),
    ({"OPENINFERENCE_HIDE_INPUT_TEXT": "1"}, None, (False, True)),
    ({"OPENINFERENCE_HIDE_OUTPUTS": "true"}, None, (True, False)),
    ({"OPENINFERENCE_HIDE_CHOICES": "true", "OPENINFERENCE_HIDE_PROMPTS": "true"}, None, (False, False)),
    ({"TRACELOOP_TRACE_CONTENT": "false"}, True, (True, True)),  # ARTHUR_SEND_CONTENT, when set, decides
    ({}, False, (False, False)),
])
def test_which_switch_withholds_what(no_switches, env, send_content, expected):
    for name, value in env.items():
        no_switches.setenv(name, value)
    policy = ContentPolicy.resolve(send_content)
    assert (policy.send_prompt, policy.send_completion) == expected


def test_the_environment_variable_arthur_send_content(no_switches):
    no_switches.setenv("ARTHUR_SEND_CONTENT", "false")
    settings = ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m")
    assert settings.send_content is False
    assert RecordFilter.from_settings(settings)(
        InferenceRecord("i", "t", {"prompt": PROMPT_TEXT, "completion": "c", **METRICS})
    ).fields == {"prompt": CONTENT_WITHHELD, "completion": CONTENT_WITHHELD, **METRICS}


def test_binding_fills_a_missing_prompt_or_completion_with_the_marker():
    model = ArthurModel("id", "m", (ModelAttribute("input_text", "UNSTRUCTURED_TEXT", "PIPELINE_INPUT"),
                                    ModelAttribute("output_text", "UNSTRUCTURED_TEXT", "PREDICTED_VALUE"),
                                    ModelAttribute("prompt_tokens", "INTEGER", "NON_INPUT_DATA")))
    row = bind(model).to_row(InferenceRecord("i", "t", {"prompt_tokens": 3}))
    assert row["inference_data"] == {"input_text": CONTENT_NOT_CAPTURED, "output_text": CONTENT_NOT_CAPTURED,
                                     "prompt_tokens": 3}


def _span(span_id: int) -> ReadableSpan:
    """A GenAI span that carries its content (the instrumentor's switch was on)."""
    return ReadableSpan(
        name="chat", context=SpanContext(0xC0FFEE, span_id, False), start_time=1, end_time=1_500_000_001,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 5,
                    "gen_ai.response.finish_reasons": ("stop",),
                    "gen_ai.input.messages": json.dumps([{"role": "user", "content": PROMPT_TEXT}]),
                    "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": "a secret answer"}])})


class Unreachable:
    def send(self, records):
        raise RetryableError("down")

    def close(self):
        pass


def _spool_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in directory.rglob("*") if path.is_file())


@pytest.mark.parametrize("env", [{"ARTHUR_SEND_CONTENT": "false"}, {"TRACELOOP_TRACE_CONTENT": "false"}],
                         ids=["ours", "instrumentor-switch-here"])
def test_withheld_content_is_neither_spooled_nor_sent_and_the_metrics_arrive(no_switches, env, local_arthur,
                                                                             new_model, tmp_path):
    for name, value in env.items():
        no_switches.setenv(name, value)
    model_id = new_model()
    options = {"url": local_arthur.url, "api_key": local_arthur.api_key, "allow_insecure": True, "model_id": model_id,
               "spool_dir": tmp_path}
    down = Pipeline(ArthurSettings.resolve(**options), transport=Unreachable(), retry_policy=QUICK)
    down.submit([map_span(_span(1))])
    spooled = _spool_bytes(tmp_path)
    assert CONTENT_WITHHELD.encode() in spooled
    assert PROMPT_TEXT.encode() not in spooled and b"secret answer" not in spooled
    down.shutdown(timeout=0.1)

    exporter = ArthurSpanExporter(**options, retry_policy=QUICK)  # delivers what waits, and one more
    assert exporter.export([_span(2)]).name == "SUCCESS"
    assert exporter.force_flush(10_000)
    exporter.shutdown()
    rows = local_arthur.inferences(model_id)
    assert len(rows) == 2
    for row in rows:
        data = row["inference_data"]
        assert (data["prompt"], data["completion"]) == (CONTENT_WITHHELD, CONTENT_WITHHELD)
        assert (data["model"], data["prompt_tokens"], data["completion_tokens"], data["finish_reason"]) == (
            "gpt-4o-mini", 11, 5, "stop")
        assert data["duration"] == pytest.approx(1.5)


def test_a_span_without_content_is_delivered_with_markers_not_dead_lettered(local_arthur, new_model, tmp_path):
    """Before: Arthur refused it per record (missing required input attribute) and it became a dead letter."""
    model_id = new_model()
    settings = ArthurSettings.resolve(url=local_arthur.url, api_key=local_arthur.api_key, allow_insecure=True,
                                      model_id=model_id, spool_dir=tmp_path)
    pipeline = Pipeline(settings, retry_policy=QUICK)
    pipeline.submit([InferenceRecord("no-content", "2024-05-01T12:00:00+00:00", dict(METRICS))])
    assert pipeline.force_flush(timeout=10)
    stats = pipeline.stats()
    pipeline.shutdown()
    assert (stats.delivered, stats.dead_lettered) == (1, 0)
    [row] = local_arthur.inferences(model_id)
    assert row["inference_data"] == {"prompt": CONTENT_NOT_CAPTURED, "completion": CONTENT_NOT_CAPTURED, **METRICS}


def test_openinference_switches_here_withhold_only_their_side(no_switches, local_arthur, new_model, tmp_path):
    no_switches.setenv("OPENINFERENCE_HIDE_INPUTS", "true")
    model_id = new_model()
    exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, allow_insecure=True,
                                  model_id=model_id, spool_dir=tmp_path, retry_policy=QUICK)
    assert exporter.export([_span(3)]).name == "SUCCESS" and exporter.force_flush(10_000)
    exporter.shutdown()
    [row] = local_arthur.inferences(model_id)
    assert (row["inference_data"]["prompt"], row["inference_data"]["completion"]) == (CONTENT_WITHHELD,
                                                                                    "a secret answer")


def test_openllmetry_with_its_content_switch_off_still_delivers_tokens_duration_model_finish_reason(
        no_switches, openllmetry_provider, add_processors, openai_server, local_arthur, new_model, tmp_path):
    no_switches.setenv("TRACELOOP_TRACE_CONTENT", "false")  # read by OpenLLMetry at every call
    model_id = new_model()
    # ARTHUR_SEND_CONTENT=true: our side does not withhold, so what arrives is what the instrumentor left out.
    exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, allow_insecure=True,
                                  model_id=model_id, spool_dir=tmp_path, send_content=True, retry_policy=QUICK)
    add_processors(SimpleSpanProcessor(exporter))
    llm = ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", model="gpt-4o-mini", max_retries=0)
    llm.invoke([SystemMessage("You are terse."), HumanMessage(PROMPT_TEXT)])
    assert exporter.force_flush(10_000)
    [row] = local_arthur.inferences(model_id)
    data = row["inference_data"]
    assert (data["prompt"], data["completion"]) == (CONTENT_NOT_CAPTURED, CONTENT_NOT_CAPTURED)
    assert data["prompt_tokens"] > 0 and data["completion_tokens"] > 0 and data["total_tokens"] > 0
    assert data["finish_reason"] == "stop" and data["model"] and data["duration"] > 0
    assert PROMPT_TEXT not in json.dumps(row)
