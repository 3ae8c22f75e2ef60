"""The Engine's chaos suite: delivery to Arthur Engine proven against outages, faults, refusals and a wrong key.

The Engine's own rules on top of test_chaos.py's: a span it refuses inside a 206 is not said, so it
is counted as dropped (``engine_rejected``), never sent again; a request it refuses whole (422)
becomes dead letters with its reason. Behaviour is asserted, never timing. Each test's figures are
printed at the end of the module's run, as test_chaos.py prints its own.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from arthurmodel import stored
from opentelemetry.sdk.trace import ReadableSpan
from servehelpers import wait_for
from spanfixtures import generation_spans, reidentified

from otel_arthur import ArthurSpanExporter
from otel_arthur.config import ARTHUR_ENGINE_API_KEY, ARTHUR_TASK_ID
from otel_arthur.local import arthur, engine
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.pipeline import DOWN_AFTER_FAILURES
from otel_arthur.retry import RetryPolicy
from otel_arthur.spool import FILE_NAME
from otel_arthur.stats import DropReason

QUICK = RetryPolicy(initial_interval=0.05, max_interval=0.5, max_elapsed=10)
TRACES = f"POST {engine.TRACES_PATH}"
# A quarter of requests fail, of every kind: 429 (Retry-After 1 s), 500, 503, a dropped connection, a slow answer
# (stored, answered within the client's 1 s timeout), a stall the client gives up on; and 4% of the spans of the
# requests that do arrive are refused inside the 206.
ENGINE_FAULTS = Faults(rate_429=0.05, rate_500=0.04, rate_503=0.04, rate_drop=0.04, rate_slow=0.04, slow_seconds=0.2,
                       rate_stall=0.04, stall_seconds=1.5, rate_record_400=0.02, rate_record_500=0.02, seed=20261212)
EVERY_SPAN_REFUSED = Faults(rate_record_400=1.0)  # the Engine answers 422 to every request


def fresh_spans(count: int, rng: random.Random) -> list[ReadableSpan]:
    """Recorded generation spans (AI spans for the Engine, records for v3) under new identities."""
    templates = generation_spans()
    return [reidentified(templates[n % len(templates)], rng.getrandbits(128), rng.getrandbits(64) | 1)
            for n in range(count)]


def ids(spans: Sequence[ReadableSpan]) -> list[str]:
    """``<trace_id>-<span_id>``: v3's partner inference id and the Engine spool row's identity."""
    return [f"{s.context.trace_id:032x}-{s.context.span_id:016x}" for s in spans]


def export(exporter: ArthurSpanExporter, spans: Sequence[ReadableSpan], chunk: int = 20) -> None:
    """As a BatchSpanProcessor would: one export per chunk, each spooled at once."""
    for start in range(0, len(spans), chunk):
        assert exporter.export(spans[start:start + chunk]).name == "SUCCESS"


def engine_stored(local_engine: engine.RunningLocalEngine) -> list[str]:
    """Every span the Engine stored, duplicates included, as ``<trace_id>-<span_id>``."""
    return [f"{s['trace_id']}-{s['span_id']}" for s in local_engine.spans()]


def engine_dead_letters(spool_dir: Path) -> list[tuple[str, str, str]]:
    """(span id, reason, message) of the Engine's dead letters, read straight from the file (see otel_arthur.spool)."""
    with sqlite3.connect(spool_dir / FILE_NAME) as db:
        rows = db.execute("SELECT body, reason, message FROM dead_letters WHERE destination LIKE 'engine %'"
                          " ORDER BY seq").fetchall()
    return [(json.loads(body)["id"], reason, message) for body, reason, message in rows]


