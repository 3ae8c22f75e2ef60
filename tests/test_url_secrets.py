"""A password in ``ARTHUR_ENDPOINT_URL`` (``http://user:secret@host``) is never shown: not in a repr, a log
line, an error message, ``doctor``'s report or ``serve``'s start line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from otel_arthur import cli
from otel_arthur.clients.http import RetryableError
from otel_arthur.clients.v3 import ArthurClient
from otel_arthur.config import ArthurSettings, ConfigurationError, display_url
from otel_arthur.exporter import ArthurSpanExporter
from otel_arthur.retry import RetryPolicy

SECRET = "s3cret-in-the-url"
QUICK = RetryPolicy(initial_interval=0.02, max_interval=0.05, max_elapsed=0.5)
BIN = Path(sys.executable).parent


@pytest.fixture
def url() -> str:
    """An Arthur URL with a password in it, on a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://admin:{SECRET}@127.0.0.1:{port}/arthur?api_key={SECRET}"


def _span() -> ReadableSpan:
    return ReadableSpan(name="chat", context=SpanContext(0xABC, 1, False), start_time=1, end_time=2,
                        attributes={"gen_ai.operation.name": "chat",
                                    "gen_ai.input.messages": '[{"role": "user", "content": "hi"}]'})


def test_display_url_keeps_scheme_host_port_and_path_only():
    assert display_url(f"https://admin:{SECRET}@arthur.example:8443/base?api_key={SECRET}#x") == \
        "https://arthur.example:8443/base"
    assert display_url(f"admin:{SECRET}@arthur.example") == "arthur.example"  # no scheme: still no password
    assert display_url("http://[::1") == "<unparsable URL>"


def test_settings_client_and_configuration_errors(url, arthur_env):
    settings = ArthurSettings.resolve(url=url, api_key="k", model_id="m", allow_insecure=True)
    client = ArthurClient(settings)
    try:
        with pytest.raises(RetryableError) as unreachable:
            client.get_model("m")
    finally:
        client.close()
    assert "cannot connect to http://127.0.0.1:" in str(unreachable.value)
    with pytest.raises(ConfigurationError) as plain_http:
        ArthurSettings.resolve(url=url, api_key="k", model_id="m")
    shown = " ".join([repr(settings), repr(settings.connection), repr(client), str(unreachable.value),
                      str(plain_http.value)])
    assert "127.0.0.1" in shown and SECRET not in shown and "admin" not in shown


def test_exporter_repr_and_every_log_line(url, arthur_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    exporter = ArthurSpanExporter(url=url, api_key="k", model_id="m", allow_insecure=True, spool_dir=str(tmp_path),
                                  retry_policy=QUICK)
    assert exporter.export([_span()]).name == "SUCCESS"
    deadline = time.monotonic() + 30
    while "Arthur unreachable" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    text = repr(exporter) + "".join(repr(p) for p in exporter._pipelines)
    exporter.shutdown(0)
    text += caplog.text + "".join(str(r.args) + str(r.exc_info) for r in caplog.records)
    assert "Arthur unreachable (GET /users/me: cannot connect to http://127.0.0.1:" in text
    assert "remain in" in text and SECRET not in text


@pytest.mark.parametrize("client", ["native", "sdk"])
def test_doctor_report(url, client, arthur_env, tmp_path, capsys):
    if client == "sdk":
        pytest.importorskip("arthurai", reason="arthurai installs on Python <= 3.11 only")
    code = cli.main(["doctor", "--client", client, "--url", url, "--allow-insecure", "--api-key", "k",
                     "--model-id", "m", "--spool-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code != 0 and "URL            http://127.0.0.1:" in out
    assert "error: cannot connect to http://127.0.0.1:" in err
    assert SECRET not in out + err


def test_serve_start_line_and_its_log(url, arthur_env, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTHUR_")} | {
        "ARTHUR_ENDPOINT_URL": url, "ARTHUR_API_KEY": "k", "ARTHUR_MODEL_ID": "m", "ARTHUR_ALLOW_INSECURE": "true",
        "ARTHUR_SPOOL_DIR": str(tmp_path / "spool")}
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen([str(BIN / "otel-arthur"), "serve", "--host", "127.0.0.1", "--port", "0",
                                    "--grpc-port", "0"],
                                   env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60  # the start line, then Arthur declared unreachable
            while "Arthur unreachable" not in log.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    text = log.read_text()
    assert "for Arthur model m at http://127.0.0.1:" in text and "cannot connect to http://127.0.0.1:" in text
    assert SECRET not in text
