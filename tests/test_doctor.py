"""``otel-arthur doctor`` against the local Arthur: what it reports, and one precise line and exit code per problem."""

from __future__ import annotations

import os
import platform
import socket
import uuid

import pytest
import requests

from otel_arthur import __version__, cli, exit_codes
from otel_arthur.fields import FIELDS
from otel_arthur.local import arthur
from otel_arthur.mapping import InferenceRecord
from otel_arthur.spool import Refused, Spool

CLIENTS = ["sdk", "native"]


@pytest.fixture(autouse=True)
def clean_env(arthur_env):
    return arthur_env


@pytest.fixture(params=CLIENTS)
def client(request):
    if request.param == "sdk":
        pytest.importorskip("arthurai", reason="arthurai installs on Python <= 3.11 only")
    return request.param


def model_with(local_arthur, attributes) -> str:
    partner_model_id = f"doctor-{uuid.uuid4().hex[:10]}"
    response = requests.post(f"{local_arthur.url}{arthur.API_PREFIX}/models", timeout=10,
                             headers={"Authorization": local_arthur.api_key},
                             json={"partner_model_id": partner_model_id, "input_type": "NLP",
                                   "output_type": "TOKEN_SEQUENCE",
                                   "attributes": [{"name": n, "value_type": t, "stage": s} for n, t, s in attributes]})
    response.raise_for_status()
    return partner_model_id


MINIMAL = [("input_text", "UNSTRUCTURED_TEXT", "PIPELINE_INPUT"), ("output_text", "UNSTRUCTURED_TEXT", "PREDICTED_VALUE"),
           ("duration", "FLOAT", "NON_INPUT_DATA")]


