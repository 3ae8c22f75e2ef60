"""Kafka as the durable bus between Collectors and ``serve`` replicas, with a real Apache Kafka broker.

The chat app (real OpenLLMetry + ``ChatOpenAI``) → producer Collector → topic → one consumer Collector →
``serve`` → local Arthur: each record exactly what the in-app mapping makes of the app's span, as for the
other configs in tests/test_collector_real.py. Then, at volume: app (OpenTelemetry SDK, OTLPSpanExporter) →
Collector (collector-kafka-producer.yaml) → topic of 3 partitions → one Collector per replica
(collector-kafka-consumer.yaml, one consumer group) → its own ``otel-arthur serve`` (own spool) → one
local Arthur. Replicas are killed with SIGKILL mid-run and
restarted on their spool and port: every record arrives; copies (at least once) are counted.

The broker (KRaft, one node) runs from Maven Central's jars on the machine's JDK (tests/kafkabroker.py);
the Collector is the one collector-config/build-collector builds. Behaviour is asserted, never timing;
the figures are printed at the end of the module's run.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from arthurmodel import create_model_over_http
from collector import (
    CONFIG_DIR,
    DROP_LINE,
    RETRY_LINE,
    CollectorConfig,
    CollectorLog,
    CollectorProcess,
    assert_exact_records,
    prepare_config,
    run_chat,
    running_collector,
)
from kafkabroker import KafkaBroker, kafka_classpath, require_tools, running_broker
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from processes import ServeReplica
from servehelpers import arthur_settings, serving, wait_for
from spanfixtures import generation_spans, reidentified
from test_serve import arthur_exporters, assert_sends_to_serves_defaults
from test_serve_e2e import clean_env

from otel_arthur.config import ReceiverSettings
from otel_arthur.local import arthur
from otel_arthur.mapping import map_span

PRODUCER_CONFIG = CONFIG_DIR / "collector-kafka-producer.yaml"
CONSUMER_CONFIG = CONFIG_DIR / "collector-kafka-consumer.yaml"
PARTITIONS = 3
REPLICAS = 3
TRACES, SPANS_PER_TRACE = 300, 3
TOKEN = "kafka-token"
# The kafka receiver commits the offsets it marked this often (its autocommit.interval default; the
# consumer config keeps it): a marking test must look after more than one commit.
AUTOCOMMIT_INTERVAL_SECONDS = 1.0


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

class Replica:
    """One ``serve`` (fixed ports, own spool) and the consumer Collector in front of it."""

    def __init__(self, name: str, workdir: Path, serve_env: dict[str, str], collector: Path,
                 consumer_config: dict[str, Any]) -> None:
        self.name = name
        self.serve = ServeReplica(name, workdir / "serve", serve_env)
        config = prepare_config(consumer_config, workdir, serve_url=self.serve.url, name="consumer.yaml")
        self.consumer = CollectorProcess(collector, config, workdir / "consumer.log", clean_env())

    def stop(self) -> None:
        self.consumer.stop()
        self.serve.stop()


def producer_config(broker: KafkaBroker, topic: str, workdir: Path) -> CollectorConfig:
    """collector-kafka-producer.yaml with its addresses and storage pointed here, written to ``workdir``."""
    config = yaml.safe_load(PRODUCER_CONFIG.read_text())
    config["exporters"]["kafka"]["brokers"] = [broker.bootstrap]
    config["exporters"]["kafka"]["traces"]["topic"] = topic
    return prepare_config(config, workdir, name=PRODUCER_CONFIG.name)


def consumer_config(broker: KafkaBroker, topic: str, group: str) -> dict[str, Any]:
    """collector-kafka-consumer.yaml reading this broker's topic in ``group`` (its serve is set per replica)."""
    config = yaml.safe_load(CONSUMER_CONFIG.read_text())
    kafka = config["receivers"]["kafka"]
    kafka["brokers"], kafka["traces"]["topics"], kafka["group_id"] = [broker.bootstrap], [topic], group
    return config


# -- the run ---------------------------------------------------------------------------------------

def serve_env(local_arthur: arthur.RunningLocalArthur, model_id: str) -> dict[str, str]:
    return clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=arthur.DEFAULT_API_KEY,
                     ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true")


def traces_of_generation_spans(traces: int, spans_per_trace: int, seed: int) -> list[ReadableSpan]:
    """Recorded generation spans under new ids, ``spans_per_trace`` to a trace (each from its own recording)."""
    rng = random.Random(seed)
    templates = generation_spans()
    return [reidentified(templates[(t * spans_per_trace + s) % len(templates)], trace_id, rng.getrandbits(64))
            for t, trace_id in enumerate(rng.getrandbits(128) for _ in range(traces)) for s in range(spans_per_trace)]


def retrying_for(log: CollectorLog) -> float:
    """Seconds from the first to the last of the exporter's retry lines, by the Collector's own timestamps."""
    stamps = [datetime.fromisoformat(line.split("\t", 1)[0]) for line in log.lines(RETRY_LINE)]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else 0.0