def traces_requests(local_engine: engine.RunningLocalEngine) -> Counter[str]:
    return Counter(local_engine.stats()["requests"].get(TRACES, {}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_both_destinations_each_down_in_turn_the_other_unaffected_then_all_once(
        arthur_with_model, arthur_env, tmp_path, figures):
    server, model_id = arthur_with_model
    engine_port = free_port()  # nothing listens there yet: the Engine is down
    exporter = ArthurSpanExporter(url=server.url, api_key=arthur.DEFAULT_API_KEY, model_id=model_id,
                                  engine_url=f"http://127.0.0.1:{engine_port}", engine_api_key=engine.DEFAULT_API_KEY,
                                  allow_insecure=True, spool_dir=str(tmp_path / "spool"), timeout=1,
                                  retry_policy=QUICK)
    rng = random.Random(12)
    try:
        started = time.monotonic()
        first = fresh_spans(300, rng)
        export(exporter, first)
        # v3 gets every record while the Engine is down.
        wait_for(lambda: set(stored(server, model_id)[0]) == set(ids(first)), timeout=60)
        wait_for(lambda: exporter.stats("engine").retried > 0, timeout=30)  # a delivery process reports its retries
        assert exporter.stats("engine").delivered == 0
        v3_while_engine_down = time.monotonic() - started

        with engine.running(tmp_path / "engine.sqlite3", port=engine_port) as local_engine:
            wait_for(lambda: set(engine_stored(local_engine)) == set(ids(first)), timeout=60)
            engine_caught_up = time.monotonic() - started

            server.stop()  # now v3 is down, and the Engine must not notice
            second = fresh_spans(300, rng)
            export(exporter, second)
            wait_for(lambda: set(engine_stored(local_engine)) == set(ids(first + second)), timeout=60)
            assert exporter.stats("v3").delivered == 300
            v3_requests_while_down = exporter.stats("v3").retried

            server.start()
            assert exporter.force_flush(timeout_millis=60_000)
            seconds = time.monotonic() - started
            on_engine = engine_stored(local_engine)
        v3_stats, engine_stats = exporter.stats("v3"), exporter.stats("engine")
    finally:
        exporter.shutdown(timeout_millis=1000)

    on_v3, v3_duplicates = stored(server, model_id)
    everything = sorted(ids(first + second))
    assert sorted(on_v3) == everything and v3_duplicates == 0  # nothing duplicated by span id, on either side
    assert sorted(on_engine) == everything
    for stats in (v3_stats, engine_stats):
        assert (stats.delivered, stats.dead_lettered, stats.dropped) == (600, 0, {})
    figures["1. both destinations, each down in turn"] = {
        "sent": 600, "v3_stored": len(on_v3), "engine_stored": len(on_engine), "duplicated": 0,
        "v3_complete_while_engine_down_s": round(v3_while_engine_down, 1),
        "engine_complete_after_start_s": round(engine_caught_up, 1),
        "v3_retried_while_down": v3_requests_while_down, "engine_retried_while_down": engine_stats.retried,
        "seconds": round(seconds, 1)}


def test_spans_refused_inside_a_206_are_dropped_not_delivered(arthur_env, tmp_path):
    with engine.running(tmp_path / "engine.sqlite3", faults=Faults(rate_record_400=0.3, seed=7)) as local_engine:
        exporter = ArthurSpanExporter(engine_url=local_engine.url, engine_api_key=local_engine.api_key,
                                      allow_insecure=True, spool_dir=str(tmp_path / "spool"), retry_policy=QUICK)
        try:
            export(exporter, fresh_spans(40, random.Random(3)), chunk=40)
            exporter.force_flush(timeout_millis=30_000)  # False: some were dropped
            stats = exporter.stats("engine")
        finally:
            exporter.shutdown(timeout_millis=1000)
        kept, partial = len(engine_stored(local_engine)), traces_requests(local_engine)["206"]
    refused = stats.dropped[DropReason.ENGINE_REJECTED]
    assert 0 < refused < 40 and partial >= 1
    assert stats.delivered == kept == 40 - refused  # each span counted once: delivered, or dropped
    assert stats.spool_depth == 0 and stats.dead_lettered == 0


def test_engine_faults_every_span_stored_once_or_counted(arthur_env, tmp_path, figures):
    spool_dir = tmp_path / "spool"
    with engine.running(tmp_path / "engine.sqlite3", faults=EVERY_SPAN_REFUSED) as local_engine:
        exporter = ArthurSpanExporter(engine_url=local_engine.url, engine_api_key=local_engine.api_key,
                                      allow_insecure=True, spool_dir=str(spool_dir), timeout=1, retry_policy=QUICK)
        rng = random.Random(4)
        started = time.monotonic()
        try:
            refused_whole = fresh_spans(30, rng)  # first a spell where the Engine refuses every request: 422s
            export(exporter, refused_whole)
            exporter.force_flush(timeout_millis=30_000)  # False: dead letters
            injected = Counter(local_engine.faults.describe()["injected"])
            assert exporter.stats("engine").dead_lettered == 30 and traces_requests(local_engine)["422"] >= 1

            local_engine.faults.set(ENGINE_FAULTS)
            chaotic = fresh_spans(800, rng)
            for start in range(0, len(chaotic), 10):
                # One request's worth at a time (the Engine's batch is 512 spans): many requests, each drawing faults.
                export(exporter, chaotic[start:start + 10])
                exporter.force_flush(timeout_millis=60_000)  # False after a refusal: every span is settled all the same
            seconds = time.monotonic() - started
            stats = exporter.stats("engine")
            injected.update(local_engine.faults.describe()["injected"])
            requests_by_status = traces_requests(local_engine)
            fault_answers = sum(local_engine.stats()["requests"].get("POST <fault injected>", {}).values())
        finally:
            exporter.shutdown(timeout_millis=1000)
        on_engine = engine_stored(local_engine)

    sent = set(ids(refused_whole + chaotic))
    unique = set(on_engine)
    dead = engine_dead_letters(spool_dir)
    dead_ids = {span_id for span_id, _, _ in dead}
    rejected = stats.dropped.get(DropReason.ENGINE_REJECTED, 0)
    assert stats.spool_depth == 0 and set(stats.dropped) <= {DropReason.ENGINE_REJECTED}
    assert unique <= sent and dead_ids == set(ids(refused_whole)) and not unique & dead_ids
    assert len(dead) == stats.dead_lettered == 30
    assert all(reason == "batch_refused" and "422" in message and "Invalid span data format" in message
               for _, reason, message in dead)  # the Engine's reason, kept with each dead letter
    # Each span sent has one fate in the exporter's counts: delivered, refused inside a 206, or dead-lettered.
    assert stats.delivered + rejected + stats.dead_lettered == len(sent)
    # And on the Engine's side: a span not stored is one it refused. A request whose answer never came may have
    # been stored and is sent again: only those may be stored twice, or be stored and refused on the re-send.
    missing = sent - unique - dead_ids
    duplicated = len(on_engine) - len(unique)
    assert len(missing) <= rejected and rejected - len(missing) + duplicated <= stats.resent_unknown_outcome
    assert requests_by_status["206"] >= 1 and injected["stall"] >= 1 and stats.resent_unknown_outcome >= 1
    figures["2. Engine faults"] = {
        "sent": len(sent), "stored": len(unique), "duplicated": duplicated, "refused_in_206": rejected,
        "dead_letters_422": len(dead), "resent_unknown_outcome": stats.resent_unknown_outcome,
        "span_retries": stats.retried, "answered": dict(sorted(requests_by_status.items())),
        "fault_answers": fault_answers,
        "faults_injected": dict(injected), "seconds": round(seconds, 1)}


def test_wrong_engine_key_one_error_line_no_secret_and_the_spans_wait(arthur_env, tmp_path, caplog, figures):
    spool_dir, secret = tmp_path / "spool", "sk-engine-wr0ng-k3y-0123456789"
    spans = fresh_spans(100, random.Random(5))
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    with engine.running(tmp_path / "engine.sqlite3") as local_engine:
        exporter = ArthurSpanExporter(engine_url=local_engine.url, engine_api_key=secret, allow_insecure=True,
                                      spool_dir=str(spool_dir), retry_policy=QUICK)
        try:
            export(exporter, spans)
            wait_for(lambda: traces_requests(local_engine)["401"] >= 3)  # refused, and tried again
            refused = exporter.stats("engine")
        finally:
            exporter.shutdown(timeout_millis=1000)
        lines = [caplog.handler.format(record) for record in caplog.records]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "refused the API key" in errors[0] and ARTHUR_ENGINE_API_KEY in errors[0]
        assert any(r.name.startswith("urllib3") and r.levelno == logging.DEBUG for r in caplog.records)
        assert not [line for line in lines if secret in line]
        assert not [path for path in spool_dir.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
        assert (refused.delivered, refused.dead_lettered, refused.spool_depth) == (0, 0, 100)

        # The key is fixed: a new process on the same spool delivers what waited.
        fixed = ArthurSpanExporter(engine_url=local_engine.url, engine_api_key=local_engine.api_key,
                                   allow_insecure=True, spool_dir=str(spool_dir), retry_policy=QUICK)
        try:
            assert fixed.force_flush(timeout_millis=30_000)
            delivered = fixed.stats("engine").delivered
        finally:
            fixed.shutdown(timeout_millis=1000)
        on_engine = engine_stored(local_engine)
        attempts = traces_requests(local_engine)["401"]
    assert delivered == 100 and sorted(on_engine) == sorted(ids(spans))
    figures["3. wrong Engine key"] = {
        "sent": 100, "error_lines": len(errors), "refused_requests": attempts, "log_lines_at_debug": len(lines),
        "lines_with_secret": 0, "delivered_after_fix": delivered}


def test_a_500_with_a_task_id_set_says_an_unknown_task_is_the_usual_cause(arthur_env, tmp_path, caplog, figures):
    port, db = free_port(), tmp_path / "engine.sqlite3"
    with engine.running(db, port=port) as onboarding:
        task_id = onboarding.store.create_task("chaos")["id"]
    exporter = ArthurSpanExporter(engine_url=f"http://127.0.0.1:{port}", engine_api_key=engine.DEFAULT_API_KEY,
                                  task_id=task_id, allow_insecure=True, spool_dir=str(tmp_path / "spool"),
                                  retry_policy=QUICK)
    try:
        with engine.running(db, port=port):
            export(exporter, fresh_spans(10, random.Random(6)))
            assert exporter.force_flush(timeout_millis=30_000)  # the task was checked at start-up, and exists
        # The Engine comes back on a fresh database: it knows no such task, and its spans' foreign key fails.
        with engine.running(tmp_path / "reset-engine.sqlite3", port=port) as reset:
            export(exporter, fresh_spans(10, random.Random(7)))
            wait_for(lambda: traces_requests(reset)["500"] >= DOWN_AFTER_FAILURES)
            line = wait_for(lambda: next((r.getMessage() for r in caplog.records
                                          if r.levelno == logging.WARNING and "500" in r.getMessage()), None))
            waiting = exporter.stats("engine").spool_depth
            failed = traces_requests(reset)["500"]
            assert not reset.spans()
    finally:
        exporter.shutdown(timeout_millis=500)
    assert ARTHUR_TASK_ID in line and "unknown task id is the usual cause" in line and "FOREIGN KEY" in line
    assert waiting == 10  # kept for a fixed set-up, not dropped
    figures["4. 500 with a task id"] = {"sent": 10, "requests_500": failed, "still_spooled": waiting,
                                        "hint_in_warning": ARTHUR_TASK_ID in line}
