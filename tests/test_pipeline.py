"""The delivery pipeline against the local Arthur and scripted transports: what happens to each kind of answer."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from arthurmodel import create_model_over_http
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from otel_arthur import ArthurSpanExporter
from otel_arthur.clients.http import PermanentError, RecordResult, RetryableError
from otel_arthur.config import ArthurSettings
from otel_arthur.local import arthur
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import MAX_SHORT_TEXT_BYTES, InferenceRecord
from otel_arthur.pipeline import (
    BIND_DELAY,
    THREAD_NAME,
    Accepted,
    DeadLetterReason,
    Pipeline,
)
from otel_arthur.retry import RetryPolicy
from otel_arthur.stats import DropReason

QUICK = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=5)
JWT_PREFIX = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # base64url of the local Arthur's JWT header


def records(count: int, prefix: str = "r", prompt: str = "Human: hi") -> list[InferenceRecord]:
    return [InferenceRecord(f"{prefix}-{uuid.uuid4().hex}", "2024-05-01T12:00:00+00:00",
                            {"prompt": prompt, "completion": "hello"}) for _ in range(count)]


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def settings(local_arthur, new_model, tmp_path):
    def make(model_id=None, **overrides):
        options = {"url": local_arthur.url, "api_key": local_arthur.api_key, "allow_insecure": True,
                   "spool_dir": tmp_path / "spool"} | overrides
        return ArthurSettings.resolve(model_id=model_id or new_model(), **options)

    return make


@pytest.fixture
def pipelines():
    """``pipelines(settings, **kwargs)`` starts a Pipeline that is shut down when the test ends."""
    started: list[Pipeline] = []

    def start(settings, **kwargs) -> Pipeline:
        started.append(Pipeline(settings, retry_policy=kwargs.pop("retry_policy", QUICK), **kwargs))
        return started[-1]

    yield start
    for pipeline in started:
        pipeline.shutdown(timeout=1)


@pytest.fixture
def faults(local_arthur):
    """Set faults on the shared local Arthur for this test only."""
    yield local_arthur.faults.set
    local_arthur.faults.set(Faults())


class Scripted:
    """A transport: ``answer(records)`` decides, per call."""

    def __init__(self, answer):
        self.answer = answer
        self.sent: list[list[str]] = []

    def send(self, records):
        self.sent.append([r.partner_inference_id for r in records])
        return self.answer(records)

    def close(self):
        pass


def test_rejected_records_become_dead_letters_and_never_sink_their_batch(settings, pipelines, faults, local_arthur):
    config = settings(batch_max_records=10)
    faults(Faults(rate_record_400=0.3, seed=4))
    pipeline = pipelines(config)
    pipeline.submit(records(50))
    assert not pipeline.force_flush(timeout=10)  # some were refused: not everything was delivered
    stats = pipeline.stats()
    rejected = local_arthur.faults.describe()["injected"]["record_400"]
    assert 0 < rejected < 50 and (stats.delivered, stats.dead_lettered) == (50 - rejected, rejected)
    assert len(local_arthur.inferences(config.model_id)) == 50 - rejected
    dead = pipeline.dead_letters()
    assert len(dead) == rejected == stats.dead_letters
    assert {(d["reason"], d["message"]) for d in dead} == {(DeadLetterReason.RECORD_REJECTED,
                                                             "400: fault injected: record 400")}


def test_a_refused_request_dead_letters_its_batch_and_the_next_batch_goes_on(settings, pipelines):
    def answer(batch):
        if any(r.partner_inference_id.startswith("poison") for r in batch):
            raise PermanentError("sending inferences: Arthur answered 413: too large")
        return [RecordResult(200, "success")] * len(batch)

    transport = Scripted(answer)
    pipeline = pipelines(settings(model_id="unused", batch_max_records=2), transport=transport)
    pipeline.submit(records(2, prefix="poison") + records(2, prefix="fine"))
    assert not pipeline.force_flush(timeout=10)  # settled, but not all delivered
    assert [sent[0].split("-")[0] for sent in transport.sent] == ["poison", "fine"]  # each sent once
    assert pipeline.stats().delivered == 2
    assert [(d["reason"], d["message"]) for d in pipeline.dead_letters()] == \
        [(DeadLetterReason.BATCH_REFUSED, "sending inferences: Arthur answered 413: too large")] * 2
    pipeline.submit(records(2, prefix="later"))
    assert pipeline.force_flush(timeout=10)  # earlier refusals do not count against a later flush


def test_records_arthur_accepted_leave_the_spool_while_the_rest_of_their_batch_is_retried(settings, pipelines):
    second_attempt, release = threading.Event(), threading.Event()

    def answer(batch):
        if not second_attempt.is_set():  # the first answer: the first record is taken, the second refused for now
            second_attempt.set()
            return [RecordResult(200, "success"), RecordResult(503, "busy")]
        release.wait(10)  # the retry hangs: a crash now must not re-send the first record
        return [RecordResult(200, "success")] * len(batch)

    pipeline = pipelines(settings(model_id="unused"), transport=Scripted(answer))
    first, second = records(2)
    pipeline.submit([first, second])
    assert second_attempt.wait(10)
    assert wait_for(lambda: pipeline.stats().delivered == 1)
    assert pipeline.stats().spool_depth == 1  # only the second record is still in the spool (in flight)
    release.set()
    assert pipeline.force_flush(timeout=10)
    assert pipeline.stats().delivered == 2 and pipeline.stats().spool_depth == 0


def test_unknown_model_is_one_error_line_and_delivery_resumes_once_it_exists(settings, pipelines, local_arthur, caplog):
    partner_model_id = f"onboarded-later-{uuid.uuid4().hex[:8]}"
    pipeline = pipelines(settings(model_id=partner_model_id))
    with caplog.at_level(logging.INFO, logger="otel_arthur"):
        assert pipeline.submit(records(3))
        assert wait_for(lambda: any(r.levelno == logging.ERROR for r in caplog.records))
        assert not pipeline.force_flush(timeout=0.3)
        assert pipeline.submit(records(2))  # records keep spooling meanwhile
        create_model_over_http(local_arthur, partner_model_id)
        assert pipeline.force_flush(timeout=10)
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "refuses the set-up" in error and partner_model_id in error and "spool.sqlite3" in error
    assert any("accepts the set-up again" in r.getMessage() for r in caplog.records)
    assert pipeline.stats().delivered == 5


def test_arthur_down_then_back_is_one_line_each_way(settings, pipelines, caplog):
    failures = iter(range(5))

    def answer(batch):
        if next(failures, None) is not None:
            raise RetryableError("POST inferences: cannot connect: connection refused")
        return [RecordResult(200, "success")] * len(batch)

    with caplog.at_level(logging.INFO, logger="otel_arthur"):
        pipeline = pipelines(settings(model_id="unused"), transport=Scripted(answer))
        pipeline.submit(records(3))
        assert pipeline.force_flush(timeout=10)
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if line.startswith("Arthur unreachable")]) == 1  # not one per failure
    assert [line for line in lines if "again" in line] == ["Arthur is reachable again; delivering 3 spooled records"]


def test_two_pipelines_sharing_a_spool_deliver_each_record_once(settings, local_arthur):
    config = settings(batch_max_records=20)
    first, second = Pipeline(config, retry_policy=QUICK), Pipeline(config, retry_policy=QUICK)  # two owners
    try:
        batches = [records(25, prefix=f"b{n}") for n in range(40)]
        for n, batch in enumerate(batches):
            (first if n % 2 else second).submit(batch)
        assert first.force_flush(timeout=30) and second.force_flush(timeout=30)
        delivered = first.stats().delivered + second.stats().delivered
    finally:
        first.shutdown(timeout=1)
        second.shutdown(timeout=1)
    ids = [r["partner_inference_id"] for r in local_arthur.inferences(config.model_id)]
    assert delivered == len(ids) == len(set(ids)) == 1000  # claims are exclusive: nothing delivered twice


def test_the_worker_survives_an_unexpected_error(settings, pipelines, caplog):
    calls = []

    def answer(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("a bug in a sender")
        return [RecordResult(200, "success")] * len(batch)

    pipeline = pipelines(settings(model_id="unused"), transport=Scripted(answer))
    with caplog.at_level(logging.ERROR, logger="otel_arthur"):
        pipeline.submit(records(3))
        assert pipeline.force_flush(timeout=10)
    [logged] = [r for r in caplog.records if "Unexpected error" in r.getMessage()]
    assert logged.exc_info and "a bug in a sender" in str(logged.exc_info[1])
    assert calls == [3, 3] and pipeline.stats().delivered == 3  # released, then sent again
    assert THREAD_NAME in [t.name for t in threading.enumerate()]


def test_shutdown_leaves_the_rest_on_disk_and_says_how_much_and_where(tmp_path, caplog):
    config = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                    spool_dir=tmp_path)
    pipeline = Pipeline(config, retry_policy=QUICK)
    pipeline.submit(records(4))
    with caplog.at_level(logging.INFO, logger="otel_arthur"):
        started = time.monotonic()
        pipeline.shutdown(timeout=5)
        assert time.monotonic() - started < 5  # Arthur down: one attempt, then the rest waits on disk
        pipeline.shutdown()
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "remain" in line] == [
        f"4 records not yet delivered remain in {tmp_path / 'spool.sqlite3'}; the next process using it delivers them"
        " (last attempt: GET /users/me: cannot connect to http://127.0.0.1:9: connection refused)"]
    assert lines[-1] == "Arthur delivery already shut down, ignoring call"
    assert not pipeline.submit(records(2)) and not pipeline.force_flush(timeout=1)
    stats = pipeline.stats()
    assert stats.dropped == {DropReason.SHUTDOWN: 2} and stats.spool_depth == 4 and stats.delivered == 0


@pytest.fixture
def silent_arthur():
    """A socket that accepts connections (the kernel's backlog) and never answers: an Arthur that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield listener
    finally:
        listener.close()


def silent_settings(listener: socket.socket, spool_dir, **overrides) -> ArthurSettings:
    return ArthurSettings.resolve(url=f"http://127.0.0.1:{listener.getsockname()[1]}", api_key="k", model_id="m",
                                  allow_insecure=True, spool_dir=spool_dir, **overrides)


def connections_made(listener: socket.socket) -> int:
    """How many connections wait in the backlog of a socket that never accepted any."""
    listener.setblocking(False)
    made = 0
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return made
        made += 1


def test_a_pipeline_shut_down_at_once_with_nothing_to_deliver_never_contacts_arthur(tmp_path, silent_arthur):
    Pipeline(silent_settings(silent_arthur, tmp_path), retry_policy=QUICK).shutdown(timeout=5)  # never exported
    assert connections_made(silent_arthur) == 0


@pytest.mark.parametrize(("waiting", "request_timeout"), [(0, 10), (3, 2)],
                         ids=["nothing-to-deliver", "records-waiting"])
def test_shutdown_never_waits_for_more_than_the_request_in_flight_to_an_arthur_that_never_answers(
        tmp_path, caplog, silent_arthur, waiting, request_timeout):
    pipeline = Pipeline(silent_settings(silent_arthur, tmp_path, timeout=request_timeout), retry_policy=QUICK)
    pipeline.submit(records(waiting))
    time.sleep(0.2 if waiting else BIND_DELAY + 0.2)  # the worker is now waiting on the model request
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="otel_arthur"):
        pipeline.shutdown(timeout=20)
    if not waiting:  # nothing to deliver: the request in flight is not waited for
        assert time.monotonic() - started < request_timeout / 2
    assert connections_made(silent_arthur) == 1  # the model request in flight, and no second try at exit
    remains = [r.getMessage() for r in caplog.records if "remain" in r.getMessage()]
    assert remains == ([f"{waiting} records not yet delivered remain in {tmp_path / 'spool.sqlite3'}; the next"
                        " process using it delivers them (last attempt: GET /users/me: timed out after 2s)"]
                       if waiting else [])


