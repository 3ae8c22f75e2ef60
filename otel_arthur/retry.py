"""``RetrySender``: retries what may succeed later, with capped exponential backoff, jitter and Retry-After.

Retried: connection errors, timeouts, 408, 429 and 5xx for the whole request, and, inside a 207,
only the records answered 408/429/5xx (the delivered ones are never sent again). Permanent
refusals are raised at once for the caller to dead-letter or to wait on a fixed set-up.

A request that went out and got no answer (``RetryableError.unanswered_for``) may still be stored by
Arthur: it is not sent again before it has had as long again to land, so a copy never chases a
request that a slow Arthur is still working on (and the transport waits longer for the next answer).

Waits sleep on the shutdown ``Event``, so shutting down interrupts them. The backoff belongs to
the sender, not to one call: after a batch runs out of time (``max_elapsed``) and goes back to the
spool, the next call carries on from the same point of the curve and still honours a pending
``Retry-After``, instead of hitting an Arthur that is down or asked for quiet.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from otel_arthur.clients.http import RecordResult, RetryableError
from otel_arthur.delivery import Sender
from otel_arthur.mapping import InferenceRecord

_logger = logging.getLogger(__name__)

_MAX_EXPONENT = 32  # 2**32 × any sane initial interval is past every cap; keeps the power finite


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff: the n-th consecutive failure waits ``initial × multiplier**(n-1)``, capped, ± ``jitter``."""

    initial_interval: float = 0.5  # seconds
    multiplier: float = 2.0
    max_interval: float = 30.0  # seconds, before jitter
    jitter: float = 0.5  # each wait is drawn from interval × [1 - jitter, 1 + jitter]
    max_elapsed: float = 60.0  # seconds one batch is retried before it goes back to the spool

    def __post_init__(self) -> None:
        if self.initial_interval <= 0 or self.max_interval < self.initial_interval or self.max_elapsed <= 0:
            raise ValueError(f"unusable retry intervals in {self}")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"multiplier must be >= 1 and jitter in [0, 1) in {self}")

    def interval(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` consecutive failures (at least 1)."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        base = min(self.max_interval, self.initial_interval * self.multiplier**exponent)
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


class RetryObserver(Protocol):
    def retrying(self, records: int, error: RetryableError, answered: bool) -> None:
        """``records`` failed and will be sent again; ``answered``: Arthur replied (a 207), refusing them for now."""


class RetrySender:
    """Wraps a sender; one instance per delivery thread (it keeps the backoff state between calls)."""

    def __init__(
        self,
        sender: Sender,
        policy: RetryPolicy,
        stop: threading.Event,
        observer: RetryObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._sender = sender
        self._policy = policy
        self._stop = stop
        self._observer = observer
        self._rng = rng or random.Random()
        self._failures = 0  # consecutive failed attempts, across calls, until one fully succeeds
        self._not_before = 0.0  # monotonic time before which nothing is sent (backoff or Retry-After)
        self._last_error: RetryableError | None = None

    def send(
        self,
        records: Sequence[InferenceRecord],
        on_settled: Callable[[list[tuple[int, RecordResult]]], None] | None = None,
    ) -> list[RecordResult]:
        """One result per record. When time runs out (or shutdown begins) before every record is
        settled: the results so far, with the unsettled ones retryable; or, if Arthur answered
        none of them, the last ``RetryableError``.

        ``on_settled`` is told, as (index, result) pairs, which records Arthur answered for good
        while others of the same call are still to be retried, so the caller can mark them at once.
        """
        deadline = time.monotonic() + self._policy.max_elapsed
        if not self._pause_until(self._not_before, float("inf")):
            assert self._last_error is not None  # a pause is only ever set by a failure
            raise self._last_error
        results: list[RecordResult | None] = [None] * len(records)
        todo = list(range(len(records)))
        while True:
            try:
                answered = self._sender.send([records[i] for i in todo])
            except RetryableError as exc:
                error, retry_after, was_answered = exc, exc.retry_after, False
            else:
                for index, result in zip(todo, answered):
                    results[index] = result
                refused = [(index, result) for index, result in zip(todo, answered) if result.retryable]
                if not refused:
                    self._failures = 0
                    return cast(list[RecordResult], results)
                if on_settled is not None and len(refused) < len(todo):
                    on_settled([(index, result) for index, result in zip(todo, answered) if not result.retryable])
                todo = [index for index, _ in refused]
                status, message = refused[0][1].status, refused[0][1].message
                error = RetryableError(f"Arthur answered {status} for {len(todo)} of {len(records)} records: {message}")
                retry_after, was_answered = None, True
            self._failures += 1
            self._last_error = error
            backoff = self._policy.interval(self._failures, self._rng)
            wait = max(backoff, retry_after or 0.0, error.unanswered_for or 0.0)
            self._not_before = time.monotonic() + wait
            if self._observer is not None:
                self._observer.retrying(len(todo), error, was_answered)
            _logger.debug("%d records not delivered (%s); next attempt in %.2fs", len(todo), error, wait)
            if not self._pause_until(self._not_before, deadline):
                if results[todo[0]] is None:  # then none of them was answered: all or nothing
                    raise error
                return cast(list[RecordResult], results)

    def _pause_until(self, when: float, deadline: float) -> bool:
        """Sleep until ``when``; False, at once, when that passes ``deadline`` or shutdown has begun or begins."""
        remaining = when - time.monotonic()
        if remaining <= 0:
            return True
        if self._stop.is_set() or when > deadline:
            return False
        return not self._stop.wait(remaining)

    def close(self) -> None:
        self._sender.close()
