"""The real OpenTelemetry Collector (built by collector-config/build-collector) between a LangChain app and
``serve``: every config of collector-config/ run for real, its persistent queue across an outage of
``serve``, and how the Collector's ``otlphttp`` exporter treats ``serve``'s 503, 413 and partial success.

The app (tests/apps/otlp_chat.py: OpenLLMetry, ``ChatOpenAI`` against the local OpenAI endpoint) exports
OTLP/HTTP to the Collector; ``serve`` runs in this process on a free port; records are read back from the
local Arthur and compared field by field with what the in-app mapping makes of the app's own spans.
The load-balancing config speaks OTLP/gRPC: its static resolver lists the one ``serve``'s gRPC port
(its run over three replicas, one killed, is tests/test_collector_grpc.py's). The Kafka configs
(collector-kafka-*.yaml) need a broker and are run, with the same app and checks, by tests/test_kafka.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import collector
import pytest
import requests
import yaml
from arthurmodel import create_model_over_http
from collector import (
    CONFIG_DIR,
    DROP_LINE,
    PARTIAL_SUCCESS_LINE,
    RETRY_LINE,
    assert_exact_records,
    prepare_config,
    retry_intervals,
    run_chat,
    running_collector,
)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from processes import free_port
from servehelpers import PROTOBUF, Served, arthur_settings, grpc_serving, serving, wait_for
from test_serve_e2e import QUESTIONS, clean_env
from test_zero_code import otlp_sink

from otel_arthur.config import ReceiverSettings
from otel_arthur.local.runner import BackgroundServer
from otel_arthur.mapping import map_span

CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("collector-kafka-"))
TOKEN = "collector-token"
TO_ARTHUR = CONFIG_DIR / "collector-to-arthur.yaml"
OUTAGE_SECONDS = 10


def receiver(**overrides: Any) -> ReceiverSettings:
    return ReceiverSettings(**{"port": 0, "auth_token": TOKEN, "shutdown_timeout": 5} | overrides)


def collector_env() -> dict[str, str]:
    return clean_env(OTEL_ARTHUR_RECEIVER_TOKEN=TOKEN)


def counters(served: Served) -> dict[str, float]:
    """serve's receiver counters by Prometheus name: ``spans_received_total``, ``http_responses_total{code="503"}``."""
    return {s.name + "".join(f'{{{k}="{v}"}}' for k, v in s.labels.items()): s.value
            for s in served.receiver.counters.samples()}


@contextmanager
def other_backend() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """An OTLP/HTTP sink standing for the fan-out config's tracing backend: its URL and what it received."""
    received: list[ExportTraceServiceRequest] = []
    with BackgroundServer(otlp_sink(received)) as sink:
        yield sink.url, received


def span_ids(requests: list[ExportTraceServiceRequest]) -> list[str]:
    return [span.span_id.hex() for message in requests for resource_spans in message.resource_spans
            for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]