def test_a_slow_arthur_gets_one_copy_per_doubling_of_the_wait_not_one_per_timeout(settings, pipelines, faults,
                                                                                     local_arthur, new_model):
    model_id = new_model()
    pipeline = pipelines(settings(model_id, timeout=0.5))
    assert wait_for(lambda: pipeline.readiness().model_fetched)
    # Every answer comes 1.5 s late, each request stored at once: a timeout is of unknown outcome.
    faults(Faults(rate_slow=1.0, slow_seconds=1.5))
    pipeline.submit(records(100))
    assert pipeline.force_flush(timeout=20)
    stats = pipeline.stats()
    ids = [row["partner_inference_id"] for row in local_arthur.inferences(model_id)]
    # Waits of 0.5 s and 1 s went unanswered, their requests stored; the third waits 2 s and is answered.
    assert (len(ids), len(set(ids)), stats.delivered) == (300, 100, 100)
    assert stats.resent_unknown_outcome == stats.retried == 200


def test_no_request_of_the_shutdown_drain_outlives_the_shutdown(settings, faults, local_arthur, new_model):
    model_id = new_model()
    drained = settings(model_id, timeout=30, batch_max_records=5)
    pipeline = Pipeline(drained, retry_policy=QUICK)
    assert wait_for(lambda: pipeline.readiness().model_fetched)
    faults(Faults(rate_slow=1.0, slow_seconds=2))  # the first batch is stored at once, answered 2 s later
    pipeline.submit(records(10))
    assert wait_for(lambda: len(local_arthur.inferences(model_id)) == 5)
    faults(Faults(rate_stall=1.0, stall_seconds=30))  # the next batch, sent by the drain, is never answered
    started = time.monotonic()
    pipeline.shutdown(timeout=4)
    assert time.monotonic() - started < 30  # returned before the stalled request could end
    # The drain's request was cut at the deadline and its batch released: another pipeline on the spool
    # delivers it now, instead of waiting for a request that would have held it for ARTHUR_TIMEOUT.
    faults(Faults())
    successor = Pipeline(drained, retry_policy=QUICK)
    try:
        assert successor.force_flush(timeout=10)
    finally:
        successor.shutdown(timeout=1)
    assert len({row["partner_inference_id"] for row in local_arthur.inferences(model_id)}) == 10


