"""A real Apache Kafka broker for the tests: KRaft, one node (broker and controller), on 127.0.0.1.

Its jars come from Maven Central through ``tests/kafka/pom.xml``: Maven resolves them into a classpath
once (kept in the git-ignored ``tests/kafka/.classpath/``, keyed by the pom's hash; the jars stay in
``~/.m2``), and the machine's JDK runs them. Kafka 4.x brokers need Java 17 or later.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import free_port, stop_process_group

logger = logging.getLogger(__name__)

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
CLASSPATH_DIR = KAFKA_DIR / ".classpath"
# CI sets it: a machine without the tools a real-Collector or Kafka test needs fails instead of skipping.
REQUIRE_ENV = "OTEL_ARTHUR_REQUIRE_COLLECTOR"
BROKER_HEAP = "-Xmx512m"
TOOL_JVM = ("-Xmx256m", "-XX:TieredStopAtLevel=1")  # the command-line tools run briefly: start fast
STOP_GRACE_SECONDS = 20.0


def require_tools(*names: str) -> None:
    """Skip (loudly) when a tool is missing; fail instead when ``OTEL_ARTHUR_REQUIRE_COLLECTOR=1``."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    reason = f"{', '.join(missing)} not on PATH: the real Kafka broker cannot run here"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(f"SKIPPED LOUDLY: {reason}; set {REQUIRE_ENV}=1 to make this a failure")


@dataclass(frozen=True)
class Resolved:
    classpath: str
    maven_seconds: float  # 0 when the cached classpath was reused


def kafka_classpath() -> Resolved:
    """The broker's classpath, resolved by Maven when the pom changed or a jar went missing."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    cached = CLASSPATH_DIR / f"{digest}.txt"
    if cached.exists():
        classpath = cached.read_text().strip()
        if all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return Resolved(classpath, 0.0)
    CLASSPATH_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    result = subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "dependency:build-classpath",
                             f"-Dmdep.outputFile={cached}"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"mvn could not resolve the Kafka broker's jars:\n{result.stdout}\n{result.stderr}")
    return Resolved(cached.read_text().strip(), time.monotonic() - started)


def cluster_id() -> str:
    """A new KRaft cluster id: a UUID in Kafka's form (URL-safe base64, unpadded)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _log4j2_config(level: str) -> str:
    return "\n".join([
        f"rootLogger.level = {level}",
        "rootLogger.appenderRef.console.ref = console",
        "appender.console.type = Console",
        "appender.console.name = console",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d] %p %m (%c)%n",
        "",
    ])


@dataclass
class KafkaBroker:
    """A started broker: its bootstrap address, and the Kafka tools run against it."""

    bootstrap: str
    classpath: str
    workdir: Path
    start_seconds: float = 0.0  # from launch until it answered a metadata request

    def tool(self, main_class: str, *args: str, timeout: float = 120) -> str:
        """Run one of Kafka's command-line tools (``org.apache.kafka.tools.TopicCommand``…); its stdout."""
        result = subprocess.run(
            ["java", *TOOL_JVM, f"-Dlog4j2.configurationFile={self.workdir / 'log4j2-tools.properties'}",
             "-cp", self.classpath, main_class, "--bootstrap-server", self.bootstrap, *args],
            capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{main_class} {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result.stdout

    def create_topic(self, name: str, partitions: int) -> None:
        self.tool("org.apache.kafka.tools.TopicCommand", "--create", "--topic", name,
                  "--partitions", str(partitions), "--replication-factor", "1")

    def partitions(self, topic: str) -> int:
        described = self.tool("org.apache.kafka.tools.TopicCommand", "--describe", "--topic", topic)
        return sum(1 for line in described.splitlines() if "Partition:" in line and "Leader:" in line)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Each partition's log end offset: how many messages were produced into it."""
        listed = self.tool("org.apache.kafka.tools.GetOffsetShell", "--topic", topic)
        return {int(partition): int(offset)
                for _, partition, offset in (line.rsplit(":", 2) for line in listed.split())}

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """The offset ``group`` committed for each partition of ``topic`` (0 where it committed none)."""
        described = self.tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--describe",
                              "--group", group)
        committed = {}
        for line in described.splitlines():
            columns = line.split()  # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG …
            if len(columns) > 3 and columns[0] == group and columns[1] == topic:
                committed[int(columns[2])] = 0 if columns[3] == "-" else int(columns[3])
        return committed


@contextmanager
def running_broker(workdir: Path, classpath: str) -> Iterator[KafkaBroker]:
    """Format a KRaft single-node storage in ``workdir``, start the broker on free ports and wait until it
    answers; stopped (SIGTERM, then SIGKILL, to its process group) whatever happens."""
    port, controller_port = free_port(), free_port()
    properties = workdir / "server.properties"
    properties.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={workdir / 'data'}",
        # one node: the internal topics cannot have more replicas than that
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # a consumer group forms at once rather than after the default 3 s wait for more members
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",  # the tests create their topics with the partitions they need
        "",
    ]))
    (workdir / "log4j2-broker.properties").write_text(_log4j2_config("INFO"))
    (workdir / "log4j2-tools.properties").write_text(_log4j2_config("WARN"))
    broker = KafkaBroker(f"127.0.0.1:{port}", classpath, workdir)
    subprocess.run(["java", *TOOL_JVM, f"-Dlog4j2.configurationFile={workdir / 'log4j2-tools.properties'}",
                    "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id(),
                    "-c", str(properties)], check=True, capture_output=True, timeout=120)
    log = (workdir / "broker.log").open("w")
    started = time.monotonic()
    process = subprocess.Popen(
        ["java", BROKER_HEAP, f"-Dlog4j2.configurationFile={workdir / 'log4j2-broker.properties'}",
         "-cp", classpath, "kafka.Kafka", str(properties)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_it_answers(broker, process, workdir / "broker.log")
        broker.start_seconds = time.monotonic() - started
        logger.info("Kafka broker at %s answered after %.1f s", broker.bootstrap, broker.start_seconds)
        yield broker
    finally:
        stop_process_group(process, STOP_GRACE_SECONDS)
        log.close()


def _wait_until_it_answers(broker: KafkaBroker, process: subprocess.Popen[bytes], log: Path,
                           timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    host, port = broker.bootstrap.rsplit(":", 1)
    while True:
        if process.poll() is not None:
            pytest.fail(f"the Kafka broker exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            broker.tool("org.apache.kafka.tools.TopicCommand", "--list")  # a metadata round trip
            return
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                pytest.fail(f"the Kafka broker did not answer within {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
