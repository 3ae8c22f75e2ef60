"""Processes the tests start and must always stop: free 127.0.0.1 ports, process groups stopped (SIGTERM,
then SIGKILL), a command that can be killed with SIGKILL and started again as it was, and ``otel-arthur
serve`` replicas built on it (fixed ports, own spool) for the load-balancing and Kafka tests."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from servehelpers import wait_for

logger = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
STOP_GRACE_SECONDS = 10.0
SERVE_SHUTDOWN_SECONDS = 5  # a replica stopped at the end of a test delivers for this long, then exits


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the process's group, SIGKILL to it after ``grace_seconds``; waits for the process."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            logger.warning("process %d outlived %s; escalating", process.pid, sig.name)


class Restartable:
    """A command in its own process group, its output appended to a log; killable with SIGKILL, restartable."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        self.argv, self.log, self.env, self.grace_seconds = list(argv), log, env, grace_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_offset = 0  # where this start's output begins in the log

    def start(self) -> None:
        self.starts += 1
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def output(self) -> str:
        """What this start wrote so far."""
        with self.log.open(errors="replace") as log:
            log.seek(self.log_offset)
            return log.read()

    def fail_if_exited(self, what: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"{what} exited {self.process.returncode}:\n{self.log.read_text(errors='replace')[-4000:]}")

    def kill9(self) -> None:
        """SIGKILL to its process group: no drain, no goodbye; what it wrote to disk stays as it was."""
        assert self.process is not None and self.process.poll() is None, f"not running: {self.log.read_text()}"
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, self.grace_seconds)


class ServeReplica(Restartable):
    """``otel-arthur serve`` on fixed HTTP and gRPC ports with its own spool in ``workdir``, so it can be killed
    and started again as it was; ``extra_flags`` apply from the next start."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name, self.workdir = name, workdir
        self.port, self.grpc_port = free_port(), free_port()
        self.extra_flags: list[str] = []
        super().__init__([], workdir / "serve.log", env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        """Started, and listening (``/healthz``: ``/readyz`` also wants Arthur, which a test may have taken down)."""
        self.argv = [str(BIN / "otel-arthur"), "serve", "--port", str(self.port), "--grpc-port", str(self.grpc_port),
                     "--spool-dir", str(self.workdir / "spool"), "--shutdown-timeout", str(SERVE_SHUTDOWN_SECONDS),
                     *self.extra_flags]
        super().start()
        wait_for(self._answers, timeout=60)

    def _answers(self) -> bool:
        self.fail_if_exited(f"serve {self.name}")
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def metric(self, name: str) -> float:
        """The sum of the samples named ``name`` on its ``/metrics`` (counts since this process started)."""
        families = text_string_to_metric_families(requests.get(self.url + "/metrics", timeout=5).text)
        return sum(sample.value for family in families for sample in family.samples if sample.name == name)


@contextmanager
def serve_replicas(count: int, env: dict[str, str], folder: Path) -> Iterator[list[ServeReplica]]:
    """``count`` started replicas (``a``, ``b``…, each in ``folder/serve-<name>``); stopped whatever happens."""
    replicas = [ServeReplica(chr(ord("a") + n), folder / f"serve-{chr(ord('a') + n)}", env) for n in range(count)]
    try:
        for replica in replicas:
            replica.start()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
