"""The real Collector over OTLP/gRPC into ``serve``: its ``otlp`` exporter to one ``serve``, and its ``loadbalancing``
exporter (collector-config/collector-loadbalancing.yaml) by trace id over three ``serve`` replicas, one of
them killed with SIGKILL mid-run and restarted on its spool.

The app is this test process exporting recorded OpenLLMetry generation spans with the SDK's gRPC
``OTLPSpanExporter`` to the Collector's OTLP receiver. Every process binds 127.0.0.1 on free ports and is
stopped (its process group killed) whatever happens. Behaviour is asserted, never timing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from arthurmodel import create_model_over_http
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families
from servehelpers import wait_for
from spanfixtures import generation_spans, reidentified
from test_serve_e2e import BIN, clean_env

from otel_arthur import config as c
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import map_span
from otel_arthur.serve.receiver import DEFAULT_RETRY_AFTER

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "collector-config" / "build-collector"
LOADBALANCING = ROOT / "collector-config" / "collector-loadbalancing.yaml"
TOKEN = "collector-grpc-token"
SPANS_PER_TRACE = 2
BATCH_MAX_RECORDS = 100  # each replica's inferences request: the most it can have in flight to Arthur


@pytest.fixture(scope="module")
def otelcol() -> str:
    """The Collector built from the official modules (collector-config/build-collector; reused when built)."""
    if not any((Path(p) / "go").exists() for p in os.environ.get("PATH", "").split(os.pathsep)) and \
            not Path("/usr/local/go/bin/go").exists():
        if os.environ.get("OTEL_ARTHUR_REQUIRE_COLLECTOR") == "1":
            pytest.fail("no Go toolchain to build the Collector, and OTEL_ARTHUR_REQUIRE_COLLECTOR=1")
        pytest.skip("NO GO TOOLCHAIN: the real-Collector tests did not run")
    built = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr
    return built.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Replica:
    """``otel-arthur serve`` on fixed ports and its own spool, so it can be killed and started again as it was."""

    def __init__(self, name: str, env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.port, self.grpc_port = free_port(), free_port()
        self._env = env | {"ARTHUR_SPOOL_DIR": str(folder / f"spool-{name}")}
        self._log = folder / f"serve-{name}.log"
        self.process: subprocess.Popen | None = None
        self.extra_flags: list[str] = []
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        with self._log.open("a") as log:
            self.process = subprocess.Popen(
                [str(BIN / "otel-arthur"), "serve", "--port", str(self.port), "--grpc-port", str(self.grpc_port),
                 *self.extra_flags],
                env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, timeout=60)

    def _ready(self) -> bool:
        """Listening (``/healthz``): ``/readyz`` also wants Arthur reachable, which a test may have taken down."""
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"serve {self.name} exited {self.process.returncode}: {self._log.read_text()}")
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL to its process group: no drain, no goodbye; the spool stays as it was on disk."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def spooled(self) -> float:
        return metric(self.url, "otel_arthur_records_spooled_total")


def metric(url: str, name: str) -> float:
    families = text_string_to_metric_families(requests.get(url + "/metrics", timeout=5).text)
    return sum(s.value for f in families for s in f.samples if s.name == name)


@contextmanager
def replicas(count: int, env: dict[str, str], folder: Path) -> Iterator[list[Replica]]:
    started = [Replica(chr(ord("a") + n), env, folder) for n in range(count)]
    try:
        for replica in started:
            replica.start()
        yield started
    finally:
        for replica in started:
            replica.kill()


@contextmanager
def collector(binary: str, config: dict[str, Any], folder: Path, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """The Collector with ``config`` (receiver on free ports, storage in ``folder``): its OTLP/gRPC target, its log."""
    folder.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_port(), free_port()
    config["receivers"]["otlp"]["protocols"] = {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                                                "http": {"endpoint": f"127.0.0.1:{http_port}"}}
    for name, extension in config.get("extensions", {}).items():
        if name.split("/")[0] == "file_storage":
            extension["directory"] = str(folder / "otelcol-storage")
    config["service"]["telemetry"] = {"metrics": {"level": "none"}}  # no :8888 listener to collide on
    path = folder / "otelcol.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = folder / "otelcol.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([binary, "--config", str(path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for(lambda: process.poll() is not None or "Everything is ready" in log_path.read_text(), timeout=60)
        assert process.poll() is None, log_path.read_text()
        yield f"127.0.0.1:{grpc_port}", log_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


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

def otlp_config(serve: Replica) -> dict[str, Any]:
    """collector-to-arthur.yaml with the Collector's ``otlp`` (gRPC) exporter to ``serve`` instead of ``otlphttp``."""
    config = yaml.safe_load((ROOT / "collector-config" / "collector-to-arthur.yaml").read_text())
    config["exporters"] = {"otlp/arthur": {
        "endpoint": f"127.0.0.1:{serve.grpc_port}", "compression": "gzip", "tls": {"insecure": True},
        "headers": {"authorization": "Bearer ${env:OTEL_ARTHUR_RECEIVER_TOKEN}"},
        "retry_on_failure": {"enabled": True, "initial_interval": "1s", "max_interval": "30s",
                             "max_elapsed_time": "5m"}}}
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp/arthur"]
    return config


