"""RetrySender and its policy, against scripted senders and a stop event that records the waits instead of sleeping."""

from __future__ import annotations

import random

import pytest

from otel_arthur import retry as retry_module
from otel_arthur.clients.http import (
    PermanentError,
    RecordResult,
    RetryableError,
    ThrottledError,
)
from otel_arthur.mapping import InferenceRecord
from otel_arthur.retry import RetryPolicy, RetrySender

OK, FLAKY, REJECTED = RecordResult(200, "success"), RecordResult(503, "busy"), RecordResult(400, "bad")
RECORDS = [InferenceRecord(f"id-{i}", "2024-05-01T12:00:00+00:00", {"prompt": "p"}) for i in range(4)]
FAST = RetryPolicy(initial_interval=1, multiplier=2, max_interval=8, jitter=0, max_elapsed=100)


class Scripted:
    """A sender answering from a script: a list of results per record, a callable, or an exception to raise."""

    def __init__(self, *script):
        self.script = list(script)
        self.sent: list[list[str]] = []

    def send(self, records):
        self.sent.append([r.partner_inference_id for r in records])
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step(records) if callable(step) else list(step)

    def close(self):
        pass


class Clock:
    """``otel_arthur.retry.time`` for these tests: monotonic time moves only when the sender waits."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(retry_module, "time", fake)
    return fake


class RecordingStop:
    """Stands in for the shutdown Event: ``wait`` notes the seconds and moves the clock instead of sleeping."""

    def __init__(self, clock, is_set=False):
        self.waits: list[float] = []
        self._clock = clock
        self._set = is_set

    def is_set(self):
        return self._set

    def wait(self, seconds):
        self.waits.append(seconds)
        self._clock.now += seconds
        return self._set


class Observer:
    def __init__(self):
        self.calls = []

    def retrying(self, records, error, answered):
        self.calls.append((records, answered))


def all_ok(records):
    return [OK] * len(records)


def test_backoff_doubles_up_to_the_cap_and_jitter_stays_in_bounds():
    rng = random.Random(1)
    assert [FAST.interval(n, rng) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    jittered = RetryPolicy(initial_interval=1, max_interval=8, jitter=0.5)
    waits = [jittered.interval(3, rng) for _ in range(200)]
    assert 2 <= min(waits) < 3 and 5 < max(waits) <= 6 and len(set(waits)) > 100
    assert RetryPolicy().interval(10_000, rng) <= 45  # no overflow, still capped


@pytest.mark.parametrize("kwargs", [{"initial_interval": 0}, {"max_interval": 0.1}, {"jitter": 1},
                                    {"multiplier": 0.5}, {"max_elapsed": 0}])
def test_unusable_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_only_the_records_that_failed_are_sent_again(clock):
    sender = Scripted([OK, FLAKY, REJECTED, FLAKY], all_ok)
    stop, observer = RecordingStop(clock), Observer()
    results = RetrySender(sender, FAST, stop, observer).send(RECORDS)
    assert results == [OK, OK, REJECTED, OK]  # a 400 is final: not retried
    assert sender.sent == [["id-0", "id-1", "id-2", "id-3"], ["id-1", "id-3"]]
    assert stop.waits == [1] and observer.calls == [(2, True)]


def test_retry_after_is_honoured_over_a_shorter_backoff(clock):
    sender = Scripted(ThrottledError("429", retry_after=7), RetryableError("503"), all_ok)
    stop = RecordingStop(clock)
    assert RetrySender(sender, FAST, stop).send(RECORDS) == [OK] * 4
    assert stop.waits == [7, 2]


def test_a_permanent_refusal_is_raised_at_once(clock):
    sender = Scripted(PermanentError("413"))
    stop = RecordingStop(clock)
    with pytest.raises(PermanentError):
        RetrySender(sender, FAST, stop).send(RECORDS)
    assert len(sender.sent) == 1 and stop.waits == []


def test_out_of_time_unanswered_raises_and_the_backoff_carries_over_to_the_next_call(clock):
    sender = Scripted(RetryableError("connection refused"))
    stop, observer = RecordingStop(clock), Observer()
    policy = RetryPolicy(initial_interval=1, max_interval=8, jitter=0, max_elapsed=5)
    retry = RetrySender(sender, policy, stop, observer)
    with pytest.raises(RetryableError, match="connection refused"):
        retry.send(RECORDS)
    assert stop.waits == [1, 2]  # the next wait, 4 s, would end past the 5 s deadline: give the batch back
    assert len(sender.sent) == 3 and observer.calls == [(4, False)] * 3
    with pytest.raises(RetryableError):
        retry.send(RECORDS)
    assert stop.waits[2] == 4  # the next call first waits out the pause it inherited


def test_out_of_time_after_a_207_returns_what_was_settled(clock):
    sender = Scripted([OK, FLAKY, OK, OK], RetryableError("connection refused"))
    retry = RetrySender(sender, RetryPolicy(initial_interval=1, max_interval=8, jitter=0, max_elapsed=2),
                        RecordingStop(clock))
    assert retry.send(RECORDS) == [OK, FLAKY, OK, OK]  # the delivered ones are reported, never sent again


def test_shutting_down_means_one_attempt_and_no_wait(clock):
    sender = Scripted(RetryableError("503"))
    stop = RecordingStop(clock, is_set=True)
    with pytest.raises(RetryableError):
        RetrySender(sender, FAST, stop).send(RECORDS)
    assert len(sender.sent) == 1 and stop.waits == []


def test_success_resets_the_backoff(clock):
    sender = Scripted(RetryableError("503"), all_ok, RetryableError("503"), all_ok)
    stop = RecordingStop(clock)
    retry = RetrySender(sender, FAST, stop)
    retry.send(RECORDS)
    retry.send(RECORDS)
    assert stop.waits[0] == 1 and stop.waits[-1] == 1


def test_a_request_that_got_no_answer_is_sent_again_only_after_as_long_again(clock):
    # Arthur may still be storing the unanswered request: a copy sent at once would be a second row for sure.
    sender = Scripted(RetryableError("timed out", unanswered_for=6), all_ok)
    stop = RecordingStop(clock)
    assert RetrySender(sender, FAST, stop).send(RECORDS) == [OK] * 4
    assert stop.waits == [6]  # not the 1 s backoff
