"""Kafka as the durable bus between Collectors and ``serve`` replicas, with a real Apache Kafka broker.

app (OpenTelemetry SDK, OTLPSpanExporter) → Collector (collector-kafka-producer.yaml) → topic of 3
partitions → one Collector per replica (collector-kafka-consumer.yaml, one consumer group) → its own
``otel-arthur serve`` (own spool) → one local Arthur. Replicas are killed with SIGKILL mid-run and
restarted on their spool and port: every record arrives; copies (at least once) are counted.

The broker (KRaft, one node) runs from Maven Central's jars on the machine's JDK (tests/kafkabroker.py);
the Collector is the one collector-config/build-collector builds. Behaviour is asserted, never timing;
the figures are printed at the end of the module's run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from arthurmodel import create_model_over_http
from collector import READY_LINE, RETRY_LINE, CollectorConfig, running_collector
from kafkabroker import KafkaBroker, free_port, kafka_classpath, require_tools, running_broker, stop_process_group
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from servehelpers import wait_for
from spanfixtures import generation_spans, reidentified
from test_serve import arthur_exporters, assert_sends_to_serves_defaults

from otel_arthur.local import arthur
from otel_arthur.mapping import map_span

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRODUCER_CONFIG = ROOT / "collector-config" / "collector-kafka-producer.yaml"
CONSUMER_CONFIG = ROOT / "collector-config" / "collector-kafka-consumer.yaml"
PARTITIONS = 3
REPLICAS = 3
TRACES, SPANS_PER_TRACE = 300, 3
_FOREIGN = ("OTEL_", "ARTHUR_", "OPENAI_", "TRACELOOP_", "OPENINFERENCE_", "VERIFY_SSL")


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory, figures) -> Iterator[KafkaBroker]:
    """One broker for the module, on free 127.0.0.1 ports; always stopped."""
    require_tools("java", "mvn")
    resolved = kafka_classpath()
    with running_broker(tmp_path_factory.mktemp("kafka"), resolved.classpath) as broker:
        figures["Kafka broker"] = {"maven_resolve_seconds": round(resolved.maven_seconds, 1),
                                   "broker_start_seconds": round(broker.start_seconds, 1)}
        yield broker


# -- the configs as written (no broker needed) ------------------------------------------------------

def test_the_consumer_config_marks_offsets_only_after_serve_answered():
    document = yaml.safe_load(CONSUMER_CONFIG.read_text())
    [(name, exporter)] = arthur_exporters(document).items()
    assert_sends_to_serves_defaults(exporter)
    receiver = document["receivers"]["kafka"]
    assert receiver["message_marking"]["after"] is True and receiver["message_marking"]["on_error"] is False
    assert receiver["error_backoff"]["enabled"] is True  # else a failed message pauses its partition
    assert receiver["error_backoff"]["multiplier"] > 1 and receiver["initial_offset"] == "earliest"
    assert receiver["traces"]["encoding"] == "otlp_proto"
    # synchronous to serve: a queue (unless it waits for the result) or a batch processor returns before serve answered
    queue = exporter["sending_queue"]
    assert queue["enabled"] is False or queue.get("wait_for_result") is True
    [pipeline] = [p for p in document["service"]["pipelines"].values() if name in p["exporters"]]
    assert pipeline["receivers"] == ["kafka"] and pipeline["exporters"] == [name]
    assert not [p for p in pipeline.get("processors", []) if p.split("/")[0] == "batch"]


def test_the_producer_config_writes_what_the_consumer_reads():
    producer = yaml.safe_load(PRODUCER_CONFIG.read_text())
    consumer = yaml.safe_load(CONSUMER_CONFIG.read_text())
    kafka = producer["exporters"]["kafka"]
    reader = consumer["receivers"]["kafka"]
    assert [kafka["traces"]["topic"]] == reader["traces"]["topics"] and kafka["brokers"] == reader["brokers"]
    assert kafka["traces"]["encoding"] == reader["traces"]["encoding"]
    assert kafka["partition_traces_by_id"] is True and kafka["producer"]["required_acks"] == "all"
    storage = kafka["sending_queue"]["storage"]  # the queue survives a Collector restart or a Kafka outage
    assert storage in producer["extensions"] and storage in producer["service"]["extensions"]
    assert producer["service"]["pipelines"]["traces"]["exporters"] == ["kafka"]


# -- the broker ------------------------------------------------------------------------------------

def test_the_broker_holds_a_topic_of_three_partitions(kafka_broker):
    kafka_broker.create_topic("broker-check", PARTITIONS)
    assert kafka_broker.partitions("broker-check") == PARTITIONS
    assert kafka_broker.end_offsets("broker-check") == {0: 0, 1: 0, 2: 0}  # nothing produced yet


# -- processes -------------------------------------------------------------------------------------

class Restartable:
    """A command in its own process group, its output appended to a log; killable with SIGKILL, restartable."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv, self.log, self.env = list(argv), log, env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Restartable:
        self.starts += 1
        with self.log.open("a") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def kill9(self) -> None:
        assert self.process is not None and self.process.poll() is None, f"not running: {self.log.read_text()}"
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace_seconds=10)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