def export(target: str, spans: list[ReadableSpan]) -> None:
    """The app: one export of ``spans`` to the Collector with the SDK's gRPC exporter."""
    exporter = OTLPSpanExporter(endpoint=target, insecure=True, timeout=30)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def test_collector_otlp_exporter_to_serves_grpc_port_exact_records(otelcol, serve_env, local_arthur, tmp_path,
                                                                   figures):
    env, model_id = serve_env
    with replicas(1, env, tmp_path) as [serve]:
        with collector(otelcol, otlp_config(serve), tmp_path, env) as (target, _):
            sent = traces(0, 50)
            export(target, sent)
            expected = {r.partner_inference_id: r for r in map(map_span, sent) if r is not None}
            wait_for(lambda: arrived(local_arthur, model_id, set(expected)), timeout=120)
            grpc_ok = metric(serve.url, "otel_arthur_receiver_grpc_responses_total")
    rows = local_arthur.inferences(model_id)
    assert sorted(r["partner_inference_id"] for r in rows) == sorted(expected)  # each once
    for row in rows:
        fields = expected[row["partner_inference_id"]].fields
        assert {k: row["inference_data"][k] for k in fields} == fields
    figures["Collector otlp -> serve gRPC"] = {"spans": len(sent), "records": len(rows), "grpc_calls": int(grpc_ok)}


def test_collector_drops_resource_exhausted_without_retry_info(otelcol, serve_env, local_arthur, tmp_path):
    env, model_id = serve_env
    with replicas(1, env | {c.OTEL_ARTHUR_RECEIVER_MAX_SPANS_PER_REQUEST: "10"}, tmp_path) as [serve]:
        with collector(otelcol, otlp_config(serve), tmp_path, env) as (target, log):
            sent = traces(100, 15)  # 30 spans: every request the Collector makes is over the limit
            export(target, sent)
            wait_for(lambda: "Dropping data" in log.read_text(), timeout=120)
            refused = metric(serve.url, "otel_arthur_receiver_grpc_responses_total")
            received = metric(serve.url, "otel_arthur_receiver_spans_received_total")
            text = log.read_text()
    assert "ResourceExhausted" in text and "Will retry" not in text  # permanent for it: dropped, never retried
    assert refused >= 1 and received == 0
    ids = {map_span(s).partner_inference_id for s in sent}
    assert not ids & {r["partner_inference_id"] for r in local_arthur.inferences(model_id)}