def test_stats_are_plain_numbers_with_labels(settings, pipelines):
    pipeline = pipelines(settings(spool_max_bytes=2_000))
    pipeline.count_received(spans=7, generations=5)
    pipeline.submit(records(5, prompt="x" * 600))
    assert pipeline.force_flush(timeout=10)
    samples = {(s.name, tuple(s.labels.items())): (s.kind, s.value) for s in pipeline.stats().samples()}
    assert samples[("otel_arthur_spans_received_total", ())] == ("counter", 7)
    assert samples[("otel_arthur_generation_spans_total", ())] == ("counter", 5)
    delivered = samples[("otel_arthur_records_delivered_total", ())][1]
    dropped = samples[("otel_arthur_records_dropped_total", (("reason", "spool_full"),))][1]
    assert delivered + dropped == 5 and dropped > 0
    assert samples[("otel_arthur_spool_depth_records", ())] == ("gauge", 0)
    assert ("otel_arthur_oldest_undelivered_age_seconds", ()) in samples


def test_over_long_prompts_arrive_cut_and_flagged(settings, pipelines, local_arthur):
    config = settings(max_text_bytes=1_000)
    pipeline = pipelines(config)
    pipeline.submit(records(1, prompt="Human: " + "ü" * 50_000))
    assert pipeline.force_flush(timeout=10)
    [row] = local_arthur.inferences(config.model_id)
    assert len(row["inference_data"]["prompt"].encode("utf-8")) <= 1_000
    assert row["inference_data"]["prompt"].endswith("…[truncated]") and row["inference_data"]["truncated"] is True


