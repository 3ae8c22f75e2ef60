"""The real Collector over OTLP/gRPC into ``serve``: its ``otlp`` exporter to one ``serve``, and its ``loadbalancing``
exporter (collector-config/collector-loadbalancing.yaml) by trace id over three ``serve`` replicas, one of
them killed with SIGKILL mid-run and restarted on its spool.

The app is this test process exporting recorded OpenLLMetry generation spans with the SDK's gRPC
``OTLPSpanExporter`` to the Collector's OTLP receiver. Every process binds 127.0.0.1 on free ports and is
stopped (its process group killed) whatever happens. Behaviour is asserted, never timing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from arthurmodel import create_model_over_http
from collector import CONFIG_DIR, DROP_LINE, RETRY_LINE, CollectorConfig, prepare_config, running_collector
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from processes import ServeReplica, serve_replicas
from servehelpers import wait_for
from spanfixtures import generation_spans, reidentified
from test_serve_e2e import clean_env

from otel_arthur import config as c
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import map_span
from otel_arthur.serve.receiver import DEFAULT_RETRY_AFTER

LOADBALANCING = CONFIG_DIR / "collector-loadbalancing.yaml"
TOKEN = "collector-grpc-token"
SPANS_PER_TRACE = 2
BATCH_MAX_RECORDS = 100  # each replica's inferences request: the most it can have in flight to Arthur
GRPC_RESPONSES = "otel_arthur_receiver_grpc_responses_total"


def traces(first: int, count: int) -> list[ReadableSpan]:
    """``count`` traces of SPANS_PER_TRACE recorded generation spans each, under new ids."""
    templates = generation_spans()
    return [reidentified(templates[(trace * SPANS_PER_TRACE + k) % len(templates)], 0x1B_0000_0000 + trace,
                         (trace << 8) + k + 1)
            for trace in range(first, first + count) for k in range(SPANS_PER_TRACE)]


def arrived(local_arthur, model_id: str, wanted: set[str]) -> list[str] | None:
    ids = [row["partner_inference_id"] for row in local_arthur.inferences(model_id)]
    return ids if wanted <= set(ids) else None


@pytest.fixture
def serve_env(local_arthur):
    model_id = create_model_over_http(local_arthur)
    env = clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                    ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", OTEL_ARTHUR_RECEIVER_TOKEN=TOKEN,
                    ARTHUR_BATCH_MAX_RECORDS=str(BATCH_MAX_RECORDS))
    return env, model_id


# -- the otlp exporter into one serve ---------------------------------------------------------------

def otlp_config(serve: ServeReplica, workdir: Path) -> CollectorConfig:
    """collector-to-arthur.yaml with the Collector's ``otlp`` (gRPC) exporter to ``serve`` instead of ``otlphttp``."""
    config = yaml.safe_load((CONFIG_DIR / "collector-to-arthur.yaml").read_text())
    config["exporters"] = {"otlp/arthur": {
        "endpoint": serve.grpc_target, "compression": "gzip", "tls": {"insecure": True},
        "headers": {"authorization": "Bearer ${env:OTEL_ARTHUR_RECEIVER_TOKEN}"},
        "retry_on_failure": {"enabled": True, "initial_interval": "1s", "max_interval": "30s",
                             "max_elapsed_time": "5m"}}}
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp/arthur"]
    return prepare_config(config, workdir)


