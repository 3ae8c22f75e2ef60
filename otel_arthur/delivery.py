"""The ``Sender`` contract and what every destination's transport end shares: batches split by count and
bytes, sent one request at a time, and how long to wait for an answer.

Delivery is a chain of senders, each wrapping the next, built in one place (``pipeline``)::

    spool worker -> RetrySender (backoff, Retry-After, deadline) -> a destination's sender (split, POST)

A destination's sender (``destinations.v3.ArthurSender``, ``destinations.engine.EngineSender``)
answers with one ``RecordResult`` per item, or raises the client's ``SetupError`` /
``PermanentError`` / ``RetryableError``.

How long it waits for an answer grows with the request: ``ARTHUR_TIMEOUT`` plus as much again
per ``READ_TIMEOUT_STEP_BYTES`` of body, doubled after each request that went unanswered (up to
``MAX_READ_TIMEOUT_DOUBLINGS`` times) until one is answered. An unanswered request may still be
stored: an Arthur that is slow rather than down gets answered by the next attempt instead of being
sent copy after copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from otel_arthur.clients.http import NOT_SENT, ArthurError, RecordResult, RetryableError

READ_TIMEOUT_STEP_BYTES = 4 * 1024 * 1024  # each 4 MiB of body (the default batch limit) adds one ARTHUR_TIMEOUT
MAX_READ_TIMEOUT_DOUBLINGS = 3  # after unanswered requests the wait grows to at most 8 times the base


class Sender(Protocol):
    """One link of the delivery chain."""

    def send(self, records: Sequence[Any]) -> list[RecordResult]:
        """One result per record, in order; raises ``ArthurError`` when no record got an answer."""
        ...

    def close(self) -> None: ...


class SenderObserver(Protocol):
    """What a sender reports to its pipeline: each request's duration, and records it had to give up."""

    def observe_request(self, seconds: float) -> None: ...

    def drop(self, reason: str, amount: int) -> None: ...


def split_batches(sizes: Sequence[int], max_records: int, max_bytes: int) -> Iterator[range]:
    """Index ranges of consecutive items (of these encoded sizes) whose request stays within both limits.

    Sized as a JSON array (brackets and commas), a close upper bound for other encodings too. A
    single item larger than ``max_bytes`` travels alone rather than being lost.
    """
    start, size = 0, 2  # the brackets of the JSON array
    for index, length in enumerate(sizes):
        added = length + (1 if index > start else 0)
        if index > start and (index - start >= max_records or size + added > max_bytes):
            yield range(start, index)
            start, size, added = index, 2, length
        size += added
    if start < len(sizes):
        yield range(start, len(sizes))


class AnswerWait:
    """How long to wait for a service's answer to a request of some size, learning from unanswered ones."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._unanswered = 0  # requests in a row that got no answer (their outcome is unknown)

    def read_timeout(self, body_bytes: int) -> float:
        """Seconds to wait for the answer to a request of ``body_bytes``."""
        base = self._timeout * (1 + body_bytes / READ_TIMEOUT_STEP_BYTES)
        return base * 2 ** min(self._unanswered, MAX_READ_TIMEOUT_DOUBLINGS)

    def answered(self) -> None:
        self._unanswered = 0

    def failed(self, error: ArthurError) -> None:
        if isinstance(error, RetryableError) and error.unanswered_for is not None:
            self._unanswered += 1


def send_in_batches(sizes: Sequence[int], max_records: int, max_bytes: int,
                    post: Callable[[range], list[RecordResult]], wait: AnswerWait,
                    observe_request: Callable[[float], None] | None = None) -> list[RecordResult]:
    """``post`` each index range of ``split_batches``; one result per item, in order.

    Raises the first request's ``ArthurError``; once a request was answered, a later failure
    leaves the rest ``NOT_SENT`` (so only they are sent again, where the error, should it persist,
    is raised by the first request).
    """
    results: list[RecordResult] = []
    for batch in split_batches(sizes, max_records, max_bytes):
        started = time.monotonic()
        try:
            results.extend(post(batch))
            wait.answered()
        except ArthurError as exc:
            wait.failed(exc)
            if not results:
                raise
            results.extend([RecordResult(NOT_SENT, f"not sent: {exc}")] * (len(sizes) - len(results)))
            break
        finally:
            if observe_request is not None:
                observe_request(time.monotonic() - started)
    return results