def test_over_long_other_texts_arrive_cut_and_flagged(settings, pipelines, local_arthur):
    config = settings()
    pipeline = pipelines(config)
    [record] = records(1)
    pipeline.submit([replace(record, fields={**record.fields, "model": "m" * 200_000, "error": "e" * 5_000})])
    assert pipeline.force_flush(timeout=10)
    [row] = local_arthur.inferences(config.model_id)
    for name in ("model", "error"):
        assert len(row["inference_data"][name].encode("utf-8")) <= MAX_SHORT_TEXT_BYTES
        assert row["inference_data"][name].endswith("…[truncated]")
    assert row["inference_data"]["prompt"] == "Human: hi" and row["inference_data"]["truncated"] is True


def test_a_record_the_hook_spoils_is_dropped_alone_and_counted(settings, pipelines, local_arthur, caplog):
    config = settings()
    # A hook that leaves a lone surrogate: the text can no longer be measured or stored as UTF-8.
    pipeline = pipelines(config, redact=lambda text: text + "\ud800" if "poison" in text else text)
    caplog.set_level(logging.WARNING, logger="otel_arthur")
    fine = records(3)
    assert pipeline.submit([*fine[:2], *records(1, prompt="Human: poison"), fine[2]])
    assert pipeline.force_flush(timeout=10) is True  # dropped before the flush began
    assert sorted(r["partner_inference_id"] for r in local_arthur.inferences(config.model_id)) == sorted(
        r.partner_inference_id for r in fine)
    assert pipeline.stats().dropped == {DropReason.UNMAPPABLE: 1}
    [line] = [r.getMessage() for r in caplog.records if DropReason.UNMAPPABLE in r.getMessage()]
    assert "cannot be spooled: UnicodeEncodeError" in line and "poison" not in line