class Replica:
    """One ``serve`` (fixed port, own spool) and the consumer Collector in front of it."""

    def __init__(self, name: str, workdir: Path, serve_env: dict[str, str], collector: Path,
                 consumer_config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir()
        self.serve = Restartable([str(BIN / "otel-arthur"), "serve", "--port", str(self.port), "--grpc-port", "0",
                                  "--spool-dir", str(workdir / "spool"), "--shutdown-timeout", "5"],
                                 workdir / "serve.log", serve_env)
        config = workdir / "consumer.yaml"
        consumer_config["exporters"]["otlphttp/arthur"]["endpoint"] = self.url
        config.write_text(yaml.safe_dump(consumer_config))
        self.consumer = Restartable([str(collector), "--config", str(config)], workdir / "consumer.log",
                                    collector_env())
        self.name = name

    def start_serve(self) -> None:
        self.serve.start()
        wait_for(lambda: self._serve_answers(), timeout=60)

    def start_consumer(self) -> None:
        self.consumer.start()
        wait_for(lambda: self._consumer_ready(), timeout=60)

    def _consumer_ready(self) -> bool:
        if self.consumer.exited() is not None:
            pytest.fail(f"{self.name}'s Collector exited: {self.consumer.log.read_text()[-4000:]}")
        return self.consumer.log.read_text().count(READY_LINE) == self.consumer.starts

    def _serve_answers(self) -> bool:
        if self.serve.exited() is not None:
            pytest.fail(f"{self.name}'s serve exited: {self.serve.log.read_text()[-4000:]}")
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def spans_received(self) -> int:
        """Spans this serve process took in since it started (its /metrics)."""
        page = requests.get(self.url + "/metrics", timeout=5).text
        found = re.search(r"^otel_arthur_receiver_spans_received_total (\S+)$", page, re.MULTILINE)
        return int(float(found[1])) if found else 0

    def stop(self) -> None:
        self.consumer.stop()
        self.serve.stop()


def collector_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}


def quiet_telemetry(config: dict[str, Any]) -> dict[str, Any]:
    """No internal metrics endpoint (each Collector would take :8888)."""
    config.setdefault("service", {}).setdefault("telemetry", {})["metrics"] = {"level": "none"}
    return config


def producer_config(broker: KafkaBroker, topic: str, workdir: Path) -> CollectorConfig:
    """collector-kafka-producer.yaml with its addresses and storage pointed here, written to ``workdir``."""
    config = yaml.safe_load(PRODUCER_CONFIG.read_text())
    http = f"127.0.0.1:{free_port()}"
    config["receivers"]["otlp"]["protocols"] = {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                                                "http": {"endpoint": http}}
    config["extensions"]["file_storage"]["directory"] = str(workdir / "storage")
    config["exporters"]["kafka"]["brokers"] = [broker.bootstrap]
    config["exporters"]["kafka"]["traces"]["topic"] = topic
    path = workdir / PRODUCER_CONFIG.name
    path.write_text(yaml.safe_dump(quiet_telemetry(config)))
    return CollectorConfig(path, "http://" + http)


