"""Zero-code end to end: ``opentelemetry-instrument python examples/chat.py``, configured by environment only.

Each run is a subprocess started through a shell with the README's command line, its conversation
piped on stdin, against the local OpenAI and Arthur endpoints. Records are awaited by polling the
local Arthur after the process has exited (delivery may finish during shutdown), within a deadline.

This development environment holds more than a user's ``pip install 'otel-arthur[langchain]'``:
OpenInference's LangChain instrumentor (also named ``langchain``) and ``opentelemetry-distro``.
``ONLY_OPENLLMETRY`` stands in for the first being absent; the second only adds the stock warning
``STOCK_CONFIGURATOR_WARNING`` to stderr (see otel_arthur/distro.py). It also holds the provider-SDK
instrumentors of the matrix (tests/test_instrumentors.py) and OpenInference's OpenAI one (each call then
also has the OpenAI SDK's span, left out by ``dedupe``); examples/chat.py is a LangChain app, so every
run here turns them off (``PROVIDER_SDK_OFF``) and sees LangChain's spans alone.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otel_arthur.local import openai
from otel_arthur.local.runner import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]
# The applications see the zero-code extra's install: no OTLP/gRPC exporter (tests/zero_code_install/README.md).
ZERO_CODE_INSTALL = Path(__file__).resolve().parent / "zero_code_install"
BIN = Path(sys.executable).parent  # the environment's bin: `opentelemetry-instrument` and `python`

# The README's commands, character for character (docs/zero-code.md).
README_COMMAND = "OTEL_TRACES_EXPORTER=arthur opentelemetry-instrument python examples/chat.py"
FAN_OUT_COMMAND = "OTEL_TRACES_EXPORTER=arthur,otlp opentelemetry-instrument python examples/chat.py"
PLAIN_COMMAND = "python examples/chat.py"

TURNS = ("What is a span?", "And a trace?", "Thanks, bye.")
SCRIPT = "".join(turn + "\n" for turn in TURNS) + "q\n"
SERVICE = "zero-code-chat"
PROVIDER_SDK_OFF = "openai,anthropic"  # instrumentor names: every OpenAI and Anthropic instrumentor
ONLY_OPENLLMETRY = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": f"{PROVIDER_SDK_OFF},openinference-instrumentation-langchain"}
ONLY_OPENINFERENCE = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": f"{PROVIDER_SDK_OFF},opentelemetry-instrumentation-langchain"}
STOCK_CONFIGURATOR_WARNING = "Configuration of configurator not loaded"  # opentelemetry-distro is installed too
DELIVERY_DEADLINE = 30.0  # seconds after exit for expected records to arrive
QUIET_PERIOD = 2.0  # seconds after exit in which no record may arrive when none is expected
RUN_TIMEOUT = 120.0
_FOREIGN = ("OTEL_", "ARTHUR_", "OPENAI_", "TRACELOOP_", "OPENINFERENCE_", "VERIFY_SSL")


@pytest.fixture
def model_id(sdk_client, request) -> str:
    """A model of this test's own, so records are read back per test."""
    from otel_arthur.onboarding import create_model

    return create_model(sdk_client, f"zero-code-{request.node.name}", request.node.name)