@pytest.mark.parametrize("value", [b"bytes", {"a": {1, 2}}, 10**5000, "lone \ud800"],
                         ids=["bytes", "set", "huge-int", "surrogate"])
def test_a_record_the_spool_cannot_encode_is_dropped_alone_by_both_front_doors(value, settings, pipelines):
    delivered = Scripted(lambda batch: [RecordResult(200, "success")] * len(batch))
    pipeline = pipelines(settings(model_id="unused"), transport=delivered)
    # A record from code other than the mapper: too short for the size cap to measure, only the spool's
    # encoding stands in its way.
    odd = InferenceRecord("odd", "2024-05-01T12:00:00+00:00", {"prompt": "Human: hi", "session_id": value})
    assert pipeline.submit([*records(2), odd]) is True
    assert pipeline.accept([odd, *records(2)]) == Accepted(unmappable=1)
    assert pipeline.force_flush(timeout=10)
    stats = pipeline.stats()
    assert (stats.spooled, stats.delivered, stats.dropped) == (4, 4, {DropReason.UNMAPPABLE: 2})
    assert "odd" not in {id_ for batch in delivered.sent for id_ in batch}


def _span(span_id: int) -> ReadableSpan:
    return ReadableSpan(name="chat", context=SpanContext(0xABC, span_id, False), start_time=1, end_time=2,
                        attributes={"gen_ai.operation.name": "chat",
                                    "gen_ai.input.messages": '[{"role": "user", "content": "hi"}]'})