def consumer_config(broker: KafkaBroker, topic: str, group: str) -> dict[str, Any]:
    """collector-kafka-consumer.yaml reading this broker's topic in ``group`` (its serve is set per replica)."""
    config = yaml.safe_load(CONSUMER_CONFIG.read_text())
    kafka = config["receivers"]["kafka"]
    kafka["brokers"], kafka["traces"]["topics"], kafka["group_id"] = [broker.bootstrap], [topic], group
    return quiet_telemetry(config)


# -- the run ---------------------------------------------------------------------------------------

def serve_env(local_arthur: arthur.RunningLocalArthur, model_id: str) -> dict[str, str]:
    return collector_env() | {"ARTHUR_ENDPOINT_URL": local_arthur.url, "ARTHUR_API_KEY": arthur.DEFAULT_API_KEY,
                              "ARTHUR_MODEL_ID": model_id, "ARTHUR_ALLOW_INSECURE": "true"}


def traces_of_generation_spans(traces: int, spans_per_trace: int, seed: int) -> list[ReadableSpan]:
    """Recorded generation spans under new ids, ``spans_per_trace`` to a trace (each from its own recording)."""
    rng = random.Random(seed)
    templates = generation_spans()
    return [reidentified(templates[(t * spans_per_trace + s) % len(templates)], trace_id, rng.getrandbits(64))
            for t, trace_id in enumerate(rng.getrandbits(128) for _ in range(traces)) for s in range(spans_per_trace)]


def record_ids(spans: Sequence[ReadableSpan]) -> set[str]:
    return {map_span(span).partner_inference_id for span in spans}


def delivered(local_arthur: arthur.RunningLocalArthur, model_id: str) -> set[str]:
    return {row["partner_inference_id"] for row in local_arthur.inferences(model_id)}


def test_offsets_are_committed_only_after_serve_answered(kafka_broker, collector_binary, local_arthur, tmp_path,
                                                         figures):
    """With ``serve`` away, the consumer Collector retries and commits nothing; killed -9 then and replaced once
    ``serve`` is up, it loses nothing. The same Collector with otlphttp's in-memory sending_queue commits every
    message ``serve`` never got, so a kill -9 then loses them all: why the config has no queue."""
    topic = "marking"
    kafka_broker.create_topic(topic, PARTITIONS)
    model_id = create_model_over_http(local_arthur)
    spans = traces_of_generation_spans(60, 1, seed=7)  # one span a trace: one Kafka message a span
    (tmp_path / "producer").mkdir()
    producer = producer_config(kafka_broker, topic, tmp_path / "producer")
    with running_collector(collector_binary, producer, tmp_path / "producer.log", collector_env()):
        app = OTLPSpanExporter(endpoint=producer.traces)
        assert app.export(spans) is SpanExportResult.SUCCESS
        app.shutdown()
        wait_for(lambda: sum(kafka_broker.end_offsets(topic).values()) == len(spans), timeout=60, interval=0.5)

    queued_config = consumer_config(kafka_broker, topic, "marking-queued")
    queued_config["exporters"]["otlphttp/arthur"]["sending_queue"] = {"enabled": True}
    queued = Replica("queued", tmp_path / "queued", serve_env(local_arthur, model_id), collector_binary,
                     queued_config)
    synchronous = Replica("synchronous", tmp_path / "synchronous", serve_env(local_arthur, model_id),
                          collector_binary, consumer_config(kafka_broker, topic, "marking-sync"))
    try:
        queued.start_consumer()  # its serve never runs
        wait_for(lambda: sum(kafka_broker.committed_offsets("marking-queued", topic).values()) == len(spans),
                 timeout=60, interval=0.5)
        queued.consumer.kill9()  # every offset committed, nothing delivered: the spans were only in its memory

        synchronous.start_consumer()  # its serve is not running yet
        wait_for(lambda: RETRY_LINE in synchronous.consumer.log.read_text(), timeout=60)
        committed_while_away = sum(kafka_broker.committed_offsets("marking-sync", topic).values())
        synchronous.consumer.kill9()
        synchronous.start_serve()
        synchronous.start_consumer()
        arrived = wait_for(lambda: (lambda ids: ids if ids >= record_ids(spans) else None)(
            delivered(local_arthur, model_id)), timeout=120, interval=0.5)
        wait_for(lambda: sum(kafka_broker.committed_offsets("marking-sync", topic).values()) == len(spans),
                 timeout=60, interval=0.5)
    finally:
        queued.stop()
        synchronous.stop()
    assert committed_while_away == 0
    assert arrived == record_ids(spans)
    figures["offset marking, serve away then killed -9"] = {
        "messages": len(spans), "committed_with_queue_before_delivery": len(spans),
        "committed_synchronous_before_delivery": committed_while_away, "delivered_synchronous": len(arrived)}


