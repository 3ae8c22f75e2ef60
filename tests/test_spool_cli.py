"""``otel-arthur spool``: stats, dead-letters, replay and purge, against the local Arthur."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import uuid

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from otel_arthur import cli, exit_codes, spool_cli
from otel_arthur.config import ArthurSettings, EngineSettings
from otel_arthur.destinations.engine import EngineDestination
from otel_arthur.destinations.v3 import destination
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import InferenceRecord
from otel_arthur.pipeline import Pipeline
from otel_arthur.privacy import CONTENT_NOT_CAPTURED
from otel_arthur.retry import RetryPolicy
from otel_arthur.spool import FILE_NAME, Refused, Spool

QUICK = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=1)


@pytest.fixture(autouse=True)
def clean_env(arthur_env):
    return arthur_env


@pytest.fixture
def spool_dir(tmp_path):
    return tmp_path / "spool"


def records(count: int) -> list[InferenceRecord]:
    return [InferenceRecord(f"r-{uuid.uuid4().hex}", "2024-05-01T12:00:00+00:00",
                            {"prompt": "Human: hi", "completion": "hello", "prompt_tokens": 3}) for _ in range(count)]


def settings_for(local_arthur, model_id, spool_dir, **overrides) -> ArthurSettings:
    options = {"url": local_arthur.url, "api_key": local_arthur.api_key, "allow_insecure": True,
               "model_id": model_id, "spool_dir": spool_dir} | overrides
    return ArthurSettings.resolve(**options)


def refused_by_arthur(local_arthur, settings, count: int) -> None:
    """``count`` records Arthur refuses (per-record 400 inside the 207): dead letters with its message."""
    local_arthur.faults.set(Faults(rate_record_400=1.0))
    try:
        pipeline = Pipeline(settings, retry_policy=QUICK)
        pipeline.submit(records(count))
        assert not pipeline.force_flush(timeout=10)  # refused, not delivered
        assert pipeline.stats().dead_lettered == count
        pipeline.shutdown()
    finally:
        local_arthur.faults.set(Faults())


def flags(local_arthur, model_id, spool_dir, api_key=None) -> list[str]:
    return ["--spool-dir", str(spool_dir), "--url", local_arthur.url, "--api-key", api_key or local_arthur.api_key,
            "--allow-insecure", "--model-id", model_id]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- stats and dead-letters -------------------------------------------------------------------------


def test_stats_of_a_directory_that_does_not_exist_creates_nothing(capsys, spool_dir):
    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir))
    assert code == 0 and "nothing has been spooled there" in out
    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir), "--json")
    assert code == 0 and json.loads(out)["exists"] is False and json.loads(out)["depth"] == 0
    assert not spool_dir.exists()


def test_stats_and_dead_letters_show_what_waits_and_arthurs_messages(capsys, local_arthur, new_model, spool_dir):
    model_id = new_model()
    settings = settings_for(local_arthur, model_id, spool_dir)
    refused_by_arthur(local_arthur, settings, 3)
    waiting = Spool(spool_dir, "http://elsewhere.example other-model", 1_000_000)
    waiting.append(records(2))
    waiting.close()

    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir), "--json")
    document = json.loads(out)
    assert code == 0
    assert (document["depth"], document["in_flight"], document["dead_letters"]) == (
        2, 0, {"total": 3, "by_reason": {"record_rejected": 3}})
    assert document["bytes"] > 0 and document["oldest_age_seconds"] >= 0
    by_destination = {d["destination"]: d for d in document["destinations"]}
    assert by_destination[destination(settings)]["dead_letters"] == {"record_rejected": 3}
    assert by_destination["http://elsewhere.example other-model"]["pending"] == 2

    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir))
    assert code == 0 and "2 records (0 in flight)" in out and "dead letters  3 (record_rejected 3)" in out

    code, out, _ = run(capsys, "spool", "dead-letters", "--spool-dir", str(spool_dir), "--json")
    letters = json.loads(out)
    assert code == 0 and len(letters) == 3
    assert letters[0]["message"] == "400: fault injected: record 400" and letters[0]["reason"] == "record_rejected"
    assert letters[0]["record"]["prompt"] == "Human: hi" and letters[0]["destination"] == destination(settings)

    code, out, _ = run(capsys, "spool", "dead-letters", "--spool-dir", str(spool_dir), "--limit", "1")
    assert code == 0 and out.count("400: fault injected") == 1 and "the newest 1 of 3 dead letters" in out


# --- replay -----------------------------------------------------------------------------------------


def test_replay_after_the_fix_delivers_the_dead_letters(capsys, local_arthur, new_model, spool_dir):
    model_id = new_model()
    refused_by_arthur(local_arthur, settings_for(local_arthur, model_id, spool_dir), 5)
    assert local_arthur.inferences(model_id) == []

    code, out, _ = run(capsys, "spool", "replay", *flags(local_arthur, model_id, spool_dir))
    assert code == exit_codes.OK, out
    assert "re-queued 5 dead letters" in out and "delivered 5, refused again 0, still waiting 0" in out
    assert len(local_arthur.inferences(model_id)) == 5
    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir), "--json")
    assert json.loads(out)["dead_letters"]["total"] == 0 and json.loads(out)["depth"] == 0


def test_replay_delivers_records_refused_before_content_free_records_got_their_marker(capsys, local_arthur,
                                                                                     new_model, spool_dir):
    """A record without a prompt used to be refused ('missing required input attribute'); after the upgrade
    replay delivers it, with the marker the binding now puts in the input attribute."""
    model_id = new_model()
    settings = settings_for(local_arthur, model_id, spool_dir)
    spool = Spool(spool_dir, destination(settings), 1_000_000)
    spool.append([InferenceRecord("old-1", "2024-05-01T12:00:00+00:00", {"prompt_tokens": 4})])
    [claimed] = spool.claim(1)
    spool.settle(refused=[Refused(claimed.seq, "record_rejected", "400: missing required input attribute 'prompt'")])
    spool.close()

    code, out, _ = run(capsys, "spool", "replay", *flags(local_arthur, model_id, spool_dir))
    assert code == exit_codes.OK, out
    [row] = local_arthur.inferences(model_id)
    assert row["inference_data"]["prompt"] == CONTENT_NOT_CAPTURED and row["inference_data"]["prompt_tokens"] == 4


def test_replay_moves_nothing_while_arthur_refuses_the_set_up(capsys, local_arthur, new_model, spool_dir):
    model_id = new_model()
    refused_by_arthur(local_arthur, settings_for(local_arthur, model_id, spool_dir), 2)
    code, out, err = run(capsys, "spool", "replay", *flags(local_arthur, model_id, spool_dir, api_key="wrong-key"))
    assert code == exit_codes.REFUSED
    assert err.count("\n") == 1 and "error: Arthur refuses the set-up, nothing re-queued" in err and "401" in err
    assert "wrong-key" not in out + err
    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir), "--json")
    assert json.loads(out)["dead_letters"]["total"] == 2 and json.loads(out)["depth"] == 0


def test_replay_reports_records_refused_again(capsys, local_arthur, new_model, spool_dir):
    model_id = new_model()
    settings = settings_for(local_arthur, model_id, spool_dir)
    refused_by_arthur(local_arthur, settings, 2)
    local_arthur.faults.set(Faults(rate_record_400=1.0))  # not fixed after all
    try:
        code, out, _ = run(capsys, "spool", "replay", *flags(local_arthur, model_id, spool_dir))
    finally:
        local_arthur.faults.set(Faults())
    assert code == exit_codes.INCOMPLETE and "delivered 0, refused again 2" in out


def test_replay_without_arthur_settings_needs_requeue_only(capsys, local_arthur, new_model, spool_dir):
    model_id = new_model()
    refused_by_arthur(local_arthur, settings_for(local_arthur, model_id, spool_dir), 2)
    code, _, err = run(capsys, "spool", "replay", "--spool-dir", str(spool_dir))
    assert code == exit_codes.CONFIGURATION and "no Arthur URL: pass --url" in err and "--requeue-only" in err
    code, out, _ = run(capsys, "spool", "replay", "--spool-dir", str(spool_dir), "--requeue-only")
    assert code == exit_codes.OK and "re-queued 2 dead letters" in out
    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir), "--json")
    assert (json.loads(out)["depth"], json.loads(out)["dead_letters"]["total"]) == (2, 0)
    pipeline = Pipeline(settings_for(local_arthur, model_id, spool_dir), retry_policy=QUICK)  # the exporter, later
    assert pipeline.force_flush(timeout=10)
    pipeline.shutdown()
    assert len(local_arthur.inferences(model_id)) == 2


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_on_a_terminal_and_logs_sparingly_elsewhere(caplog):
    clock = FakeClock()
    terminal = Terminal()
    progress = spool_cli.Progress(1000, "delivering", terminal, clock)
    progress.update(10)
    assert terminal.getvalue() == ""  # short runs stay quiet
    clock.now += 2
    progress.update(200)
    assert terminal.getvalue() == "\r\033[Kdelivering 200/1000 (20%) · 100 records/s · ETA 8s"
    clock.now += 0.05
    progress.update(205)  # too soon to redraw
    assert terminal.getvalue().count("delivering") == 1
    progress.close()
    assert terminal.getvalue().endswith("\r\033[K")

    clock = FakeClock()
    pipe = io.StringIO()
    progress = spool_cli.Progress(1000, "delivering", pipe, clock)
    with caplog.at_level(logging.INFO, logger="otel_arthur.spool_cli"):
        for _ in range(30):
            clock.now += 1
            progress.update(int((clock.now - 100) * 30))
    assert pipe.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "otel_arthur.spool_cli"]
    assert len(lines) == 3 and lines[0] == "delivering 30/1000 (3%) · 30 records/s · ETA 32s"


# --- purge ------------------------------------------------------------------------------------------


class AnswerOnTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def three_dead_letters(spool_dir):
    spool = Spool(spool_dir, "http://arthur.example m", 1_000_000)
    spool.append(records(3))
    spool.settle(refused=[Refused(c.seq, "record_rejected", "400: no") for c in spool.claim(3)])
    spool.append(records(1))
    spool.close()


def _dead_letters(spool_dir) -> int:
    spool = Spool(spool_dir, "", 1)
    try:
        return spool.gauges().dead_letters
    finally:
        spool.close()


def test_purge_without_a_terminal_and_without_yes_refuses(capsys, monkeypatch, spool_dir, three_dead_letters):
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped input is not a confirmation
    code, out, err = run(capsys, "spool", "purge", "--spool-dir", str(spool_dir))
    assert code == exit_codes.USAGE
    assert err == "error: refusing to delete 3 dead letters without confirmation: stdin is not a terminal; pass --yes\n"
    assert _dead_letters(spool_dir) == 3


@pytest.mark.parametrize("answer, code, left", [("y\n", exit_codes.OK, 0), ("n\n", exit_codes.INCOMPLETE, 3),
                                                ("\n", exit_codes.INCOMPLETE, 3)])
def test_purge_asks_on_a_terminal(capsys, monkeypatch, spool_dir, three_dead_letters, answer, code, left):
    monkeypatch.setattr(sys, "stdin", AnswerOnTerminal(answer))
    result, out, err = run(capsys, "spool", "purge", "--spool-dir", str(spool_dir))
    assert result == code and "Delete 3 dead letters" in err and "[y/N]" in err
    assert _dead_letters(spool_dir) == left


def test_purge_yes_and_pending(capsys, spool_dir, three_dead_letters):
    code, out, _ = run(capsys, "spool", "purge", "--spool-dir", str(spool_dir), "--pending", "--yes")
    assert code == 0 and out.startswith("deleted 4 dead letters and waiting records")
    code, out, _ = run(capsys, "spool", "purge", "--spool-dir", str(spool_dir), "--yes")
    assert code == 0 and out.startswith("nothing to purge")


def test_purge_never_waits_for_input_in_a_script(spool_dir, three_dead_letters):
    done = subprocess.run([sys.executable, "-m", "otel_arthur.cli", "spool", "purge", "--spool-dir", str(spool_dir)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == exit_codes.USAGE and "pass --yes" in done.stderr and "Traceback" not in done.stderr


def test_an_unreadable_spool_is_one_line_and_its_exit_code(capsys, spool_dir):
    spool_dir.mkdir()
    (spool_dir / FILE_NAME).write_bytes(b"this is not a database" * 100)
    code, out, err = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir))
    assert code == exit_codes.SPOOL and err.startswith(f"error: cannot use the spool in {spool_dir}")
    assert err.count("\n") == 1


# --- Arthur Engine rows -----------------------------------------------------------------------------


def llm_spans(count: int) -> list[ReadableSpan]:
    trace_id = uuid.uuid4().int >> 1
    return [ReadableSpan(name=f"chat {n}", context=SpanContext(trace_id, n + 1, False), start_time=1, end_time=2,
                         resource=Resource.create({"service.name": "spool-cli"}),
                         attributes={"openinference.span.kind": "LLM", "llm.model_name": "gpt-test"})
            for n in range(count)]


def engine_flags(local_engine, spool_dir, api_key=None) -> list[str]:
    return ["--spool-dir", str(spool_dir), "--engine-url", local_engine.url,
            "--engine-api-key", api_key or local_engine.api_key, "--allow-insecure"]


def refused_by_the_engine(local_engine, spool_dir, count: int) -> EngineDestination:
    """``count`` spans the Engine refuses whole (every span rejected: 422): dead letters with its reason."""
    destination = EngineDestination(EngineSettings.resolve(engine_url=local_engine.url,
                                                           engine_api_key=local_engine.api_key,
                                                           allow_insecure=True, spool_dir=spool_dir))
    local_engine.faults.set(Faults(rate_record_400=1.0))
    try:
        pipeline = Pipeline(to=destination, retry_policy=QUICK)
        pipeline.submit(destination.items(llm_spans(count)).records)
        assert not pipeline.force_flush(timeout=10)
        assert pipeline.stats().dead_lettered == count
        pipeline.shutdown()
    finally:
        local_engine.faults.set(Faults())
    return destination


def test_engine_dead_letters_show_the_span_and_the_engines_reason(capsys, local_arthur, local_engine, new_model,
                                                                  spool_dir):
    refused_by_arthur(local_arthur, settings_for(local_arthur, new_model(), spool_dir), 1)
    destination = refused_by_the_engine(local_engine, spool_dir, 2)

    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir), "--json")
    kinds = {d["destination"]: d["kind"] for d in json.loads(out)["destinations"]}
    assert code == 0 and kinds[destination.key] == "engine" and sorted(kinds.values()) == ["engine", "v3"]

    code, out, _ = run(capsys, "spool", "dead-letters", "--spool-dir", str(spool_dir), "--destination", "engine",
                       "--json")
    letters = json.loads(out)
    assert code == 0 and [letter["kind"] for letter in letters] == ["engine", "engine"]
    first = letters[0]
    assert first["destination"] == destination.key and first["reason"] == "batch_refused"
    assert first["message"].startswith("sending traces: Arthur Engine answered 422")
    assert "fault injected" in first["message"]
    assert first["name"] == "chat 0" and first["span_id"] == f"{1:016x}" and len(first["trace_id"]) == 32
    assert first["span"]["attributes"]["llm.model_name"] == "gpt-test"
    assert first["span"]["resource"]["service.name"] == "spool-cli"

    code, out, _ = run(capsys, "spool", "dead-letters", "--spool-dir", str(spool_dir))
    assert code == 0 and f"span {first['trace_id']}/{first['span_id']} 'chat 0'  {destination.key}" in out
    assert "400: fault injected: record 400" in out  # the v3 one, beside them
    code, out, _ = run(capsys, "spool", "dead-letters", "--spool-dir", str(spool_dir), "--destination", "v3")
    assert code == 0 and "span " not in out and "1 dead letters" in out


def test_replay_of_the_engine_delivers_its_spans_and_leaves_v3_alone(capsys, local_arthur, local_engine, new_model,
                                                                     spool_dir):
    refused_by_arthur(local_arthur, settings_for(local_arthur, new_model(), spool_dir), 1)
    refused_by_the_engine(local_engine, spool_dir, 3)
    _, out, _ = run(capsys, "spool", "dead-letters", "--spool-dir", str(spool_dir), "--destination", "engine", "--json")
    [trace_id] = {letter["trace_id"] for letter in json.loads(out)}
    code, out, err = run(capsys, "spool", "replay", "--destination", "engine",
                         *engine_flags(local_engine, spool_dir, api_key="wrong-engine-key"))
    assert code == exit_codes.REFUSED and "Arthur Engine refuses the set-up, nothing re-queued" in err
    assert "wrong-engine-key" not in out + err

    code, out, _ = run(capsys, "spool", "replay", "--destination", "engine", *engine_flags(local_engine, spool_dir))
    assert code == exit_codes.OK, out
    assert "re-queued 3 dead letters" in out and "delivered 3, refused again 0, still waiting 0" in out
    assert sorted(s["name"] for s in local_engine.spans(trace_id=trace_id)) == ["chat 0", "chat 1", "chat 2"]
    code, out, _ = run(capsys, "spool", "stats", "--spool-dir", str(spool_dir), "--json")
    assert json.loads(out)["dead_letters"] == {"total": 1, "by_reason": {"record_rejected": 1}}  # v3's, untouched


def test_purge_of_one_destination(capsys, local_arthur, local_engine, new_model, spool_dir):
    refused_by_arthur(local_arthur, settings_for(local_arthur, new_model(), spool_dir), 1)
    refused_by_the_engine(local_engine, spool_dir, 2)
    code, out, _ = run(capsys, "spool", "purge", "--spool-dir", str(spool_dir), "--destination", "engine", "--yes")
    assert code == 0 and out.startswith("deleted 2 dead letters of destination engine")
    code, out, _ = run(capsys, "spool", "dead-letters", "--spool-dir", str(spool_dir), "--json")
    assert [letter["kind"] for letter in json.loads(out)] == ["v3"]