def app_env(openai_server: BackgroundServer) -> dict[str, str]:
    """The developer's environment without any OTEL_/ARTHUR_/OPENAI_ settings, plus the local OpenAI."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith(_FOREIGN)}
    return clean | {"PATH": f"{BIN}{os.pathsep}{clean.get('PATH', '')}", "PYTHONPATH": str(ZERO_CODE_INSTALL),
                    "OPENAI_BASE_URL": openai_server.url + "/v1", "OPENAI_API_KEY": "local-no-key-needed"}


@pytest.fixture
def env(tmp_path, openai_server) -> dict[str, str]:
    return app_env(openai_server) | {
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": PROVIDER_SDK_OFF,
        "ARTHUR_SPOOL_DIR": str(tmp_path / "spool"),  # durable delivery's spool
    }


def arthur_env(local_arthur, model_id: str) -> dict[str, str]:
    return {"ARTHUR_ENDPOINT_URL": local_arthur.url, "ARTHUR_API_KEY": local_arthur.api_key,
            "ARTHUR_MODEL_ID": model_id, "ARTHUR_ALLOW_INSECURE": "true"}


def run(command: str, env: dict[str, str], script: str = SCRIPT) -> subprocess.CompletedProcess[str]:
    # A new session has no controlling terminal, so a getpass() anywhere could not reach a person.
    return subprocess.run(command, shell=True, cwd=ROOT, env=env, input=script, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, start_new_session=True)


def records_after_exit(local_arthur, model_id: str, expected: int) -> list[dict[str, Any]]:
    """Poll until ``expected`` records are in (or the deadline), then once more to catch any extra."""
    deadline = time.monotonic() + (DELIVERY_DEADLINE if expected else QUIET_PERIOD)
    while time.monotonic() < deadline and not (expected and len(local_arthur.inferences(model_id)) >= expected):
        time.sleep(0.1)
    time.sleep(0.5)
    return local_arthur.inferences(model_id)


def app_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(STOCK_CONFIGURATOR_WARNING)]


def expected_completions() -> list[str]:
    history: list[dict[str, str]] = []
    completions = []
    for turn in TURNS:
        history.append({"role": "user", "content": turn})
        completions.append(openai.complete(history).content)
        history.append({"role": "assistant", "content": completions[-1]})
    return completions


def first_distro() -> str:
    from importlib.metadata import entry_points

    return next(iter(entry_points(group="opentelemetry_distro"))).name


@pytest.fixture(scope="module")
def plain_stdout(openai_server) -> str:
    """The chat's own output with no telemetry at all: what every zero-code run must print too."""
    result = run(PLAIN_COMMAND, app_env(openai_server) | {"OTEL_SDK_DISABLED": "true"})
    assert result.returncode == 0, result.stderr
    assert all(completion in result.stdout for completion in expected_completions())
    return result.stdout


@pytest.mark.parametrize("keep", [ONLY_OPENLLMETRY, ONLY_OPENINFERENCE], ids=["openllmetry", "openinference"])
def test_readme_command_records_one_inference_per_turn(keep, env, local_arthur, model_id, plain_stdout):
    result = run(README_COMMAND, env | arthur_env(local_arthur, model_id) | keep)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_stdout
    assert app_errors(result.stderr) == [], f"first opentelemetry_distro here: {first_distro()}"
    rows = sorted(records_after_exit(local_arthur, model_id, len(TURNS)), key=lambda r: r["inference_timestamp"])
    assert [r["inference_data"]["completion"] for r in rows] == expected_completions(), \
        f"first opentelemetry_distro here: {first_distro()}; stderr: {result.stderr}"
    assert {r["inference_data"]["service_name"] for r in rows} == {SERVICE}
    assert rows[-1]["inference_data"]["prompt"].endswith("Human: " + TURNS[-1])


@pytest.mark.parametrize("preferred, scope", [
    ({}, "opentelemetry.instrumentation.langchain"),
    ({"ARTHUR_PREFERRED_INSTRUMENTORS": "openinference"}, "openinference.instrumentation.langchain"),
], ids=["default-openllmetry", "preferred-openinference"])
def test_both_langchain_instrumentors_installed_one_is_activated_and_each_call_recorded_once(
        preferred, scope, env, local_arthur, model_id):
    """The arthur distro activates one ``langchain`` instrumentor (its INFO line: test_distro.py); OpenInference's
    OpenAI instrumentor is on too, so each call also has a provider span, which ``dedupe`` leaves out."""
    result, rows, received = fan_out(env | preferred, local_arthur, model_id)
    assert sorted(r["inference_data"]["completion"] for r in rows) == sorted(expected_completions())
    assert app_errors(result.stderr) == []  # no warning: nothing is doubled
    scopes = {scope_spans.scope.name for message in received for resource_spans in message.resource_spans
              for scope_spans in resource_spans.scope_spans}
    assert scope in scopes and not scopes & ({"opentelemetry.instrumentation.langchain",
                                              "openinference.instrumentation.langchain"} - {scope})