def test_replicas_killed_mid_run_lose_nothing_through_kafka(kafka_broker, collector_binary, local_arthur, tmp_path,
                                                            figures):
    topic, group = "otel-arthur-spans", "otel-arthur-serve"
    kafka_broker.create_topic(topic, PARTITIONS)
    model_id = create_model_over_http(local_arthur)
    spans = traces_of_generation_spans(TRACES, SPANS_PER_TRACE, seed=13)
    expected = record_ids(spans)
    assert len(expected) == TRACES * SPANS_PER_TRACE
    (tmp_path / "producer").mkdir()
    producer = producer_config(kafka_broker, topic, tmp_path / "producer")
    environment = serve_env(local_arthur, model_id)
    replicas = [Replica(f"replica {i}", tmp_path / f"replica-{i}", environment, collector_binary,
                        consumer_config(kafka_broker, topic, group)) for i in range(REPLICAS)]
    app = OTLPSpanExporter(endpoint=producer.traces)

    def so_far() -> set[str]:
        return delivered(local_arthur, model_id)

    def send(part: int) -> None:  # a third of the traces, as a BatchSpanProcessor would export them
        share = spans[part * len(spans) // 3:(part + 1) * len(spans) // 3]
        for first in range(0, len(share), 30):
            assert app.export(share[first:first + 30]) is SpanExportResult.SUCCESS

    started = time.monotonic()
    try:
        with running_collector(collector_binary, producer, tmp_path / "producer.log", collector_env()):
            for replica in replicas:
                replica.start_serve()
                replica.start_consumer()
            send(0)
            wait_for(lambda: len(so_far()) >= len(spans) // 10, timeout=120)

            # Replica 0 loses its serve: its Collector keeps its partition and retries, the offset unmarked.
            replicas[0].serve.kill9()
            send(1)
            # Replica 1 loses both: its partition goes to another consumer once its session times out.
            at_second_kill = len(so_far())
            replicas[1].consumer.kill9()
            replicas[1].serve.kill9()
            replicas[0].start_serve()  # on its spool and port: what it spooled before the kill goes on too
            send(2)
            replicas[1].start_serve()
            replicas[1].start_consumer()

            arrived = wait_for(lambda: (lambda ids: ids if ids >= expected else None)(so_far()), timeout=300,
                               interval=0.5)
            seconds = time.monotonic() - started
            received_after_restart = [replicas[0].spans_received(), replicas[1].spans_received()]
            time.sleep(1.0)  # copies still on the way land before counting
            rows = [row["partner_inference_id"] for row in local_arthur.inferences(model_id)]
            messages = sum(kafka_broker.end_offsets(topic).values())
    finally:
        app.shutdown()
        for replica in replicas:
            replica.stop()

    lost = expected - arrived
    assert not lost
    assert set(rows) == expected  # nothing else arrived either
    assert at_second_kill < len(spans)  # the kills fell mid-run
    assert received_after_restart[0] > 0  # the messages held for the killed serve went through it, restarted
    # One message per trace and resource in each batch, keyed by trace id (partition_traces_by_id).
    assert messages >= TRACES
    figures["3 replicas; serve 0, then replica 1 (serve + Collector) killed -9 and restarted"] = {
        "records_produced": len(spans), "kafka_messages": messages, "delivered": len(set(rows)),
        "duplicated": len(rows) - len(set(rows)), "lost": len(lost),
        "serve0_spans_after_restart": received_after_restart[0],
        "serve1_spans_after_restart": received_after_restart[1], "seconds": round(seconds, 1)}
