"""The real OpenTelemetry Collector in the tests: built once per run by ``collector-config/build-collector``
(the ``collector_binary`` fixture), run with a config from ``collector-config/`` (or one a test changed)
whose addresses and storage directory are rewritten to this test's (free 127.0.0.1 ports, a tmp
directory), and always stopped; its log is kept for assertions. And the app in front of it (the chat app,
real OpenLLMetry + ``ChatOpenAI``) with the check of what reaches Arthur, shared by the tests that run it."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from processes import Restartable, free_port
from servehelpers import wait_for
from spanfixtures import load_span
from test_serve_e2e import APP, QUESTIONS, clean_env, expected_turns

from otel_arthur.mapping import map_span

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
# Component types whose addresses ``prepare_config`` leaves as the test set them.
RECEIVERS_SET_BY_THE_TEST = ("kafka",)
EXPORTERS_SET_BY_THE_TEST = ("otlp", "otlp_grpc", "loadbalancing", "kafka")


def go_command() -> str | None:
    """The go command the build script would use (``GO``, then PATH, then Go's default install)."""
    found = os.environ.get("GO") or shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    return found


_build_results: list[subprocess.CompletedProcess[str]] = []


def run_build_script() -> subprocess.CompletedProcess[str]:
    """The build script's run, once per test run (conftest starts it before the first test: a first build
    takes about 6 minutes on 2 cores, far past a test's own timeout)."""
    if not _build_results:
        _build_results.append(subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800))
    return _build_results[0]


