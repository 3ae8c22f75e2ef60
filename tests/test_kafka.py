"""Kafka as the durable bus between Collectors and ``serve`` replicas, with a real Apache Kafka broker.

The broker (KRaft, one node) runs from Maven Central's jars on the machine's JDK (tests/kafkabroker.py).
Behaviour is asserted, never timing; the figures are printed at the end of the module's run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafkabroker import KafkaBroker, kafka_classpath, require_tools, running_broker

PARTITIONS = 3


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory, figures) -> Iterator[KafkaBroker]:
    """One broker for the module, on free 127.0.0.1 ports; always stopped."""
    require_tools("java", "mvn")
    resolved = kafka_classpath()
    with running_broker(tmp_path_factory.mktemp("kafka"), resolved.classpath) as broker:
        figures["Kafka broker"] = {"maven_resolve_seconds": round(resolved.maven_seconds, 1),
                                   "broker_start_seconds": round(broker.start_seconds, 1)}
        yield broker


def test_the_broker_holds_a_topic_of_three_partitions(kafka_broker):
    kafka_broker.create_topic("broker-check", PARTITIONS)
    assert kafka_broker.partitions("broker-check") == PARTITIONS
    assert kafka_broker.end_offsets("broker-check") == {0: 0, 1: 0, 2: 0}  # nothing produced yet
