"""Redaction: built-in and user patterns, the hook, where it applies, and proof that nothing it removes is
spooled or sent (the spool file's bytes, every request body, and what the local Arthur stored)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext
from urllib3 import HTTPConnectionPool

from otel_arthur import ArthurSpanExporter
from otel_arthur.clients.http import RetryableError
from otel_arthur.config import ArthurSettings, ConfigurationError
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import InferenceRecord
from otel_arthur.pipeline import Pipeline
from otel_arthur.privacy import ContentPolicy, RecordFilter
from otel_arthur.redaction import (
    BUILTINS,
    Redactor,
    luhn_ok,
    parse_builtins,
    parse_patterns,
)
from otel_arthur.retry import RetryPolicy

QUICK = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=1)

EMAIL = "jane.doe+llm@example.co.uk"
CARD = "4111 1111 1111 1111"  # Visa's test number: passes Luhn
OPENAI_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
BEARER = "Bearer 8f14e45fceea167a5a36dedd4bea2543"


@pytest.fixture(autouse=True)
def no_privacy_environment(monkeypatch):
    for name in ("ARTHUR_REDACT", "ARTHUR_REDACT_PATTERNS", "ARTHUR_SEND_CONTENT", "TRACELOOP_TRACE_CONTENT",
                 "OPENINFERENCE_HIDE_INPUTS", "OPENINFERENCE_HIDE_OUTPUTS",
                 "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"):
        monkeypatch.delenv(name, raising=False)


# --- the patterns -----------------------------------------------------------------------------------


@pytest.mark.parametrize("secret, kind", [
    (EMAIL, "email"),
    (CARD, "card"),
    ("4111-1111-1111-1111", "card"),
    ("5500005555555559", "card"),
    (OPENAI_KEY, "api_key"),
    ("sk-ant-api03-" + "x" * 40, "api_key"),
    (AWS_KEY, "api_key"),
    (GITHUB_TOKEN, "api_key"),
    ("github_pat_" + "A" * 30, "api_key"),
    ("xoxb-1234567890-abcdefghij", "api_key"),
    ("AIza" + "B" * 35, "api_key"),
    ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "api_key"),
    ("hf_" + "c" * 34, "api_key"),
    (JWT, "jwt"),
    (BEARER, "bearer"),
])
def test_each_builtin_leaves_only_its_typed_marker(secret, kind):
    redact = Redactor(BUILTINS)
    assert redact(f"Human: my value is {secret}, thanks.") == f"Human: my value is [REDACTED:{kind}], thanks."


@pytest.mark.parametrize("text", [
    "order 4111 1111 1111 1112 shipped",  # fails Luhn
    "timestamps 1700000000 and 1700000001",  # too short
    "ask me at jane at example dot com",
    "sk-short",
    "the AKIA prefix alone",
    "trace 0af7651916cd43dd8448eb211c80319c",
])
def test_lookalikes_are_left_alone(text):
    assert Redactor(BUILTINS)(text) == text


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")


def test_several_kinds_in_one_pass_and_a_bearer_jwt_is_one_bearer():
    redact = Redactor(BUILTINS)
    text = f"mail {EMAIL}, key {OPENAI_KEY}, Authorization: Bearer {JWT}, card {CARD}."
    assert redact(text) == ("mail [REDACTED:email], key [REDACTED:api_key], Authorization: [REDACTED:bearer], "
                            "card [REDACTED:card].")


def test_a_chosen_subset_of_builtins():
    assert parse_builtins("builtin") == tuple(BUILTINS)
    assert parse_builtins("email, card") == ("email", "card")
    assert parse_builtins("none") == parse_builtins("") == ()
    assert Redactor(parse_builtins("email"))(f"{EMAIL} {OPENAI_KEY}") == f"[REDACTED:email] {OPENAI_KEY}"
    with pytest.raises(ValueError, match="unknown built-in redaction phone"):
        parse_builtins("email,phone")


def test_user_patterns_syntax_and_markers():
    patterns = parse_patterns(r"employee=EMP-\d{6}; ticket=(?i:tkt)#\d+ ;semi=a\;b")
    assert patterns == (("employee", r"EMP-\d{6}"), ("ticket", r"(?i:tkt)#\d+"), ("semi", "a;b"))
    redact = Redactor(BUILTINS, patterns)
    assert redact(f"EMP-123456 filed TKT#42 about a;b from {EMAIL}") == (
        "[REDACTED:employee] filed [REDACTED:ticket] about [REDACTED:semi] from [REDACTED:email]")


@pytest.mark.parametrize("text, message", [
    ("noequals", "not name=regex"),
    ("bad name=x", "letters, digits"),
    ("broken=(unclosed", "broken"),
    ("empty=x*", "matches the empty string"),
])
def test_bad_user_patterns_are_refused_naming_the_entry(text, message):
    with pytest.raises(ValueError, match=message):
        parse_patterns(text)


def test_patterns_with_their_own_groups_or_global_flags_still_work():
    redact = Redactor((), (("grouped", r"(ab)+c\1"), ("flagged", r"(?i)secret")))
    assert redact("xx ababcab yy SECRET zz") == "xx [REDACTED:grouped] yy [REDACTED:flagged] zz"


def test_the_hook_runs_after_the_patterns_and_fails_closed(caplog):
    seen = []

    def hook(text):
        seen.append(text)
        return text.replace("Acme", "[REDACTED:customer]")

    assert Redactor(("email",), (), hook)(f"Acme {EMAIL}") == "[REDACTED:customer] [REDACTED:email]"
    assert seen == ["Acme [REDACTED:email]"]

    def broken(text):
        raise RuntimeError("bug")

    redact = Redactor((), (), broken)
    with caplog.at_level(logging.WARNING):
        assert redact("anything") == redact("else") == "[REDACTED:hook_error]"
    assert caplog.text.count("redact hook raised") == 1


def test_a_long_text_without_matches_is_one_linear_scan():
    """No catastrophic backtracking: runs of address or digit characters with no match complete."""
    redact = Redactor(BUILTINS)
    for text in ("a" * 200_000, "1" * 200_000, "a." * 100_000, ("x" * 63 + "@") * 3_000):
        assert "[REDACTED" not in redact(text)[:10]


# --- where it applies -------------------------------------------------------------------------------


def record(**fields) -> InferenceRecord:
    return InferenceRecord("0" * 32 + "-" + "1" * 16, "2024-05-01T12:00:00+00:00", fields)


def test_every_text_field_but_the_ids_is_redacted_and_numbers_are_untouched():
    keep = RecordFilter(ContentPolicy(), Redactor(BUILTINS), 65536)
    ids = {"trace_id": "4111111111111111" + "0" * 16, "span_id": "4111111111111111"}
    out = keep(record(prompt=f"Human: {EMAIL}", completion=OPENAI_KEY, error=f"401 for {BEARER}",
                      user_id=EMAIL, prompt_tokens=4111111111111111, **ids))
    assert out.fields == {"prompt": "Human: [REDACTED:email]", "completion": "[REDACTED:api_key]",
                          "error": "401 for [REDACTED:bearer]", "user_id": "[REDACTED:email]",
                          "prompt_tokens": 4111111111111111, **ids}


def test_size_caps_apply_after_redaction_so_no_part_of_a_secret_survives_the_cut():
    prompt = "Human: " + "x" * 59 + " " + OPENAI_KEY  # cut to 90 bytes first, the key's start would survive
    out = RecordFilter(ContentPolicy(), Redactor(BUILTINS), 90)(record(prompt=prompt))
    assert out.fields["prompt"].endswith("[REDACTED:api_key]") and "sk-proj" not in out.fields["prompt"]
    cut = RecordFilter(ContentPolicy(), None, 90)(record(prompt=prompt))  # without redaction: cut, flagged
    assert cut.fields["truncated"] is True and "sk-proj" in cut.fields["prompt"]


def test_off_means_no_redactor_at_all():
    settings = ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m")
    assert RecordFilter.from_settings(settings).redactor is None
    assert RecordFilter.from_settings(settings, redact=str.upper).redactor is not None


def test_settings_from_arguments_and_environment(monkeypatch):
    base = {"url": "https://a.example", "api_key": "k", "model_id": "m"}
    monkeypatch.setenv("ARTHUR_REDACT", "builtin")
    monkeypatch.setenv("ARTHUR_REDACT_PATTERNS", r"employee=EMP-\d{6}")
    settings = ArthurSettings.resolve(**base)
    assert settings.redact_builtins == tuple(BUILTINS)
    assert settings.redact_patterns == (("employee", r"EMP-\d{6}"),)
    explicit = ArthurSettings.resolve(**base, redact_builtins=["card"], redact_patterns={"x": "X+"})
    assert (explicit.redact_builtins, explicit.redact_patterns) == (("card",), (("x", "X+"),))


@pytest.mark.parametrize("variable, value", [
    ("ARTHUR_REDACT", "emial"),
    ("ARTHUR_REDACT_PATTERNS", "broken=("),
    ("ARTHUR_SEND_CONTENT", "flase"),
])
def test_a_bad_privacy_environment_value_disables_the_exporter_rather_than_leak(monkeypatch, tmp_path, caplog,
                                                                                variable, value):
    """Other settings fall back to their default; these must not: a typo would send what it meant to hide."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m")
    with caplog.at_level(logging.ERROR):
        exporter = ArthurSpanExporter(url="https://a.example", api_key="k", model_id="m", spool_dir=tmp_path)
    assert "Arthur exporter disabled" in caplog.text and variable in caplog.text
    assert exporter.export([_span(1, "hello")]).name == "FAILURE"  # a generation, not spooled
    exporter.shutdown()