def export(target: str, spans: list[ReadableSpan]) -> None:
    """The app: one export of ``spans`` to the Collector with the SDK's gRPC exporter."""
    exporter = OTLPSpanExporter(endpoint=target, insecure=True, timeout=30)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def test_collector_otlp_exporter_to_serves_grpc_port_exact_records(collector_binary, serve_env, local_arthur,
                                                                   tmp_path, figures):
    env, model_id = serve_env
    with serve_replicas(1, env, tmp_path) as [serve]:
        config = otlp_config(serve, tmp_path / "collector")
        with running_collector(collector_binary, config, tmp_path / "collector.log", env):
            sent = traces(0, 50)
            export(config.otlp_grpc, sent)
            expected = {r.partner_inference_id: r for r in map(map_span, sent) if r is not None}
            wait_for(lambda: arrived(local_arthur, model_id, set(expected)), timeout=120)
            grpc_ok = serve.metric(GRPC_RESPONSES)
    rows = local_arthur.inferences(model_id)
    assert sorted(r["partner_inference_id"] for r in rows) == sorted(expected)  # each once
    for row in rows:
        fields = expected[row["partner_inference_id"]].fields
        assert {k: row["inference_data"][k] for k in fields} == fields
    figures["Collector otlp -> serve gRPC"] = {"spans": len(sent), "records": len(rows), "grpc_calls": int(grpc_ok)}


def test_collector_drops_resource_exhausted_without_retry_info(collector_binary, serve_env, local_arthur, tmp_path):
    env, model_id = serve_env
    with serve_replicas(1, env | {c.OTEL_ARTHUR_RECEIVER_MAX_SPANS_PER_REQUEST: "10"}, tmp_path) as [serve]:
        config = otlp_config(serve, tmp_path / "collector")
        with running_collector(collector_binary, config, tmp_path / "collector.log", env) as log:
            sent = traces(100, 15)  # 30 spans: every request the Collector makes is over the limit
            export(config.otlp_grpc, sent)
            wait_for(lambda: log.lines(DROP_LINE), timeout=120)
            refused = serve.metric(GRPC_RESPONSES)
            received = serve.metric("otel_arthur_receiver_spans_received_total")
            text = log.text()
    assert "ResourceExhausted" in text and "Will retry" not in text  # permanent for it: dropped, never retried
    assert refused >= 1 and received == 0
    ids = {map_span(s).partner_inference_id for s in sent}
    assert not ids & {r["partner_inference_id"] for r in local_arthur.inferences(model_id)}


def test_collector_retries_unavailable_after_the_retry_info_delay_then_delivers(collector_binary, serve_env,
                                                                               local_arthur, tmp_path, figures):
    env, model_id = serve_env
    first, second = traces(200, 10), traces(300, 10)
    local_arthur.faults.set(Faults(rate_503=1.0))  # Arthur down: what serve takes stays in its spool
    try:
        with serve_replicas(1, env, tmp_path) as [serve]:  # measure what the first share takes on disk
            config = otlp_config(serve, tmp_path / "collector-measure")
            with running_collector(collector_binary, config, tmp_path / "collector-measure.log", env):
                export(config.otlp_grpc, first)
                wait_for(lambda: serve.metric("otel_arthur_records_spooled_total") >= len(first), timeout=120)
                spool_bytes = serve.metric("otel_arthur_spool_size_bytes")
            serve.kill9()
            serve.extra_flags = ["--spool-max-bytes", str(int(spool_bytes * 1.5))]  # no room for the second share
            serve.start()
            config = otlp_config(serve, tmp_path / "collector")
            with running_collector(collector_binary, config, tmp_path / "collector.log", env) as log:
                export(config.otlp_grpc, second)
                wait_for(lambda: serve.metric("otel_arthur_receiver_spans_refused_total") > 0, timeout=120)
                local_arthur.faults.set(Faults())  # Arthur back: the spool drains, the retry fits
                wanted = {map_span(s).partner_inference_id for s in first + second}
                ids = wait_for(lambda: arrived(local_arthur, model_id, wanted), timeout=180)
                unavailable = serve.metric(GRPC_RESPONSES)
                text = log.text()
    finally:
        local_arthur.faults.set(Faults())
    assert sorted(ids) == sorted(wanted)  # every record, once
    # The Collector read the RetryInfo: it waited serve's delay (5 s), not its own 1 s initial interval.
    assert f"Throttle ({DEFAULT_RETRY_AFTER}s), error: rpc error: code = Unavailable" in text
    assert f'"interval": "{DEFAULT_RETRY_AFTER}s"' in text
    figures["Collector otlp, serve's spool full (UNAVAILABLE + RetryInfo)"] = {
        "records": len(ids), "grpc_answers": int(unavailable),
        "collector_retries": len(log.lines(RETRY_LINE))}


