"""The real OpenTelemetry Collector in the tests: built once per run by ``collector-config/build-collector``,
run with a config from ``collector-config/`` whose addresses and storage directory are rewritten to this
test's (free 127.0.0.1 ports, a tmp directory), and always stopped; its log is kept for assertions."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servehelpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "collector-config"
BUILD_SCRIPT = CONFIG_DIR / "build-collector"
REQUIRE_COLLECTOR = "OTEL_ARTHUR_REQUIRE_COLLECTOR"
"""Set to 1 (CI does) and a machine that cannot build the Collector fails these tests instead of skipping."""
SERVE_DEFAULT_PORT = 4319
READY_LINE = "Everything is ready. Begin running and processing data."
RETRY_LINE = "Exporting failed. Will retry the request after interval."
DROP_LINE = "Exporting failed. Dropping data."
PARTIAL_SUCCESS_LINE = "Partial success response"
STOP_SECONDS = 15


def go_command() -> str | None:
    """The go command the build script would use (``GO``, then PATH, then Go's default install)."""
    found = os.environ.get("GO") or shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    return found


def build_collector() -> Path:
    """The Collector binary, built (or found up to date) by the build script; skips loudly without Go."""
    if go_command() is None:
        reason = (f"NO GO TOOLCHAIN: the real-Collector tests are skipped (install Go 1.26; set "
                  f"{REQUIRE_COLLECTOR}=1 to make this a failure, as CI does)")
        if os.environ.get(REQUIRE_COLLECTOR) == "1":
            pytest.fail(reason)
        warnings.warn(reason, pytest.PytestWarning, stacklevel=2)
        pytest.skip(reason)
    result = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"build-collector exited {result.returncode}:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class CollectorConfig:
    """A config rewritten for one test: where it is, and where the Collector receives OTLP/HTTP."""

    path: Path
    otlp_http: str

    @property
    def traces(self) -> str:
        return self.otlp_http + "/v1/traces"


def prepare_config(source: Path, workdir: Path, serve_url: str, other_backend_url: str | None = None) -> CollectorConfig:
    """``source`` with its receivers on free ports, its ``file_storage`` under ``workdir``, its exporter to
    ``serve`` (the one aimed at serve's default port) at ``serve_url`` and any other ``otlphttp`` exporter at
    ``other_backend_url``; the Collector's own metrics off (their fixed port would clash between runs)."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    for name, extension in (config.get("extensions") or {}).items():
        if name.split("/")[0] == "file_storage":
            extension["directory"] = str(workdir / ("storage-" + name.replace("/", "-")))
    otlp_http = ""
    for name, receiver in (config.get("receivers") or {}).items():
        if name.split("/")[0] != "otlp":
            raise ValueError(f"{source.name}: receiver {name} is not rewritten by tests/collector.py")
        for protocol, settings in receiver["protocols"].items():
            settings["endpoint"] = f"127.0.0.1:{free_port()}"
            if protocol == "http" and not otlp_http:
                otlp_http = "http://" + settings["endpoint"]
    for name, exporter in config["exporters"].items():
        if name.split("/")[0] not in ("otlphttp", "otlp_http"):
            raise ValueError(f"{source.name}: exporter {name} is not rewritten by tests/collector.py")
        if exporter["endpoint"].rstrip("/").endswith(f":{SERVE_DEFAULT_PORT}"):
            exporter["endpoint"] = serve_url
        elif other_backend_url is not None:
            exporter["endpoint"] = other_backend_url
        else:
            raise ValueError(f"{source.name}: exporter {name} needs another backend's URL")
    config["service"].setdefault("telemetry", {})["metrics"] = {"level": "none"}
    path = workdir / source.name
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return CollectorConfig(path, otlp_http)


class CollectorLog:
    """What the Collector wrote (it logs to stderr), read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def lines(self, containing: str) -> list[str]:
        return [line for line in self.text().splitlines() if containing in line]


@contextmanager
def running_collector(binary: Path, config: CollectorConfig, log_path: Path,
                      env: dict[str, str] | None = None) -> Iterator[CollectorLog]:
    """The Collector on ``config``, its output in ``log_path``, started in its own process group and
    stopped (SIGTERM, then SIGKILL after STOP_SECONDS) whatever happens; yields its log once it is ready."""
    log = CollectorLog(log_path)
    with log_path.open("a") as output:
        process = subprocess.Popen([str(binary), "--config", str(config.path)], stdout=output,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            def ready() -> bool:
                if process.poll() is not None:
                    pytest.fail(f"the Collector exited {process.returncode}:\n{log.text()[-4000:]}")
                return READY_LINE in log.text()

            wait_for(ready, timeout=60)
            yield log
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def retry_intervals(log: CollectorLog) -> list[str]:
    """The interval of each "will retry" line, as the Collector printed it (e.g. ``5s``)."""
    return [found[1] for line in log.lines(RETRY_LINE) if (found := re.search(r'"interval": "([^"]+)"', line))]