@pytest.mark.parametrize("credentials, secret", [
    ({"api_key": "sk-wrong-5ecret-k3y"}, "sk-wrong-5ecret-k3y"),
    ({"login": arthur.DEFAULT_LOGIN, "password": "wr0ng-pa55word"}, "wr0ng-pa55word"),
    ({"login": arthur.DEFAULT_LOGIN, "password": arthur.DEFAULT_PASSWORD}, arthur.DEFAULT_PASSWORD),
], ids=["wrong-key", "wrong-password", "right-password-jwt"])
def test_secrets_are_never_logged_repr_d_or_spooled(credentials, secret, local_arthur, new_model, tmp_path, caplog):
    model_id = new_model()
    refused = credentials.get("password") != arthur.DEFAULT_PASSWORD
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and the local Arthur's included
    exporter = ArthurSpanExporter(url=local_arthur.url, model_id=model_id, allow_insecure=True, spool_dir=tmp_path,
                                  retry_policy=QUICK, **credentials)
    assert exporter.export([_span(1), _span(2)]).name == "SUCCESS"
    if refused:
        assert wait_for(lambda: any(r.levelno == logging.ERROR for r in caplog.records))
    else:
        assert exporter.force_flush()
    text = repr(exporter) + caplog.text + "".join(str(r.args) + str(r.exc_info) for r in caplog.records)
    exporter.shutdown()
    text += caplog.text
    spooled = b"".join(path.read_bytes() for path in Path(tmp_path).rglob("*") if path.is_file())
    assert secret not in text and secret.encode() not in spooled
    assert JWT_PREFIX not in text and JWT_PREFIX.encode() not in spooled
    assert re.search(r"urllib3.*(GET|POST) /api/v3/", caplog.text)  # DEBUG really was on for urllib3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("otel_arthur")]
    assert len(errors) == (1 if refused else 0)


def test_delivery_lingers_until_a_batchs_worth_waits_and_sends_it_as_one_request(settings, pipelines):
    delivered = Scripted(lambda batch: [RecordResult(200, "success")] * len(batch))
    pipeline = pipelines(replace(settings(model_id="unused", batch_max_records=4), delivery_linger=60.0),
                         transport=delivered)
    assert wait_for(lambda: pipeline.readiness().model_fetched, timeout=BIND_DELAY + 10)
    first, second = records(2), records(2)
    assert pipeline.submit(first) and pipeline.submit(second)  # two exports, each too few to send alone
    assert wait_for(lambda: pipeline.stats().delivered == 4)
    assert delivered.sent == [[r.partner_inference_id for r in first + second]]


def test_records_arriving_during_a_request_wait_for_the_next_batchs_worth_rather_than_go_alone(settings, pipelines):
    """After a full batch the worker lingers again: the few records spooled while it was sent are not chased
    in a request of their own (at 4 spans an export that made one request per ~25 records)."""
    during, after = records(3, prefix="during"), records(7, prefix="after")
    holder: list[Pipeline] = []

    def answer(batch):
        if len(delivered.sent) == 1:
            assert holder[0].submit(during)  # spooled while the first request is on the wire
        return [RecordResult(200, "success")] * len(batch)

    delivered = Scripted(answer)
    pipeline = pipelines(replace(settings(model_id="unused", batch_max_records=10), delivery_linger=600.0),
                         transport=delivered)
    holder.append(pipeline)
    assert wait_for(lambda: pipeline.readiness().model_fetched, timeout=BIND_DELAY + 10)
    first = records(10, prefix="first")
    assert pipeline.submit(first)
    assert wait_for(lambda: pipeline.stats().delivered == 10)
    assert pipeline.submit(after)  # with the 3 spooled during the request: a batch's worth
    assert wait_for(lambda: pipeline.stats().delivered == 20)
    assert delivered.sent == [[r.partner_inference_id for r in first],
                              [r.partner_inference_id for r in during + after]]


def test_a_flush_does_not_wait_for_the_linger(settings, pipelines):
    delivered = Scripted(lambda batch: [RecordResult(200, "success")] * len(batch))
    pipeline = pipelines(replace(settings(model_id="unused"), delivery_linger=600.0), transport=delivered)
    assert wait_for(lambda: pipeline.readiness().model_fetched, timeout=BIND_DELAY + 10)
    assert pipeline.submit(records(1))
    assert pipeline.force_flush(timeout=30) is True
    assert pipeline.stats().delivered == 1