def test_collector_retries_unavailable_after_the_retry_info_delay_then_delivers(otelcol, serve_env, local_arthur,
                                                                               tmp_path, figures):
    env, model_id = serve_env
    first, second = traces(200, 10), traces(300, 10)
    local_arthur.faults.set(Faults(rate_503=1.0))  # Arthur down: what serve takes stays in its spool
    try:
        with replicas(1, env, tmp_path) as [serve]:  # measure what the first share takes on disk
            with collector(otelcol, otlp_config(serve), tmp_path / "measure", env) as (target, _):
                export(target, first)
                wait_for(lambda: metric(serve.url, "otel_arthur_records_spooled_total") >= len(first), timeout=120)
                spool_bytes = metric(serve.url, "otel_arthur_spool_size_bytes")
            serve.kill()
            serve.extra_flags = ["--spool-max-bytes", str(int(spool_bytes * 1.5))]  # no room for the second share
            serve.start()
            with collector(otelcol, otlp_config(serve), tmp_path, env) as (target, log):
                export(target, second)
                wait_for(lambda: metric(serve.url, "otel_arthur_receiver_spans_refused_total") > 0, timeout=120)
                local_arthur.faults.set(Faults())  # Arthur back: the spool drains, the retry fits
                wanted = {map_span(s).partner_inference_id for s in first + second}
                ids = wait_for(lambda: arrived(local_arthur, model_id, wanted), timeout=180)
                unavailable = metric(serve.url, "otel_arthur_receiver_grpc_responses_total")
                text = log.read_text()
    finally:
        local_arthur.faults.set(Faults())
    assert sorted(ids) == sorted(wanted)  # every record, once
    # The Collector read the RetryInfo: it waited serve's delay (5 s), not its own 1 s initial interval.
    assert f"Throttle ({DEFAULT_RETRY_AFTER}s), error: rpc error: code = Unavailable" in text
    assert f'"interval": "{DEFAULT_RETRY_AFTER}s"' in text
    figures["Collector otlp, serve's spool full (UNAVAILABLE + RetryInfo)"] = {
        "records": len(ids), "grpc_answers": int(unavailable),
        "collector_retries": text.count("Will retry the request")}


# -- loadbalancing by trace id over three replicas, one killed mid-run -------------------------------

TRACES = 1500
BATCH_TRACES = 25  # traces per export call of the app


def test_loadbalancing_over_three_replicas_one_killed_and_restarted_loses_nothing(otelcol, serve_env, local_arthur,
                                                                                 tmp_path, figures):
    env, model_id = serve_env
    config = yaml.safe_load(LOADBALANCING.read_text())
    produced = traces(0, TRACES)
    per_call = BATCH_TRACES * SPANS_PER_TRACE
    calls = [produced[n:n + per_call] for n in range(0, len(produced), per_call)]
    thirds = [calls[: len(calls) // 3], calls[len(calls) // 3: 2 * len(calls) // 3], calls[2 * len(calls) // 3:]]
    with replicas(3, env, tmp_path) as fleet:
        victim = fleet[1]
        config["exporters"]["loadbalancing/arthur"]["resolver"]["static"]["hostnames"] = [
            f"127.0.0.1:{r.grpc_port}" for r in fleet]
        with collector(otelcol, config, tmp_path, env) as (target, log):
            app = OTLPSpanExporter(endpoint=target, insecure=True, timeout=30)
            try:
                results = [app.export(call) for call in thirds[0]]
                wait_for(lambda: victim.spooled() > 0, timeout=120)  # its share is flowing: kill it mid-run
                victim.kill()
                results += [app.export(call) for call in thirds[1]]  # the app goes on while the victim is down
                victim.start()  # same ports, same spool
                results += [app.export(call) for call in thirds[2]]
            finally:
                app.shutdown()
            assert results == [SpanExportResult.SUCCESS] * len(calls)
            wanted = {map_span(s).partner_inference_id for s in produced}
            ids = wait_for(lambda: arrived(local_arthur, model_id, wanted), timeout=300)
            per_replica = {r.name: int(metric(r.url, "otel_arthur_receiver_grpc_responses_total")) for r in fleet}
    collector_log = log.read_text()
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