def doctor(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_good_configuration_from_the_environment(capsys, clean_env, client, local_arthur, new_model, tmp_path):
    model_id = new_model()
    for name, value in {"ARTHUR_ENDPOINT_URL": local_arthur.url, "ARTHUR_API_KEY": local_arthur.api_key,
                        "ARTHUR_ALLOW_INSECURE": "true", "ARTHUR_MODEL_ID": model_id,
                        "ARTHUR_SPOOL_DIR": str(tmp_path / "spool")}.items():
        clean_env.setenv(name, value)
    code, out, err = doctor(capsys, "--client", client)
    assert code == exit_codes.OK and err == "", out + err
    assert out.startswith(f"otel-arthur {__version__} (Python {platform.python_version()})\n\nConfiguration\n")
    assert "credentials    API key (from $ARTHUR_API_KEY)" in out
    assert f"organization   {local_arthur.organization_id} (the credentials' own)" in out
    assert f"(id {model_id}), {len(FIELDS)} attributes" in out
    assert "    prompt_tokens      NON_INPUT_DATA   INTEGER" in out
    for name in FIELDS:  # every field lands in its own attribute
        assert f"  {name:<17} -> {name}\n" in out
    assert "content        prompts and completions are sent" in out and "redaction      off" in out
    assert "does not exist yet; created at the first export" in out and not (tmp_path / "spool").exists()
    assert out.rstrip().endswith("records would reach Arthur.")
    assert local_arthur.api_key not in out + err


def test_login_credentials_and_a_minimal_model_show_skipped_fields(capsys, client, local_arthur, tmp_path,
                                                                   clean_env):
    partner_model_id = model_with(local_arthur, MINIMAL)
    clean_env.setenv("ARTHUR_PASSWORD", local_arthur.password)
    clean_env.setenv("ARTHUR_REDACT", "email,card")
    clean_env.setenv("ARTHUR_SEND_CONTENT", "false")
    code, out, err = doctor(capsys, "--client", client, "--url", local_arthur.url, "--allow-insecure",
                            "--login", local_arthur.login, "--model-id", partner_model_id, "--spool-dir", str(tmp_path))
    assert code == exit_codes.OK, out + err
    assert f"login {local_arthur.login!r} (from --login) with a password (from $ARTHUR_PASSWORD)" in out
    assert "plain http permitted from --allow-insecure" in out
    assert "  prompt            -> input_text\n" in out and "  completion        -> output_text\n" in out
    assert "  duration          -> duration\n" in out
    assert "  prompt_tokens     -> skipped (no attribute)\n" in out and "  truncated         -> skipped" in out
    assert "prompts and completions withheld (ARTHUR_SEND_CONTENT); metrics are still sent" in out
    assert "redaction      built-in email, card" in out
    assert f"{tmp_path} (writable)" in out
    assert local_arthur.password not in out + err


def test_the_spool_section_counts_what_waits_and_the_dead_letters(capsys, local_arthur, new_model, tmp_path):
    model_id = new_model()
    spool = Spool(tmp_path, f"{local_arthur.url} {model_id}", 1_000_000)
    spool.append([InferenceRecord(f"r{i}", "2024-05-01T12:00:00+00:00", {"prompt": "hi"}) for i in range(4)])
    [first, *_] = spool.claim(1)
    spool.settle(refused=[Refused(first.seq, "record_rejected", "400: unknown attribute 'x'")])
    spool.close()
    code, out, _ = doctor(capsys, "--client", "native", "--url", local_arthur.url, "--allow-insecure", "--api-key",
                          local_arthur.api_key, "--model-id", model_id, "--spool-dir", str(tmp_path))
    assert code == exit_codes.OK
    assert "waiting        3 records, oldest 0s" in out
    assert "dead letters   1 (record_rejected 1)" in out and "latest refusal 400: unknown attribute 'x'" in out


@pytest.mark.parametrize("case", ["wrong-key", "unreachable", "tls", "unknown-model", "no-input-attribute",
                                  "no-output-attribute", "unfilled-input"])
def test_each_broken_configuration_is_one_precise_line_and_its_exit_code(capsys, client, local_arthur, new_model,
                                                                         tmp_path, case):
    url, api_key, model_id, insecure = local_arthur.url, local_arthur.api_key, new_model(), ["--allow-insecure"]
    if case == "wrong-key":
        api_key = "wrong-secret-key"
        expected = (exit_codes.REFUSED, "Arthur refused the API key (401 Unauthorized)")
    elif case == "unreachable":
        url = f"http://127.0.0.1:{closed_port()}"
        expected = (exit_codes.UNREACHABLE, f"cannot connect to {url}: connection refused")
    elif case == "tls":
        url, insecure = url.replace("http://", "https://"), []
        expected = (exit_codes.UNREACHABLE, f"TLS with {url} failed")
    elif case == "unknown-model":
        model_id = "no-such-model"
        expected = (exit_codes.REFUSED, "Arthur has no model 'no-such-model' (as id or partner_model_id)")
    elif case == "no-input-attribute":
        model_id = model_with(local_arthur, MINIMAL[1:])
        expected = (exit_codes.REFUSED, f"model {model_id!r} has no PIPELINE_INPUT UNSTRUCTURED_TEXT attribute")
    elif case == "no-output-attribute":
        model_id = model_with(local_arthur, MINIMAL[:1])
        expected = (exit_codes.REFUSED, f"model {model_id!r} has no PREDICTED_VALUE UNSTRUCTURED_TEXT attribute")
    else:
        model_id = model_with(local_arthur, [*MINIMAL, ("customer_tier", "STRING", "PIPELINE_INPUT")])
        expected = (exit_codes.REFUSED, "model attribute 'customer_tier' is a PIPELINE_INPUT no field fills")
    code, out, err = doctor(capsys, "--client", client, "--url", url, *insecure, "--api-key", api_key,
                            "--model-id", model_id, "--spool-dir", str(tmp_path))
    assert code == expected[0], out + err
    [line] = err.splitlines()
    assert line.startswith(f"error: {expected[1]}"), line
    assert f"PROBLEM        {expected[1]}" in out and "Traceback" not in out + err
    assert api_key not in out + err or api_key == local_arthur.api_key


@pytest.mark.parametrize("argv, code, message", [
    ((), exit_codes.CONFIGURATION, "no Arthur URL: pass --url or set ARTHUR_ENDPOINT_URL"),
    (("--url", "http://127.0.0.1:1", "--api-key", "k", "--model-id", "m"), exit_codes.CONFIGURATION,
     "plain http: set ARTHUR_ALLOW_INSECURE=true (or pass --allow-insecure)"),
    (("--url", "https://a.example", "--login", "me", "--model-id", "m"), exit_codes.CONFIGURATION,
     "has no password: pass --password or set ARTHUR_PASSWORD"),
])
def test_configuration_problems(capsys, tmp_path, argv, code, message):
    result, out, err = doctor(capsys, *argv, "--spool-dir", str(tmp_path))
    assert result == code and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_spool_that_cannot_be_created_and_several_problems_at_once(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = doctor(capsys, "--spool-dir", str(blocker / "spool"))
    assert code == exit_codes.CONFIGURATION  # the first problem's code: configuration before spool
    assert err.splitlines() == ["error: no Arthur URL: pass --url or set ARTHUR_ENDPOINT_URL",
                                f"error: spool directory {blocker / 'spool'} cannot be created: {blocker} is not "
                                "a directory"]
    assert "2 problems" in out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where nothing can be created")
def test_a_spool_that_cannot_be_created_says_which_step_fails(capsys):
    code, _, err = doctor(capsys, "--spool-dir", "/proc/otel-arthur-spool")
    assert code == exit_codes.CONFIGURATION  # no URL; the spool's problem is the second line
    assert err.splitlines()[1] == ("error: spool directory /proc/otel-arthur-spool cannot be created: making a "
                                   "directory in /proc fails: no such file or directory")


def test_a_spool_path_that_is_a_file(capsys, local_arthur, new_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = doctor(capsys, "--client", "native", "--url", local_arthur.url, "--allow-insecure", "--api-key",
                          local_arthur.api_key, "--model-id", new_model(), "--spool-dir", str(blocker))
    assert code == exit_codes.SPOOL and err == f"error: spool directory {blocker} is not usable: not a directory\n"


def test_debug_logging_never_shows_the_key(capsys, caplog, client, local_arthur, new_model, tmp_path):
    """At DEBUG the SDK logs request headers; doctor keeps its logger at WARNING."""
    caplog.set_level("DEBUG")
    code = cli.main(["--debug", "doctor", "--client", client, "--url", local_arthur.url, "--allow-insecure",
                     "--api-key", local_arthur.api_key, "--model-id", new_model(), "--spool-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == exit_codes.OK
    assert local_arthur.api_key not in caplog.text + out + err
    assert "/api/v3/models/" in caplog.text  # DEBUG really was on


def test_privacy_settings_are_checked_even_when_the_rest_of_the_configuration_is_incomplete(capsys, clean_env,
                                                                                            tmp_path):
    clean_env.setenv("ARTHUR_REDACT_PATTERNS", "employee=EMP-(")
    code, out, err = doctor(capsys, "--spool-dir", str(tmp_path))
    assert code == exit_codes.CONFIGURATION
    assert err.splitlines() == ["error: no Arthur URL: pass --url or set ARTHUR_ENDPOINT_URL",
                                "error: ARTHUR_REDACT_PATTERNS: redaction pattern 'employee': missing ), "
                                "unterminated subpattern at position 4"]
    clean_env.setenv("ARTHUR_ENDPOINT_URL", "https://a.example")
    clean_env.setenv("ARTHUR_API_KEY", "k")
    clean_env.setenv("ARTHUR_MODEL_ID", "m")
    code, out, err = doctor(capsys, "--spool-dir", str(tmp_path))
    assert code == exit_codes.CONFIGURATION and err.count("\n") == 1 and "ARTHUR_REDACT_PATTERNS" in err


# -- Arthur Engine ---------------------------------------------------------------------------------


@pytest.fixture
def engine_env(clean_env, local_engine, tmp_path):
    """Only Arthur Engine configured, from the exporter's environment variables."""
    for name, value in {"ARTHUR_ENGINE_URL": local_engine.url, "ARTHUR_ENGINE_API_KEY": local_engine.api_key,
                        "ARTHUR_ALLOW_INSECURE": "true", "ARTHUR_SPOOL_DIR": str(tmp_path / "spool")}.items():
        clean_env.setenv(name, value)
    return clean_env


def test_engine_alone_with_its_task(capsys, engine_env, local_engine):
    task = local_engine.store.create_task("doctor-chat")
    engine_env.setenv("ARTHUR_TASK_ID", task["id"])
    code, out, err = doctor(capsys)
    assert code == exit_codes.OK and err == "", out + err
    assert "Arthur (v3)    not configured (no --url or $ARTHUR_ENDPOINT_URL)" in out
    assert "\nArthur\n" not in out and "Binding" not in out  # the v3 sections are skipped, not failed
    assert f"URL            {local_engine.url} (from $ARTHUR_ENGINE_URL; plain http permitted" in out
    assert "credentials    API key (from $ARTHUR_ENGINE_API_KEY)" in out
    assert f"task id        {task['id']} (from $ARTHUR_TASK_ID)" in out
    assert "spans          ai (the default)" in out
    assert "the API key is accepted" in out and "task           'doctor-chat' exists" in out
    assert local_engine.api_key not in out + err


def test_engine_without_a_task_proves_the_key_and_says_how_spans_are_routed(capsys, engine_env, local_engine):
    tasks_before = len(local_engine.store.tasks())
    code, out, err = doctor(capsys, "--engine-spans", "all")
    assert code == exit_codes.OK and err == "", out + err
    assert "task id        none (ARTHUR_TASK_ID): the Engine routes each service's spans by service.name" in out
    assert "spans          all (from --engine-spans): every span" in out and "the API key is accepted" in out
    assert len(local_engine.store.tasks()) == tasks_before  # read-only


def test_engine_from_arthurs_own_sdk_variables(capsys, clean_env, local_engine, tmp_path):
    for name, value in {"ARTHUR_BASE_URL": local_engine.url, "ARTHUR_API_KEY": local_engine.api_key}.items():
        clean_env.setenv(name, value)
    code, out, err = doctor(capsys, "--allow-insecure", "--spool-dir", str(tmp_path))
    assert code == exit_codes.OK, out + err
    assert "(from $ARTHUR_BASE_URL; plain http permitted from --allow-insecure)" in out
    assert "credentials    API key (from $ARTHUR_API_KEY)" in out


@pytest.mark.parametrize("case", ["wrong-key", "unknown-task", "unreachable", "not-an-engine", "task-not-a-uuid",
                                  "no-key"])
def test_each_broken_engine_configuration_is_one_precise_line_and_its_exit_code(capsys, engine_env, local_engine,
                                                                                local_arthur, case):
    argv: list[str] = []
    if case == "wrong-key":
        argv = ["--engine-api-key", "wrong-engine-key"]
        expected = (exit_codes.REFUSED, "Arthur Engine refused the API key (401 Unauthorized: Bad credentials)")
    elif case == "unknown-task":
        missing = str(uuid.uuid4())
        argv = ["--task-id", missing]
        expected = (exit_codes.REFUSED, f"Arthur Engine has no task {missing} (ARTHUR_TASK_ID)")
    elif case == "unreachable":
        url = f"http://127.0.0.1:{closed_port()}"
        argv = ["--engine-url", url]
        expected = (exit_codes.UNREACHABLE, f"cannot connect to {url}: connection refused")
    elif case == "not-an-engine":
        argv = ["--engine-url", local_arthur.url]
        expected = (exit_codes.REFUSED, "Arthur Engine answered 404 for /api/v2/tasks/")
    elif case == "task-not-a-uuid":
        argv = ["--task-id", "chat"]
        expected = (exit_codes.CONFIGURATION, "task id 'chat' (from --task-id) is not a UUID")
    else:
        engine_env.delenv("ARTHUR_ENGINE_API_KEY")
        expected = (exit_codes.CONFIGURATION,
                    "no Arthur Engine API key: pass --engine-api-key or set ARTHUR_ENGINE_API_KEY (or ARTHUR_API_KEY)")
    code, out, err = doctor(capsys, *argv)
    assert code == expected[0], out + err
    [line] = err.splitlines()
    assert line.startswith(f"error: {expected[1]}"), line
    assert f"PROBLEM        {expected[1]}" in out and "Traceback" not in out + err
    assert "Arthur (v3)    not configured" in out and "wrong-engine-key" not in out + err


def test_v3_and_engine_together_and_each_ones_dead_letters(capsys, engine_env, local_arthur, local_engine, new_model,
                                                           tmp_path):
    from otel_arthur.config import EngineSettings
    from otel_arthur.destinations.engine import EngineDestination

    model_id = new_model()
    engine_settings = EngineSettings.resolve(spool_dir=tmp_path / "spool")
    destination = EngineDestination(engine_settings)
    [span] = destination.items([llm_span()]).records
    spool = Spool(tmp_path / "spool", destination.key, 1_000_000, destination.codec)
    spool.append([span])
    [claimed] = spool.claim(1)
    spool.settle(refused=[Refused(claimed.seq, "batch_refused", "sending traces: Arthur Engine answered 422: nope")])
    spool.close()
    code, out, err = doctor(capsys, "--client", "native", "--url", local_arthur.url, "--api-key",
                            local_arthur.api_key, "--model-id", model_id)
    assert code == exit_codes.OK and err == "", out + err
    assert f"(id {model_id}), {len(FIELDS)} attributes" in out and "\nArthur Engine\n" in out
    assert "dead letters   1 (batch_refused 1)" in out
    assert "latest refusal sending traces: Arthur Engine answered 422: nope" in out


def llm_span():
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    return ReadableSpan(name="chat", context=SpanContext(0xD0C, 0x7, False), start_time=1, end_time=2,
                        resource=Resource.create({"service.name": "doctor"}),
                        attributes={"openinference.span.kind": "LLM"})