def test_broken_arthur_url_leaves_the_app_unchanged(env, model_id, plain_stdout):
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broken = {"ARTHUR_ENDPOINT_URL": f"http://127.0.0.1:{port}", "ARTHUR_API_KEY": "k", "ARTHUR_MODEL_ID": model_id,
              "ARTHUR_ALLOW_INSECURE": "true", "ARTHUR_TIMEOUT": "2"}
    result = run(README_COMMAND, env | broken | ONLY_OPENLLMETRY)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_stdout
    assert "Traceback" not in result.stderr


def test_login_without_password_is_one_clear_error_and_never_a_prompt(env, local_arthur, model_id, plain_stdout):
    login_only = {"ARTHUR_ENDPOINT_URL": local_arthur.url, "ARTHUR_LOGIN": local_arthur.login,
                  "ARTHUR_MODEL_ID": model_id, "ARTHUR_ALLOW_INSECURE": "true"}
    result = run(README_COMMAND, env | login_only | ONLY_OPENLLMETRY)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_stdout
    [error] = app_errors(result.stderr)
    assert "ARTHUR_PASSWORD" in error and "never prompts" in error
    assert "Password:" not in result.stdout + result.stderr
    assert records_after_exit(local_arthur, model_id, 0) == []


@pytest.mark.parametrize("switch", [
    {"OTEL_SDK_DISABLED": "true"},
    {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": f"{PROVIDER_SDK_OFF},langchain"},  # the shared name: both off
    {"OTEL_TRACES_SAMPLER": "always_off"},
], ids=["sdk-disabled", "langchain-disabled", "sampler-off"])
def test_standard_switches_turn_recording_off(switch, env, local_arthur, model_id, plain_stdout):
    result = run(README_COMMAND, env | arthur_env(local_arthur, model_id) | switch)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain_stdout
    assert records_after_exit(local_arthur, model_id, 0) == []


def otlp_sink(received: list[ExportTraceServiceRequest]) -> Starlette:
    """A minimal OTLP/HTTP receiver: decodes each POST /v1/traces body and keeps it."""

    async def traces(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        received.append(message)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


def fan_out(env: dict[str, str], local_arthur, model_id: str):
    """The chat to Arthur and an OTLP sink at once: (the run, Arthur's records, what the sink received)."""
    received: list[ExportTraceServiceRequest] = []
    with BackgroundServer(otlp_sink(received)) as sink:
        result = run(FAN_OUT_COMMAND,
                     env | arthur_env(local_arthur, model_id) | {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url})
        assert result.returncode == 0, result.stderr
        rows = records_after_exit(local_arthur, model_id, len(TURNS))
    return result, rows, received


def test_fan_out_to_arthur_and_an_otlp_backend(env, local_arthur, model_id):
    result, rows, received = fan_out(env | ONLY_OPENLLMETRY, local_arthur, model_id)
    spans = [span for message in received for resource_spans in message.resource_spans
             for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]
    llm_span_ids = {span.span_id.hex() for span in spans if span.name == "ChatOpenAI.chat"}
    assert len(llm_span_ids) == len(TURNS), result.stderr
    assert {r["inference_data"]["span_id"] for r in rows} == llm_span_ids  # the same calls, in both backends
    assert sorted(r["inference_data"]["completion"] for r in rows) == sorted(expected_completions())


def probe(env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """What the zero-code set-up built, from tests/apps/zero_code_probe.py; no instrumentors (fast)."""
    result = run("opentelemetry-instrument python tests/apps/zero_code_probe.py",
                 env | {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "*"}, script="")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_sdk_builds_a_batch_processor_around_the_exporter_from_the_environment(env):
    report, _ = probe(env | {
        "OTEL_TRACES_EXPORTER": "arthur", "ARTHUR_ENDPOINT_URL": "https://arthur.example", "ARTHUR_API_KEY": "k",
        "ARTHUR_MODEL_ID": "m", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.version=1.2",
        "OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "7",
        "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5",
    })
    assert report["tracer_provider"] == "TracerProvider"
    assert report["processors"] == [{"type": "BatchSpanProcessor", "exporter": "ArthurSpanExporter",
                                     "schedule_delay_millis": 250, "max_export_batch_size": 7}]
    assert report["resource"]["service.name"] == SERVICE
    assert report["resource"]["deployment.environment"] == "test" and report["resource"]["service.version"] == "1.2"
    assert report["sampler"] == "TraceIdRatioBased{0.5}"
    assert report["env"]["OTEL_METRICS_EXPORTER"] == report["env"]["OTEL_LOGS_EXPORTER"] == "none"


def test_stock_distro_alone_reproduces_the_silent_pitfall(env):
    # opentelemetry-distro's pair: metrics/logs default to otlp over grpc, which is not installed here.
    report, stderr = probe(env | {"OTEL_TRACES_EXPORTER": "arthur", "OTEL_PYTHON_DISTRO": "distro",
                                  "OTEL_PYTHON_CONFIGURATOR": "configurator"})
    assert report["tracer_provider"] == "ProxyTracerProvider"  # no span will ever be recorded
    assert "otlp_proto_grpc" in stderr


def test_arthur_configurator_rescues_the_stock_distro_defaults(env):
    report, stderr = probe(env | {"OTEL_TRACES_EXPORTER": "arthur", "OTEL_PYTHON_DISTRO": "distro",
                                  "OTEL_PYTHON_CONFIGURATOR": "arthur"})
    assert report["tracer_provider"] == "TracerProvider"
    assert [p["exporter"] for p in report["processors"]] == ["ArthurSpanExporter"]
    assert stderr.count("pip install opentelemetry-exporter-otlp-proto-grpc") == 2  # metrics and logs, once each


def test_the_arthur_pair_can_be_chosen_explicitly(env):
    # What the README says to do when opentelemetry-distro is installed too.
    report, stderr = probe(env | {"OTEL_TRACES_EXPORTER": "arthur", "OTEL_PYTHON_DISTRO": "arthur",
                                  "OTEL_PYTHON_CONFIGURATOR": "arthur"})
    assert [p["exporter"] for p in report["processors"]] == ["ArthurSpanExporter"]
    assert report["env"]["OTEL_METRICS_EXPORTER"] == report["env"]["OTEL_LOGS_EXPORTER"] == "none"
    assert STOCK_CONFIGURATOR_WARNING in stderr  # the stock configurator, passed over


def test_zero_code_into_arthur_engine_from_the_environment_alone(env, tmp_path, plain_stdout):
    """Arthur's own SDK's pair (ARTHUR_BASE_URL + ARTHUR_API_KEY) and a task id, no v3 settings: the chat's
    LLM spans reach the Engine in OpenInference form, routed to the task."""
    from otel_arthur.local import engine

    with engine.running(tmp_path / "engine.sqlite3") as local_engine:
        task = local_engine.store.create_task("zero-code")["id"]
        result = run(README_COMMAND, env | ONLY_OPENLLMETRY | {
            "ARTHUR_BASE_URL": local_engine.url, "ARTHUR_API_KEY": local_engine.api_key, "ARTHUR_TASK_ID": task,
            "ARTHUR_ALLOW_INSECURE": "true"})
        assert result.returncode == 0, result.stderr
        assert result.stdout == plain_stdout
        assert app_errors(result.stderr) == [], f"first opentelemetry_distro here: {first_distro()}"
        llm = [s for s in local_engine.spans(task_id=task) if s["attributes"].get("openinference.span.kind") == "LLM"]
    assert sorted(s["attributes"]["llm.output_messages.0.message.content"] for s in llm) == \
        sorted(expected_completions())
    assert {s["resource_attributes"]["service.name"] for s in llm} == {SERVICE}