def with_grpc_replicas(source: Path, grpc_target: str) -> dict[str, Any]:
    """``source`` read, its ``loadbalancing`` exporters' static resolver listing ``grpc_target`` alone."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    for name, exporter in config["exporters"].items():
        if name.split("/")[0] == "loadbalancing":
            exporter["resolver"]["static"]["hostnames"] = [grpc_target]
    return config


@pytest.mark.parametrize("source", CONFIGS, ids=lambda p: p.name)
def test_every_config_app_to_collector_to_serve_to_arthur(source: Path, collector_binary, openai_server,
                                                           local_arthur, tmp_path, figures):
    model_id = create_model_over_http(local_arthur)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool"), receiver()) as served, \
            grpc_serving(served.receiver, receiver(grpc_port=0)) as grpc_server, \
            other_backend() as (backend_url, backend_received):
        config = prepare_config(with_grpc_replicas(source, f"127.0.0.1:{grpc_server.port}"), tmp_path / "collector",
                                served.url, backend_url, name=source.name)
        with running_collector(collector_binary, config, tmp_path / "collector.log", collector_env()) as log:
            spans = run_chat(config, openai_server)
            rows = assert_exact_records(local_arthur, model_id, spans)
            if "otlphttp/tracing" in config.path.read_text():
                wait_for(lambda: len(span_ids(backend_received)) >= len(spans))
        seen = counters(served)
        grpc_calls = sum(s.value for s in grpc_server.samples() if s.labels["code"] == "OK")
    assert not log.lines(DROP_LINE) and not log.lines(RETRY_LINE), log.text()
    generations = len(QUESTIONS)
    if source.name == "collector-llm-only.yaml":  # the filter processor let through only the LLM calls
        assert seen["otel_arthur_receiver_spans_received_total"] == generations
        assert seen["otel_arthur_receiver_spans_ignored_total"] == 0
    else:
        assert seen["otel_arthur_receiver_spans_received_total"] == len(spans)
        assert seen["otel_arthur_receiver_spans_ignored_total"] == len(spans) - generations
    if "otlphttp/tracing" in config.path.read_text():  # the second backend got every span, once
        assert sorted(span_ids(backend_received)) == sorted(format(s.context.span_id, "016x") for s in spans)
    assert (grpc_calls > 0) is ("loadbalancing" in config.path.read_text())  # the spans came over OTLP/gRPC
    figures[source.name] = {
        "spans_made": len(spans), "spans_at_serve": int(seen["otel_arthur_receiver_spans_received_total"]),
        "grpc_calls": int(grpc_calls),
        "records": len(rows), "spans_at_second_backend": len(span_ids(backend_received))}


def test_persistent_queue_holds_through_serve_down_for_10_s_and_a_collector_restart(
        collector_binary, openai_server, local_arthur, tmp_path, figures):
    model_id = create_model_over_http(local_arthur)
    port = free_port()  # nothing listens there until serve starts
    config = prepare_config(TO_ARTHUR, tmp_path / "collector", f"http://127.0.0.1:{port}")
    log_path = tmp_path / "collector.log"
    down_since = time.monotonic()
    with running_collector(collector_binary, config, log_path, collector_env()) as log:
        spans = run_chat(config, openai_server)
        wait_for(lambda: log.lines(RETRY_LINE))  # the batch is in the queue, failing
    # The Collector stopped with the batch in its file_storage queue; a new one must find it there.
    with running_collector(collector_binary, config, log_path, collector_env()) as log:
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))  # the outage lasts 10 s
        with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool"), receiver(port=port)) as served:
            rows = assert_exact_records(local_arthur, model_id, spans)
            seen = counters(served)
    # The first Collector logs the batch it was retrying as dropped ("interrupted due to shutdown"), yet
    # its persistent queue kept it: the second one delivered it, once.
    assert [("interrupted due to shutdown" in line) for line in log.lines(DROP_LINE)] == [True], log.text()
    assert seen["otel_arthur_receiver_spans_received_total"] == len(spans)
    figures["serve down 10 s, Collector restarted"] = {
        "spans_made": len(spans), "records_sent": len(QUESTIONS), "records_arrived": len(rows),
        "retries_logged": len(log.lines(RETRY_LINE)), "seconds_down": OUTAGE_SECONDS}


def test_503_with_retry_after_is_retried_after_that_interval_and_everything_arrives(
        collector_binary, openai_server, local_arthur, tmp_path, figures):
    model_id = create_model_over_http(local_arthur)
    port = free_port()
    config = prepare_config(TO_ARTHUR, tmp_path / "collector", f"http://127.0.0.1:{port}")
    spool = tmp_path / "spool"
    with running_collector(collector_binary, config, tmp_path / "collector.log", collector_env()) as log:
        with serving(arthur_settings(local_arthur.url, model_id, spool), receiver(port=port)) as refusing:
            refusing.receiver.stop_accepting()  # as when shutting down: 503 + Retry-After to every request
            spans = run_chat(config, openai_server)
            wait_for(lambda: len(log.lines(RETRY_LINE)) >= 2)
            # The retries while serve refused: one landing between this serve and the next is "connection refused".
            retries_while_refused = log.lines(RETRY_LINE)
            refused = counters(refusing)
        with serving(arthur_settings(local_arthur.url, model_id, spool), receiver(port=port)):
            rows = assert_exact_records(local_arthur, model_id, spans)
    intervals = retry_intervals(retries_while_refused)
    assert all("503" in line for line in retries_while_refused)
    assert set(intervals) == {"5s"}  # serve's Retry-After: 5, taken as is instead of the backoff
    assert refused['otel_arthur_receiver_http_responses_total{code="503"}'] >= 2
    assert not log.lines(DROP_LINE)
    figures["503 + Retry-After"] = {"records_sent": len(QUESTIONS), "records_arrived": len(rows),
                                    "retries_logged": len(intervals), "interval": intervals[0]}


@pytest.mark.parametrize("limit", [{"max_body_bytes": 256}, {"max_spans_per_request": 1}], ids=lambda d: next(iter(d)))
def test_413_is_dropped_by_the_collector_not_retried_and_logged(limit, collector_binary, openai_server,
                                                                 local_arthur, tmp_path, figures):
    model_id = create_model_over_http(local_arthur)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool"), receiver(**limit)) as served:
        config = prepare_config(TO_ARTHUR, tmp_path / "collector", served.url)
        with running_collector(collector_binary, config, tmp_path / "collector.log", collector_env()) as log:
            spans = run_chat(config, openai_server)

            def dropped_spans() -> int:
                return sum(int(re.search(r'"dropped_items": (\d+)', line)[1]) for line in log.lines(DROP_LINE))

            # Every span is either at serve or counted as dropped by the Collector (at least one request was).
            wait_for(lambda: dropped_spans() > 0 and dropped_spans() + counters(served)[
                "otel_arthur_receiver_spans_received_total"] == len(spans))
        seen = counters(served)
    drops = log.lines(DROP_LINE)
    assert all("413" in line for line in drops) and not log.lines(RETRY_LINE)
    assert seen['otel_arthur_receiver_http_responses_total{code="413"}'] == len(drops)
    accepted = seen["otel_arthur_receiver_spans_received_total"]
    records = local_arthur.inferences(model_id)
    assert len(records) == accepted - seen["otel_arthur_receiver_spans_ignored_total"]
    figures[f"413 ({next(iter(limit))})"] = {"spans_made": len(spans), "requests_dropped": len(drops),
                                            "spans_dropped": dropped_spans(), "retries_logged": 0,
                                            "records_arrived": len(records)}


def test_partial_success_is_logged_by_the_collector_and_the_rest_delivered(collector_binary, openai_server,
                                                                         local_arthur, tmp_path, figures):
    model_id = create_model_over_http(local_arthur)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool"), receiver()) as served:
        config = prepare_config(TO_ARTHUR, tmp_path / "collector", served.url)
        with running_collector(collector_binary, config, tmp_path / "collector.log", collector_env()) as log:
            # The app's spans, then the same LLM call again with no start time: serve cannot record it.
            spans = run_chat(config, openai_server)
            rows = assert_exact_records(local_arthur, model_id, spans)
            request = encode_spans([next(s for s in spans if map_span(s) is not None)])
            broken = request.resource_spans[0].scope_spans[0].spans[0]
            broken.span_id, broken.start_time_unix_nano = b"\x09" * 8, 0
            assert requests.post(config.traces, data=request.SerializeToString(), headers=PROTOBUF,
                                 timeout=10).status_code == 200
            [partial] = wait_for(lambda: log.lines(PARTIAL_SUCCESS_LINE))
        seen = counters(served)
    assert '"dropped_spans": 1' in partial
    assert not log.lines(RETRY_LINE) and not log.lines(DROP_LINE)  # a partial success is not retried
    assert seen["otel_arthur_receiver_spans_rejected_total"] == 1
    assert len(local_arthur.inferences(model_id)) == len(rows)
    figures["partial_success"] = {"records_sent": len(QUESTIONS) + 1, "records_arrived": len(rows),
                                  "rejected_by_serve": 1, "retries_logged": 0}


def test_without_go_the_collector_tests_skip_loudly_unless_required(monkeypatch):
    monkeypatch.setattr(collector, "go_command", lambda: None)
    monkeypatch.delenv(collector.REQUIRE_COLLECTOR, raising=False)
    with pytest.warns(pytest.PytestWarning, match="NO GO TOOLCHAIN"), pytest.raises(pytest.skip.Exception):
        collector.build_collector()
    monkeypatch.setenv(collector.REQUIRE_COLLECTOR, "1")
    with pytest.raises(pytest.fail.Exception, match="NO GO TOOLCHAIN"):
        collector.build_collector()