def test_a_bad_privacy_argument_raises_value_error():
    with pytest.raises(ValueError, match="unknown built-in"):
        ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m", redact_builtins="emial")


# --- end to end: neither in the spool file nor in any request body ----------------------------------


class Unreachable:
    """A transport for which Arthur is down: records stay in the spool."""

    def send(self, records):
        raise RetryableError("down")

    def close(self):
        pass


def _span(span_id: int, content: str) -> ReadableSpan:
    messages = json.dumps([{"role": "user", "parts": [{"type": "text", "content": content}]}])
    reply = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": f"echo {content}"}]}])
    return ReadableSpan(name="chat", context=SpanContext(0xABC, span_id, False), start_time=1, end_time=2_000_000,
                        attributes={"gen_ai.operation.name": "chat", "gen_ai.input.messages": messages,
                                    "gen_ai.output.messages": reply, "gen_ai.usage.input_tokens": 7})


def _spool_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in directory.rglob("*") if path.is_file())


BEARER_TOKEN = BEARER.split()[1]
SECRETS = (EMAIL, OPENAI_KEY, "4111111111111111", "EMP-123456", "Acme Corp", BEARER_TOKEN, JWT)
TEXT = (f"I am {EMAIL}, employee EMP-123456 of Acme Corp; card 4111111111111111, key {OPENAI_KEY}, "
        f"header {BEARER}, token {JWT}")