# -- loadbalancing by trace id over three replicas, one killed mid-run -------------------------------

TRACES = 1500
BATCH_TRACES = 25  # traces per export call of the app


def test_loadbalancing_over_three_replicas_one_killed_and_restarted_loses_nothing(collector_binary, serve_env,
                                                                                 local_arthur, tmp_path, figures):
    env, model_id = serve_env
    config = yaml.safe_load(LOADBALANCING.read_text())
    produced = traces(0, TRACES)
    per_call = BATCH_TRACES * SPANS_PER_TRACE
    calls = [produced[n:n + per_call] for n in range(0, len(produced), per_call)]
    thirds = [calls[: len(calls) // 3], calls[len(calls) // 3: 2 * len(calls) // 3], calls[2 * len(calls) // 3:]]
    with serve_replicas(3, env, tmp_path) as fleet:
        victim = fleet[1]
        config["exporters"]["loadbalancing/arthur"]["resolver"]["static"]["hostnames"] = [r.grpc_target for r in fleet]
        prepared = prepare_config(config, tmp_path / "collector", name=LOADBALANCING.name)
        with running_collector(collector_binary, prepared, tmp_path / "collector.log", env) as log:
            app = OTLPSpanExporter(endpoint=prepared.otlp_grpc, insecure=True, timeout=30)
            try:
                results = [app.export(call) for call in thirds[0]]
                # its share is flowing: kill it mid-run
                wait_for(lambda: victim.metric("otel_arthur_records_spooled_total") > 0, timeout=120)
                victim.kill9()
                results += [app.export(call) for call in thirds[1]]  # the app goes on while the victim is down
                victim.start()  # same ports, same spool
                results += [app.export(call) for call in thirds[2]]
            finally:
                app.shutdown()
            assert results == [SpanExportResult.SUCCESS] * len(calls)
            wanted = {map_span(s).partner_inference_id for s in produced}
            ids = wait_for(lambda: arrived(local_arthur, model_id, wanted), timeout=300)
            per_replica = {r.name: int(r.metric(GRPC_RESPONSES)) for r in fleet}
    collector_log = log.text()
    copies = Counter(ids)
    duplicated = sum(n - 1 for n in copies.values())
    # The victim's share was retried by its own otlp sub-exporter while it was down, never whole batches
    # by the loadbalancing exporter (which would send the other replicas' shares again too).
    assert "Rejecting data" not in collector_log and "Will retry the request" in collector_log
    # At least once: the victim's unanswered work may come again, nothing else: its Collector requests in
    # flight (the top-level queue's consumers, each a batch of at most send_batch_max_size spans) and its
    # inferences request in flight to Arthur.
    exporter = config["exporters"]["loadbalancing/arthur"]
    window = exporter["sending_queue"]["num_consumers"] * config["processors"]["batch"]["send_batch_max_size"] + \
        BATCH_MAX_RECORDS
    assert set(copies) == wanted  # nothing lost, nothing foreign
    assert duplicated <= window
    assert victim.starts == 2 and all(n > 0 for n in per_replica.values())  # every replica had its share
    figures["loadbalancing, 3 replicas, one SIGKILLed and restarted"] = {
        "records_produced": len(wanted), "delivered_unique": len(copies), "duplicated": duplicated,
        "lost": len(wanted - set(copies)), "duplicate_window": window,
        "collector_retries": collector_log.count("Will retry the request"),
        "grpc_calls_per_replica_since_start": "/".join(map(str, per_replica.values()))}
