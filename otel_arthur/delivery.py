"""record -> Arthur: the ``Sender`` contract, and its transport end that POSTs batches split by count and bytes.

Delivery is a chain of senders, each wrapping the next, built in one place (``pipeline``)::

    spool worker -> RetrySender (backoff, Retry-After, deadline) -> ArthurSender (bind, split, POST)

``ArthurSender`` binds lazily (the first send fetches the model, on whatever thread sends, never
the application's) and answers with one ``RecordResult`` per record, or raises the client's
``SetupError`` / ``PermanentError`` / ``RetryableError``.

How long it waits for Arthur's answer grows with the request: ``ARTHUR_TIMEOUT`` plus as much again
per ``READ_TIMEOUT_STEP_BYTES`` of body, doubled after each request that went unanswered (up to
``MAX_READ_TIMEOUT_DOUBLINGS`` times) until one is answered. An unanswered request may still be
stored: an Arthur that is slow rather than down gets answered by the next attempt instead of being
sent copy after copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from otel_arthur import forking
from otel_arthur.binding import Binding, bind
from otel_arthur.client import NOT_SENT, ArthurClient, ArthurError, RecordResult, RetryableError, encode_row
from otel_arthur.config import ArthurSettings
from otel_arthur.mapping import InferenceRecord

_logger = logging.getLogger(__name__)

READ_TIMEOUT_STEP_BYTES = 4 * 1024 * 1024  # each 4 MiB of body (the default batch limit) adds one ARTHUR_TIMEOUT
MAX_READ_TIMEOUT_DOUBLINGS = 3  # after unanswered requests the wait grows to at most 8 times the base


class Sender(Protocol):
    """One link of the delivery chain."""

    def send(self, records: Sequence[InferenceRecord]) -> list[RecordResult]:
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


class ArthurSender:
    """Sends records to the configured model through the native client."""

    def __init__(
        self,
        settings: ArthurSettings,
        client: ArthurClient | None = None,
        *,
        observe_request: Callable[[float], None] | None = None,
    ) -> None:
        """``observe_request(seconds)`` is told how long each inferences POST took, answered or not."""
        self._settings = settings
        self._client = client or ArthurClient(settings)
        self._observe_request = observe_request
        self._binding: Binding | None = None
        self._bind_lock = threading.Lock()
        self.wait = AnswerWait(settings.timeout)
        forking.register(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._bind_lock = threading.Lock()  # the parent's worker may have held it, fetching the model, at the fork

    @property
    def binding(self) -> Binding:
        """Fetch the model and bind to it, once; raises the client's errors until it succeeds."""
        if self._binding is None:
            with self._bind_lock:
                if self._binding is None:
                    model = self._client.get_model(self._settings.model_id)
                    self._binding = bind(model, self._settings.attribute_map)
        return self._binding

    def prepare(self) -> None:
        """Fetch the model now rather than at the first send (the pipeline's worker does, at start-up)."""
        _ = self.binding  # the property fetches and binds, once

    def set_deadline(self, deadline: float) -> None:
        """No request lasts past ``deadline`` (``time.monotonic()``): shutdown's."""
        self._client.set_deadline(deadline)

    def send(self, records: Sequence[InferenceRecord]) -> list[RecordResult]:
        binding = self.binding
        rows = [binding.to_row(record) for record in records]
        bodies = [encode_row(row) for row in rows]  # each row's JSON, for sizing and joining

        def post(batch: range) -> list[RecordResult]:
            body = b"[" + b",".join(bodies[i] for i in batch) + b"]"
            return self._client.send_inferences(binding.model_id, rows[batch.start:batch.stop], body,
                                                read_timeout=self.wait.read_timeout(len(body)))

        return send_in_batches([len(body) for body in bodies], self._settings.batch_max_records,
                               self._settings.batch_max_bytes, post, self.wait, self._observe_request)

    def close(self) -> None:
        self._client.close()