def test_positive_control_without_redaction_the_secret_is_in_the_spool_file(tmp_path):
    """The checks below can see a secret when there is one."""
    settings = ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m", spool_dir=tmp_path)
    pipeline = Pipeline(settings, transport=Unreachable(), retry_policy=QUICK)
    pipeline.submit([record(prompt=TEXT)])
    assert all(secret.encode() in _spool_bytes(tmp_path) for secret in SECRETS)
    pipeline.shutdown(timeout=0.1)


def test_redacted_values_reach_neither_the_spool_file_nor_any_request_body(local_arthur, new_model, tmp_path,
                                                                         monkeypatch):
    model_id = new_model()
    bodies: list[bytes] = []
    send = HTTPConnectionPool.urlopen

    def recording(self, method, url, body=None, **kwargs):  # every request of this process (urllib3 under requests too)
        bodies.append(body if isinstance(body, bytes) else str(body or "").encode())
        return send(self, method, url, body=body, **kwargs)

    monkeypatch.setattr(HTTPConnectionPool, "urlopen", recording)

    def hook(text):
        return text.replace("Acme Corp", "[REDACTED:customer]")

    exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, allow_insecure=True,
                                  model_id=model_id, spool_dir=tmp_path, redact_builtins="builtin",
                                  redact_patterns=r"employee=EMP-\d{6}", redact=hook, retry_policy=QUICK,
                                  delivery="thread")  # the recorder sees this process's requests only
    local_arthur.faults.set(Faults(rate_503=1.0))  # Arthur down: the records wait in the spool
    try:
        assert exporter.export([_span(1, TEXT), _span(2, TEXT)]).name == "SUCCESS"
        spooled = _spool_bytes(tmp_path)  # every byte of the directory, the WAL included
        assert b"[REDACTED:email]" in spooled and b"[REDACTED:customer]" in spooled
        assert not [secret for secret in SECRETS if secret.encode() in spooled]
    finally:
        local_arthur.faults.set(Faults())
    assert exporter.force_flush(10_000)
    exporter.shutdown()

    sent = b"".join(bodies)
    assert b"[REDACTED:api_key]" in sent and b"[REDACTED:card]" in sent and b"[REDACTED:employee]" in sent
    assert b"[REDACTED:bearer]" in sent and b"[REDACTED:jwt]" in sent
    assert not [secret for secret in SECRETS if secret.encode() in sent]
    stored = local_arthur.inferences(model_id)
    assert len(stored) == 2
    for row in stored:
        data = row["inference_data"]
        assert data["prompt"] == ("Human: I am [REDACTED:email], employee [REDACTED:employee] of [REDACTED:customer];"
                                  " card [REDACTED:card], key [REDACTED:api_key], header [REDACTED:bearer],"
                                  " token [REDACTED:jwt]")
        assert data["completion"].startswith("echo I am [REDACTED:email]") and data["prompt_tokens"] == 7
    assert not [secret for secret in SECRETS if secret in json.dumps(stored)]
    assert not [secret for secret in SECRETS if secret.encode() in _spool_bytes(tmp_path)]