def build_collector() -> Path:
    """The Collector binary, built (or found up to date) by the build script; skips loudly without Go."""
    if go_command() is None:
        reason = (f"NO GO TOOLCHAIN: the real-Collector tests are skipped (install Go 1.26; set "
                  f"{REQUIRE_COLLECTOR}=1 to make this a failure, as CI does)")
        if os.environ.get(REQUIRE_COLLECTOR) == "1":
            pytest.fail(reason)
        warnings.warn(reason, pytest.PytestWarning, stacklevel=2)
        pytest.skip(reason)
    result = run_build_script()
    if result.returncode != 0:
        pytest.fail(f"build-collector exited {result.returncode}:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class CollectorConfig:
    """A config rewritten for one test: where it is, and where the Collector receives OTLP (empty: no such receiver)."""

    path: Path
    otlp_http: str
    otlp_grpc: str = ""

    @property
    def traces(self) -> str:
        return self.otlp_http + "/v1/traces"


def prepare_config(source: Path | dict[str, Any], workdir: Path, serve_url: str | None = None,
                   other_backend_url: str | None = None, name: str = "otelcol.yaml") -> CollectorConfig:
    """A config file (or one already read and changed by the test) made runnable here, written to ``workdir``:
    its OTLP receivers on free ports, its ``file_storage`` under ``workdir``, its ``otlphttp`` exporter aimed
    at serve's default port at ``serve_url`` and any other ``otlphttp`` exporter at ``other_backend_url``; the
    Collector's own metrics off (their fixed port would clash between runs). The addresses of ``otlp``,
    ``loadbalancing`` and ``kafka`` exporters and ``kafka`` receivers are the test's to set."""
    if isinstance(source, Path):
        config: dict[str, Any] = yaml.safe_load(source.read_text())
        name = source.name
    else:
        config = copy.deepcopy(source)
    for extension_name, extension in (config.get("extensions") or {}).items():
        if extension_name.split("/")[0] == "file_storage":
            extension["directory"] = str(workdir / ("storage-" + extension_name.replace("/", "-")))
    otlp_http = otlp_grpc = ""
    for receiver_name, receiver in (config.get("receivers") or {}).items():
        kind = receiver_name.split("/")[0]
        if kind in RECEIVERS_SET_BY_THE_TEST:
            continue
        if kind != "otlp":
            raise ValueError(f"{name}: receiver {receiver_name} is not rewritten by tests/collector.py")
        for protocol, settings in receiver["protocols"].items():
            settings["endpoint"] = f"127.0.0.1:{free_port()}"
            if protocol == "http" and not otlp_http:
                otlp_http = "http://" + settings["endpoint"]
            if protocol == "grpc" and not otlp_grpc:
                otlp_grpc = settings["endpoint"]
    for exporter_name, exporter in config["exporters"].items():
        kind = exporter_name.split("/")[0]
        if kind in EXPORTERS_SET_BY_THE_TEST:
            continue
        if kind not in ("otlphttp", "otlp_http"):
            raise ValueError(f"{name}: exporter {exporter_name} is not rewritten by tests/collector.py")
        url = serve_url if exporter["endpoint"].rstrip("/").endswith(f":{SERVE_DEFAULT_PORT}") else other_backend_url
        if url is None:
            raise ValueError(f"{name}: exporter {exporter_name} needs a URL to send to")
        exporter["endpoint"] = url
    config["service"].setdefault("telemetry", {})["metrics"] = {"level": "none"}
    path = workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return CollectorConfig(path, otlp_http, otlp_grpc)


class CollectorLog:
    """What the Collector wrote (it logs to stderr), read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def lines(self, containing: str) -> list[str]:
        return [line for line in self.text().splitlines() if containing in line]


class CollectorProcess(Restartable):
    """The Collector on ``config``, its output appended to ``log_path``: ``start()`` returns once it is ready;
    killable with SIGKILL and restartable (``stop()``: SIGTERM, then SIGKILL after STOP_SECONDS)."""

    def __init__(self, binary: Path, config: CollectorConfig, log_path: Path, env: dict[str, str] | None = None):
        super().__init__([str(binary), "--config", str(config.path)], log_path, env, STOP_SECONDS)
        self.collector_log = CollectorLog(log_path)

    def start(self) -> None:
        super().start()

        def ready() -> bool:
            self.fail_if_exited("the Collector")
            return READY_LINE in self.output()

        wait_for(ready, timeout=60)


@contextmanager
def running_collector(binary: Path, config: CollectorConfig, log_path: Path,
                      env: dict[str, str] | None = None) -> Iterator[CollectorLog]:
    """The Collector on ``config``, started in its own process group and stopped whatever happens; yields its
    log once it is ready."""
    collector = CollectorProcess(binary, config, log_path, env)
    try:
        collector.start()
        yield collector.collector_log
    finally:
        collector.stop()


def retry_intervals(retry_lines: list[str]) -> list[str]:
    """The interval of each "will retry" line, as the Collector printed it (e.g. ``5s``)."""
    return [found[1] for line in retry_lines if (found := re.search(r'"interval": "([^"]+)"', line))]


def run_chat(config: CollectorConfig, openai_server) -> list[Any]:
    """The chat app, exporting to the Collector; the spans it made (it exits once they are exported)."""
    result = subprocess.run(
        [sys.executable, str(APP), *QUESTIONS], capture_output=True, text=True, timeout=120,
        env=clean_env(OPENAI_BASE_URL=openai_server.url + "/v1", OPENAI_API_KEY="unused",
                      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=config.traces, OTEL_EXPORTER_OTLP_COMPRESSION="gzip"))
    assert result.returncode == 0, result.stderr
    return [load_span(s) for s in json.loads(result.stdout)]


def assert_exact_records(local_arthur, model_id: str, spans: list[Any], timeout: float = 90) -> list[dict[str, Any]]:
    """Arthur holds one record per LLM call, each field what the in-app mapping makes of the app's span."""
    records = {r.partner_inference_id: r for r in map(map_span, spans) if r is not None}
    assert len(records) == len(QUESTIONS)
    wait_for(lambda: len(local_arthur.inferences(model_id)) >= len(records), timeout=timeout)
    time.sleep(0.3)  # nothing more may arrive
    rows = sorted(local_arthur.inferences(model_id), key=lambda r: r["inference_timestamp"])
    assert sorted(r["partner_inference_id"] for r in rows) == sorted(records)  # each once
    for row, (prompt, completion) in zip(rows, expected_turns()):
        assert row["inference_data"] == records[row["partner_inference_id"]].fields
        assert row["inference_data"]["prompt"] == prompt
        assert row["inference_data"]["completion"] == completion.content
    return rows