def record_ids(spans: Sequence[ReadableSpan]) -> set[str]:
    return {map_span(span).partner_inference_id for span in spans}


def delivered(local_arthur: arthur.RunningLocalArthur, model_id: str) -> set[str]:
    return {row["partner_inference_id"] for row in local_arthur.inferences(model_id)}


def test_chat_app_through_kafka_to_serve_exact_records(kafka_broker, collector_binary, openai_server, local_arthur,
                                                      tmp_path, figures):
    topic, group = "chat", "chat-serve"
    kafka_broker.create_topic(topic, PARTITIONS)
    model_id = create_model_over_http(local_arthur)
    producer = producer_config(kafka_broker, topic, tmp_path / "producer")
    receiver = ReceiverSettings(port=0, auth_token=TOKEN, shutdown_timeout=5)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool"), receiver) as served:
        consumer = prepare_config(consumer_config(kafka_broker, topic, group), tmp_path / "consumer", served.url,
                                  name=CONSUMER_CONFIG.name)
        with running_collector(collector_binary, producer, tmp_path / "producer.log", clean_env()) as producer_log, \
                running_collector(collector_binary, consumer, tmp_path / "consumer.log",
                                  clean_env(OTEL_ARTHUR_RECEIVER_TOKEN=TOKEN)) as consumer_log:
            spans = run_chat(producer, openai_server)
            rows = assert_exact_records(local_arthur, model_id, spans, timeout=120)
            messages = sum(kafka_broker.end_offsets(topic).values())
            wait_for(lambda: sum(kafka_broker.committed_offsets(group, topic).values()) == messages, timeout=60,
                     interval=0.5)
        received = {s.name: s.value for s in served.receiver.counters.samples()}
    assert received["otel_arthur_receiver_spans_received_total"] == len(spans)  # every span, once
    assert not producer_log.lines(DROP_LINE) and not consumer_log.lines(DROP_LINE)
    figures["chat app -> producer Collector -> Kafka -> consumer Collector -> serve"] = {
        "spans_made": len(spans), "kafka_messages": messages,
        "spans_at_serve": int(received["otel_arthur_receiver_spans_received_total"]), "records": len(rows)}


def test_offsets_are_committed_only_after_serve_answered(kafka_broker, collector_binary, local_arthur, tmp_path,
                                                         figures):
    """With ``serve`` away, the consumer Collector retries and commits nothing; killed -9 then and replaced once
    ``serve`` is up, it loses nothing. The same Collector with otlphttp's in-memory sending_queue commits every
    message ``serve`` never got, so a kill -9 then loses them all: why the config has no queue."""
    topic = "marking"
    kafka_broker.create_topic(topic, PARTITIONS)
    model_id = create_model_over_http(local_arthur)
    spans = traces_of_generation_spans(60, 1, seed=7)  # one span a trace: one Kafka message a span
    producer = producer_config(kafka_broker, topic, tmp_path / "producer")
    with running_collector(collector_binary, producer, tmp_path / "producer.log", clean_env()):
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
        queued.consumer.start()  # its serve never runs
        wait_for(lambda: sum(kafka_broker.committed_offsets("marking-queued", topic).values()) == len(spans),
                 timeout=60, interval=0.5)
        queued.consumer.kill9()  # every offset committed, nothing delivered: the spans were only in its memory

        synchronous.consumer.start()  # its serve is not running yet
        # Retrying for more than two commit intervals: an offset marked before serve answered is committed by now.
        wait_for(lambda: retrying_for(synchronous.consumer.collector_log) > 2 * AUTOCOMMIT_INTERVAL_SECONDS,
                 timeout=60, interval=0.5)
        committed_while_away = sum(kafka_broker.committed_offsets("marking-sync", topic).values())
        synchronous.consumer.kill9()
        synchronous.serve.start()
        synchronous.consumer.start()
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
        with running_collector(collector_binary, producer, tmp_path / "producer.log", clean_env()):
            for replica in replicas:
                replica.serve.start()
                replica.consumer.start()
            send(0)
            wait_for(lambda: len(so_far()) >= len(spans) // 10, timeout=120)

            # Replica 0 loses its serve: its Collector keeps its partition and retries, the offset unmarked.
            replicas[0].serve.kill9()
            send(1)
            # Replica 1 loses both: its partition goes to another consumer once its session times out.
            at_second_kill = len(so_far())
            replicas[1].consumer.kill9()
            replicas[1].serve.kill9()
            replicas[0].serve.start()  # on its spool and port: what it spooled before the kill goes on too
            send(2)
            replicas[1].serve.start()
            replicas[1].consumer.start()

            arrived = wait_for(lambda: (lambda ids: ids if ids >= expected else None)(so_far()), timeout=300,
                               interval=0.5)
            seconds = time.monotonic() - started
            received_after_restart = [int(replicas[n].serve.metric("otel_arthur_receiver_spans_received_total"))
                                      for n in (0, 1)]
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
