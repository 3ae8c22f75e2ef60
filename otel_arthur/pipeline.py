"""``Pipeline``: records in, Arthur out, through a spool on disk drained by one background thread.

::

    submit(records) ─▶ Spool (SQLite file) ─▶ worker: claim ─▶ RetrySender ─▶ destination's sender ─▶ Arthur
                                              ◀─ settle: delivered deleted, refused dead-lettered,
                                                         the rest pending again

``submit`` is one short SQLite transaction and the only I/O on the caller's path; everything that
talks to Arthur runs on the ``otel-arthur-delivery`` daemon thread. The pipeline does not care
where records come from: ``ArthurSpanExporter`` submits mapped spans, ``serve`` what it receives.
The two front doors differ only when the spool is full: ``submit`` (the in-app exporter, which has
nobody to hand records back to) makes room by dropping the oldest; ``accept`` (``serve``, whose
client retries) refuses the new records whole and leaves the spool as it was.

What the worker does with each answer:

    207, record 2xx                 delivered: deleted from the spool, never sent again
    207, record 408/429/5xx         retried (only those records) with backoff; back to pending when time runs out
    207, record other 4xx           dead letter, reason ``record_rejected``, with Arthur's message
    206, spans the Engine refused   deleted, counted as dropped (``engine_rejected``), not as delivered
    whole request retryable         retried with backoff, honouring Retry-After; back to pending when time runs out
    whole request other 4xx         the batch becomes dead letters, reason ``batch_refused``; the next batch goes on
    SetupError (credentials,        one ERROR line; the batch goes back to pending and the binding is tried
      organization, model)            again with backoff, so fixing Arthur's side resumes delivery
    anything else                   logged with its traceback; the batch goes back to pending; the loop goes on

One log line per change of Arthur's state (unreachable, refusing the set-up, reachable again),
never one per failed request.

``delivery="process"`` (the in-app exporter's choice, ``otel_arthur.delivery_process``): the worker
runs in a child process over the same spool, started at the first submit, woken through a pipe;
this side appends, and adds the child's counters to its own. A forked child delivers on a thread.

A forked child (Gunicorn, uWSGI, Celery prefork, ``multiprocessing``) gets fresh events and locks,
its own spool owner, client session and counters (from zero), and its own worker at its first
submit or flush: the parent's worker does not survive the fork, and a lock it held would never be
released in the child.
"""

from __future__ import annotations

import enum
import logging
import os
import pickle
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otel_arthur import forking
from otel_arthur.clients.http import (
    ArthurError,
    PermanentError,
    RecordResult,
    RetryableError,
    SetupError,
)
from otel_arthur.config import DELIVERY_PROCESS, DELIVERY_THREAD, ArthurSettings
from otel_arthur.dedupe import CallMemory, Choice
from otel_arthur.delivery import Sender
from otel_arthur.destinations import Destination
from otel_arthur.destinations.v3 import V3Destination
from otel_arthur.mapping import InferenceRecord
from otel_arthur.pacing import Pacer
from otel_arthur.retry import RetryPolicy, RetrySender
from otel_arthur.spool import Appended, Encoded, Gauges, Refused, Spool, SpoolClosed, SpoolFull, unspoolable
from otel_arthur.stats import Counters, DropReason, PipelineStats

if TYPE_CHECKING:  # imported when used: the thread needs none of it
    from otel_arthur.delivery_process import DeliveryProcess

_logger = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT = 10.0  # seconds shutdown() spends delivering before leaving the rest on disk
IDLE_POLL = 5.0  # seconds between looks at the spool when nothing wakes the worker (other processes' leftovers)
ADOPT_INTERVAL = 30.0  # seconds between looks for in-flight records of processes that died
FLUSH_POLL = 0.1  # seconds; force_flush also sees progress made by other processes sharing the spool
BIND_DELAY = 1.0  # seconds after start-up before the model is fetched, unless records come sooner
IDLE_EXIT_GRACE = 0.5  # seconds shutdown waits for a worker with nothing to deliver (it exits in milliseconds)
DOWN_AFTER_FAILURES = 3  # consecutive failed requests before Arthur is said to be down: one blip is not news
DEAD_LETTER_LOG_INTERVAL = 60.0  # seconds; at most one line about refused records per interval
UNMAPPABLE_LOG_INTERVAL = 60.0  # seconds; at most one line about spans that could not be mapped per interval
THREAD_NAME = "otel-arthur-delivery"
# What json raises on a value it cannot write (UnicodeEncodeError, a ValueError, on a lone surrogate).
_UNENCODABLE = (TypeError, ValueError, RecursionError)


class DeadLetterReason:
    """Why a record went to the dead letters: the ``reason`` column."""

    RECORD_REJECTED = "record_rejected"
    """Arthur answered a 4xx for this record inside the 207."""
    BATCH_REFUSED = "batch_refused"
    """Arthur answered a 4xx (not about credentials or model) for the whole request that carried it."""


class Refusal(enum.Enum):
    """Why ``accept`` took none of the records; the caller still holds them (``serve`` answers 503)."""

    SPOOL_FULL = "spool_full"
    SHUTTING_DOWN = "shutting_down"
    SPOOL_ERROR = "spool_error"


@dataclass(frozen=True)
class Accepted:
    """``accept`` took the records: all are spooled but ``oversized``, each alone over the spool's bound,
    and ``unmappable``, each one the spool could not hold (dropped, reason ``unmappable``)."""

    oversized: int = 0
    unmappable: int = 0


@dataclass(frozen=True)
class Readiness:
    """What ``serve``'s ``/readyz`` reports: can records accepted now be delivered?"""

    model_fetched: bool  # the model was fetched and bound at least once
    arthur_reachable: bool | None  # Arthur answered and accepted the set-up at the last attempt; None before any
    spool_writable: bool  # the last write succeeded (or a probe since did) and the file can be written
    spool_recovered_from: str | None = None  # the spool was found damaged and started afresh; its copy is there

    @property
    def ready(self) -> bool:
        return self.model_fetched and self.arthur_reachable is not False and self.spool_writable


class _Outcome(enum.Enum):
    IDLE = "nothing to send"
    SETTLED = "every record delivered or dead-lettered"
    CAUGHT_UP = "every record delivered or dead-lettered, and the claim took all that waited"
    RETRY_LATER = "some records went back to pending"
    BLOCKED = "Arthur refuses the set-up"


class _Health:
    """A destination's state as delivery sees it. Logs one line per change, never one per failed request."""

    UP, DOWN, BLOCKED = "up", "down", "blocked"

    def __init__(self, spool: Spool, title: str) -> None:
        self._spool = spool
        self._title = title  # "Arthur", "Arthur Engine"
        self._state = self.UP
        self._failures = 0
        self.reachable: bool | None = None  # at the last attempt, whatever the log has said so far
        self.last_problem: ArthurError | None = None  # why the last attempt failed; None once one succeeds

    def up(self) -> None:
        self._failures = 0
        self.reachable = True
        self.last_problem = None
        if self._state != self.UP:
            _logger.info("%s %s again; delivering %d spooled records", self._title,
                         "is reachable" if self._state == self.DOWN else "accepts the set-up", self._spool.pending())
            self._state = self.UP

    def failed(self, error: RetryableError) -> None:
        self._failures += 1
        self.reachable = False
        self.last_problem = error
        if self._failures >= DOWN_AFTER_FAILURES and self._state == self.UP:
            _logger.warning("%s unreachable (%s); records wait in %s and are retried with backoff",
                            self._title, error, self._spool.path)
            self._state = self.DOWN

    def blocked(self, error: PermanentError) -> None:
        self.reachable = False
        self.last_problem = error
        if self._state != self.BLOCKED:
            _logger.error("%s refuses the set-up: %s. Nothing is delivered until this is fixed; records keep"
                          " spooling in %s and are delivered once it is.", self._title, error, self._spool.path)
            self._state = self.BLOCKED


class Pipeline:
    """Spool + delivery thread + counters. ``submit`` from any thread; ``shutdown`` once (again only logs)."""

    def __init__(
        self,
        settings: ArthurSettings | None = None,
        *,
        to: Destination | None = None,
        transport: Sender | None = None,
        retry_policy: RetryPolicy | None = None,
        redact: Callable[[str], str] | None = None,
        pacer: Pacer | None = None,
        delivery: str = DELIVERY_THREAD,
        on_counted: Callable[[], None] | None = None,
    ) -> None:
        """Opens (or creates) the spool and starts the worker; ``OSError`` or ``sqlite3.Error`` if it cannot.

        The worker first fetches the model, ``BIND_DELAY`` after start-up or at the first record (so
        a wrong model or credentials is one ERROR line at start-up, and ``serve``'s ``readiness``
        means something from the start), then delivers.
        ``to``: the destination (``otel_arthur.destinations``); by default the v3 one for ``settings``.
        ``redact``: a hook run on every text field after the configured redaction (``otel_arthur.privacy``).
        ``pacer``: the worker's, consulted between its steps, in an application's interpreter (``otel_arthur.pacing``).
        ``delivery``: ``"process"`` runs the worker in a child process (``otel_arthur.delivery_process``), started
        at the first submit; with a ``transport`` (a test double) or settings that cannot be handed over, a thread.
        ``on_counted``: called after the worker settled a batch or counted a retry (the delivery process reports).
        """
        if to is None:
            assert settings is not None, "a Pipeline needs settings or a destination"
            to = V3Destination(settings, redact)
        self._destination = to
        # One record per call (``dedupe``): v3 only, the Engine keeps every span.
        self._calls: CallMemory | None = getattr(to, "calls", None)
        self._settings = settings = to.settings
        self._spool = Spool(settings.spool_dir, to.key, settings.spool_max_bytes, to.codec)
        self._counters = Counters()
        self._policy = retry_policy or RetryPolicy()
        self._rng = random.Random()
        self._stop = threading.Event()  # shutdown began: interrupts every wait of the worker
        self._wake = threading.Event()  # records were submitted
        self._ready = threading.Event()  # deliver now, without lingering: a batch's worth waits, or a flush or shutdown
        self._unsent = 0  # records submitted and not yet claimed by the worker (unlocked: a lost update only lingers)
        self._progress = threading.Condition()  # the worker settled a batch
        self._health = _Health(self._spool, to.title)
        self._process = self._delivery_process(delivery) if transport is None else None
        # A delivery process sends: this side needs no HTTP client.
        self._transport = transport or (to.sender(self._counters) if self._process is None else None)
        self._sender = None if self._transport is None else RetrySender(
            self._transport, self._policy, self._stop, self, self._rng)
        self._on_counted = on_counted
        self._pacer = pacer
        self._model_fetched = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._drain_deadline = float("inf")
        self._final_gauges: Gauges | None = None
        self._spool_failing = False
        self._reported_full = False
        self._refusing_full = False
        self._unreported_dead = 0
        self._dead_letter_log_at = 0.0
        self._unmappable_lock = threading.Lock()  # the exporter's and serve's threads both report
        self._unreported_unmappable = 0
        self._unmappable_log_at = 0.0
        self._thread: threading.Thread | None = None  # None: a forked child that has not used the pipeline yet
        if self._process is None:
            self._start_worker()
        forking.register(after_in_child=self._after_fork_in_child)

    def __repr__(self) -> str:
        return f"Pipeline({self._spool!r})"

    @property
    def destination(self) -> Destination:
        return self._destination

    @property
    def delivery_process_pid(self) -> int | None:
        """The running delivery process's pid; None on a thread, or before the first submit."""
        return None if self._process is None else self._process.pid

    def _delivery_process(self, delivery: str) -> DeliveryProcess | None:
        if delivery != DELIVERY_PROCESS:
            return None
        from otel_arthur.delivery_process import DeliveryProcess

        if not sys.executable:  # an embedded interpreter with no Python program to start
            _logger.info("%s delivery runs on a thread: no Python interpreter to start a process with",
                         self._destination.title)
            return None
        try:
            return DeliveryProcess(self._settings, self._policy, self._notify_progress)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # e.g. an attribute_map of a custom type
            _logger.warning("%s delivery runs on a thread: its settings cannot be handed to a process (%s)",
                            self._destination.title, exc)
            return None

    def _notify_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _start_worker(self) -> bool:
        """Start this process's worker unless it has one: at construction, and at the first use after a fork.

        With a delivery process: at the first submit, and again after it died (once its backoff has
        passed); True when one started now.
        """
        process = self._process
        if process is not None:
            if not process.unusable:
                return not self._closed and process.ensure_running()
            with self._close_lock:
                self._deliver_on_thread()
        if self._thread is not None:
            return False
        with self._close_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
                return True
        return False

    def _deliver_on_thread(self) -> None:
        """From a delivery process (none can start here, or a forked child) to a thread of this process."""
        if self._process is None:
            return
        self._process = None
        self._transport = self._destination.sender(self._counters)
        self._sender = RetrySender(self._transport, self._policy, self._stop, self, self._rng)

    def _after_fork_in_child(self) -> None:
        self._rng = random.Random()  # else every child would jitter its retries exactly as its parent does
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._unsent = 0
        self._progress = threading.Condition()
        self._close_lock = threading.Lock()
        self._unmappable_lock = threading.Lock()
        if self._process is not None:  # delivering on a thread from now on (otel_arthur.delivery_process)
            self._process.let_go_in_forked_child()
            self._deliver_on_thread()
        assert self._transport is not None
        self._sender = RetrySender(self._transport, self._policy, self._stop, self, self._rng)
        self._thread = None  # started at the first submit or flush: a child that never exports costs nothing

    # -- the caller's side --------------------------------------------------------------------

    def count_received(self, spans: int, generations: int) -> None:
        self._counters.add("received_spans", spans)
        self._counters.add("generation_spans", generations)

    def drop_unmappable(self, count: int, reason: str) -> None:
        """``count`` spans or records that cannot be mapped or spooled: dropped, reason ``unmappable``.

        One WARNING line per ``UNMAPPABLE_LOG_INTERVAL``, with how many since the last one and the latest reason.
        """
        self._counters.drop(DropReason.UNMAPPABLE, count)
        now = time.monotonic()
        with self._unmappable_lock:
            self._unreported_unmappable += count
            if now < self._unmappable_log_at:
                return
            unreported, self._unreported_unmappable = self._unreported_unmappable, 0
            self._unmappable_log_at = now + UNMAPPABLE_LOG_INTERVAL
        _logger.warning("%d generation spans could not be mapped or spooled: each was dropped alone and the rest of"
                        " its batch spooled (counted as dropped, reason %s; latest: %s)",
                        unreported, DropReason.UNMAPPABLE, reason)

    def submit(self, records: Sequence[InferenceRecord], pacer: Pacer | None = None) -> bool:
        """Spool records for delivery (texts cut to the size limits). False when they were dropped.

        A record that cannot be spooled is dropped alone (``unmappable``); the others are spooled.
        ``pacer``: the calling thread's, consulted between records and before the spool's transaction.
        """
        if not records:
            return True
        if self._calls is None:
            return self._submit(Choice(list(records), 0), pacer)
        with self._calls.choosing(records) as choice:
            submitted = self._submit(choice, pacer)
        self._count_duplicates(choice)
        return submitted

    def _submit(self, choice: Choice, pacer: Pacer | None) -> bool:
        records = choice.records
        if self._closed:
            self._counters.drop(DropReason.SHUTDOWN, len(records))
            return False
        if not records:  # every one a second span of a call already spooled
            choice.taken()
            return True
        try:
            appended, _ = self._append(records, pacer=pacer)
        except SpoolClosed:
            self._counters.drop(DropReason.SHUTDOWN, len(records))
            return False
        except (sqlite3.Error, OSError) as exc:
            self._counters.drop(DropReason.SPOOL_ERROR, len(records))
            self._spool_write_failed(exc, "dropped")
            return False
        choice.taken()
        self._spool_written()
        self._start_worker()
        self._counters.add("spooled", appended.stored)
        if appended.dropped:
            self._counters.drop(DropReason.SPOOL_FULL, appended.dropped)
            if not self._reported_full:
                _logger.warning("The spool %s reached its bound of %d bytes: the oldest records are dropped to make"
                                " room (counted as dropped, reason %s)", self._spool.path,
                                self._settings.spool_max_bytes, DropReason.SPOOL_FULL)
                self._reported_full = True
        self._submitted(appended.stored)
        return True

    def accept(self, records: Sequence[InferenceRecord]) -> Refusal | Accepted:
        """All or nothing, for a front door whose client retries: ``Accepted`` once the records are spooled.

        Otherwise nothing was spooled and nothing is counted as dropped: the caller still holds the
        records and tells its client to retry. Never drops older records to make room. A record
        alone over the spool's bound can never be stored, however often it is retried: it is
        dropped, counted (``spool_full``) and reported in ``Accepted.oversized`` for the caller to reject.
        """
        if not records:
            return Accepted()
        if self._calls is None:
            return self._accept(Choice(list(records), 0))
        with self._calls.choosing(records) as choice:
            accepted = self._accept(choice)
        self._count_duplicates(choice)
        return accepted

    def _accept(self, choice: Choice) -> Refusal | Accepted:
        if self._closed:
            return Refusal.SHUTTING_DOWN
        if not choice.records:  # every one a second span of a call already spooled
            choice.taken()
            return Accepted()
        try:
            appended, unmappable = self._append(choice.records, refuse_when_full=True)
        except SpoolFull:
            if not self._refusing_full:
                _logger.warning("The spool %s reached its bound of %d bytes: new records are refused (503) until"
                                " delivery makes room", self._spool.path, self._settings.spool_max_bytes)
                self._refusing_full = True
            return Refusal.SPOOL_FULL
        except SpoolClosed:
            return Refusal.SHUTTING_DOWN
        except (sqlite3.Error, OSError) as exc:
            self._spool_write_failed(exc, "refused")
            return Refusal.SPOOL_ERROR
        choice.taken()
        self._spool_written()
        self._start_worker()
        if self._refusing_full:
            _logger.info("The spool %s has room again: records are accepted", self._spool.path)
            self._refusing_full = False
        self._counters.add("spooled", appended.stored)
        if appended.dropped:
            self._counters.drop(DropReason.SPOOL_FULL, appended.dropped)
        self._submitted(appended.stored)
        return Accepted(oversized=appended.dropped, unmappable=unmappable)

    def _submitted(self, records: int) -> None:
        """Wake the worker, which lingers (``delivery_linger``) until a batch's worth waits: one request for many
        exports rather than one each (an export of a few spans cost a POST, ~1.3 ms, and woke the thread)."""
        self._unsent += records
        now = self._unsent >= self._settings.batch_max_records
        process = self._process
        if process is None:
            self.wake(now)
            return
        if now:
            self._unsent = 0
        process.wake(now)

    def wake(self, now: bool) -> None:
        """Records were submitted (here or, for a delivery process, in its parent); ``now``: send without lingering."""
        # Event.set takes the event's lock and notifies even when set: once per export, so only when it is not.
        if now and not self._ready.is_set():
            self._ready.set()
        if not self._wake.is_set():
            self._wake.set()

    def _count_duplicates(self, choice: Choice) -> None:
        """Second spans of one call left out (``dedupe``), counted once the rest was stored."""
        if choice.stored and choice.duplicates:
            self._counters.add("deduplicated", choice.duplicates)

    def _append(self, records: Sequence[Any], *, refuse_when_full: bool = False,
                pacer: Pacer | None = None) -> tuple[Appended, int]:
        """Spool what is prepared for ``records``, whichever front door they came through.

        A record that cannot be prepared or encoded is left out and the rest spooled; once they are,
        it is counted (``drop_unmappable``) and in the count returned.
        """
        failures: list[str] = []
        prepared = self._prepared(records, failures, pacer)
        try:
            appended = self._spool.append(prepared, refuse_when_full=refuse_when_full)
        except _UNENCODABLE:  # append stores nothing when it raises: find the culprit (paid only here), spool the rest
            appended = self._spool.append(self._encodable(prepared, failures), refuse_when_full=refuse_when_full)
        if failures:
            self.drop_unmappable(len(failures), failures[0])
        return appended, len(failures)

    def _prepared(self, records: Sequence[Any], failures: list[str], pacer: Pacer | None = None) -> list[Any]:
        """Content switches, redaction, size caps; a record the filter raises on is left out, said in ``failures``."""
        prepared, prepare = [], self._destination.prepare
        for record in records:
            try:
                prepared.append(record if type(record) is Encoded else prepare(record))  # Encoded: prepared already
            except Exception as exc:  # a surprise (a hook's text that cannot be encoded…) costs only its record
                failures.append(unspoolable(self._spool.codec.identity(record), exc))
            if pacer is not None:  # redaction may cost tens of µs a record
                pacer.pause_if_due()
        return prepared

    def _encodable(self, records: Sequence[Any], failures: list[str]) -> list[Any]:
        """The records the spool can store (its codec's text, in UTF-8); the others are said in ``failures``."""
        encodable, codec = [], self._spool.codec
        for record in records:
            try:
                (record.body if type(record) is Encoded else codec.encode(record)).encode("utf-8")
            except _UNENCODABLE as exc:
                failures.append(unspoolable(record.identity if type(record) is Encoded else codec.identity(record), exc))
            else:
                encodable.append(record)
        return encodable

    def _spool_write_failed(self, error: Exception, fate: str) -> None:
        if not self._spool_failing:
            _logger.error("Cannot write the spool %s (%s): records are %s until it can be written",
                          self._spool.path, error, fate)
            self._spool_failing = True

    def _spool_written(self) -> None:
        if self._spool_failing:
            _logger.info("The spool %s can be written again", self._spool.path)
            self._spool_failing = False

    def readiness(self) -> Readiness:
        if self._spool_failing and not self._closed and self._spool.can_write():
            self._spool_written()  # probed: while not ready, no request comes to write and find out
        return Readiness(
            model_fetched=self._model_fetched,
            arthur_reachable=self._health.reachable,
            spool_writable=not self._closed and not self._spool_failing and os.access(self._spool.path, os.W_OK),
            spool_recovered_from=self._spool.recovered_from,
        )

    def force_flush(self, timeout: float) -> bool:
        """True once every record of this destination spooled before the call is delivered.

        False when the timeout passes first, or as soon as they are all settled if Arthur refused
        any of them for good (dead letters) or records were dropped meanwhile.
        """
        if self._closed:
            return False
        deadline = time.monotonic() + timeout
        started, dropped = time.time(), self._dropped_total()
        try:
            mark = self._spool.last_seq()
            self._start_worker()
            self._deliver_now()
            while self._spool.pending(upto=mark):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._ready.set()  # again: the worker clears it each time it looks
                with self._progress:
                    self._progress.wait(min(remaining, FLUSH_POLL))
                if self._process is not None and self._start_worker():  # it died: its successor delivers
                    self._deliver_now()
            if self._process is not None:  # its counters of the last settle, for the drops and for stats()
                self._process.report(max(0.0, deadline - time.monotonic()))
            return not self._spool.dead_lettered_since(started, upto=mark) and self._dropped_total() == dropped
        except SpoolClosed:  # shut down meanwhile
            return False

    def _deliver_now(self) -> None:
        if self._process is not None:
            self._process.wake(now=True)
        else:
            self.wake(now=True)

    def _dropped_total(self) -> int:
        dropped = self._counters.dropped_total()
        return dropped if self._process is None else dropped + sum(self._process.stats().dropped.values())

    def stats(self) -> PipelineStats:
        gauges = self._final_gauges if self._final_gauges is not None else self._spool.gauges()
        stats = self._counters.snapshot(gauges)
        return stats if self._process is None else stats.plus(self._process.stats())

    def delivery_stats(self) -> PipelineStats:
        """The counters as of the last settle (never halfway through one), without the spool's gauges."""
        with self._progress:
            return self._counters.snapshot(Gauges(0, 0, 0, 0.0))

    def dead_letters(self) -> list[dict[str, object]]:
        return self._spool.dead_letters()

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Deliver for up to ``timeout`` seconds, then leave the rest on disk and say how much and where."""
        with self._close_lock:
            if self._closed:
                _logger.warning("Arthur delivery already shut down, ignoring call")
                return
            self._closed = True
        if self._process is not None:
            if not self._process.shutdown(timeout):  # else it drained and said what remains
                remaining = self._spool.pending()
                if remaining:
                    _logger.warning("%d records not yet delivered remain in %s; the next process using it delivers"
                                    " them", remaining, self._spool.path)
            self._let_go()
            return
        if self._thread is None:  # a forked child that never exported: nothing of its own to deliver
            self._let_go()
            return
        self._drain_deadline = time.monotonic() + timeout
        set_deadline = getattr(self._transport, "set_deadline", None)  # optional, as prepare is
        if set_deadline is not None:
            set_deadline(self._drain_deadline)  # no request of the drain outlives the shutdown
        self._stop.set()
        self._ready.set()
        self._wake.set()
        # With nothing to deliver, do not wait out a request in flight: fetching the model from an
        # Arthur that never answers would hold the application's exit for the whole request timeout.
        self._thread.join(timeout if self._spool.pending() else min(timeout, IDLE_EXIT_GRACE))
        remaining = self._spool.pending()
        if remaining:
            # Short-lived apps exit before Arthur is declared down: this line is where they learn why.
            problem = self._health.last_problem
            _logger.warning("%d records not yet delivered remain in %s; the next process using it delivers them%s",
                            remaining, self._spool.path, f" (last attempt: {problem})" if problem else "")
        if self._thread.is_alive():
            # Still inside a request: any records it carries stay claimed by this process until it
            # exits, then the next process adopts them. Closing under the worker would release them mid-POST.
            return
        self._let_go()

    def _let_go(self) -> None:
        """Once nothing is being sent: keep the last gauges for ``stats``, close the spool and the transport."""
        self._final_gauges = self._spool.gauges()
        self._spool.close()
        if self._sender is not None:
            self._sender.close()

    # -- the worker ---------------------------------------------------------------------------

    def retrying(self, records: int, error: RetryableError, answered: bool) -> None:
        """``RetryObserver``: count the retry; a failed request may mean Arthur is down."""
        self._counters.add("retried", records)
        if error.unanswered_for is not None:  # the request may have been stored: the re-send may be a duplicate
            self._counters.add("resent_unknown_outcome", records)
        if answered:
            self._health.up()
        else:
            self._health.failed(error)
        if self._on_counted is not None:
            self._on_counted()

    def _run(self) -> None:
        adopt_at = time.monotonic() + ADOPT_INTERVAL  # the spool adopted orphans when it opened
        setup_failures = errors = 0
        try:
            self._spool.check()  # here, not at open: reading the whole file is no work for the application's thread
        except SpoolClosed:
            return
        except Exception:
            _logger.exception("Cannot check the spool %s; delivery goes on", self._spool.path)
        # Fetch the model at start-up, but give the application a moment first (or its first record):
        # a process that exits at once should not pay for a request it never needed (~70 ms).
        self._wake.wait(BIND_DELAY)
        after_full_batch = False  # then the next claim takes only another full batch, else it lingers for one
        while not self._stop.is_set():
            try:
                if time.monotonic() >= adopt_at:
                    adopt_at = time.monotonic() + ADOPT_INTERVAL
                    self._spool.adopt_orphans()
                self._wake.clear()
                self._ready.clear()  # set again by a flush, shutdown, or a batch's worth not yet claimed
                if self._pacer is not None:
                    self._pacer.begin()
                left_fewer = False  # a full batch was sent, and fewer than another (maybe none) are left waiting
                if self._model_fetched:
                    outcome = self._deliver_batch(whole_batch=after_full_batch)
                    left_fewer = after_full_batch and outcome is _Outcome.IDLE
                    after_full_batch = outcome is _Outcome.SETTLED
                else:
                    outcome = self._bind()
                errors = 0
                if outcome is _Outcome.IDLE or outcome is _Outcome.CAUGHT_UP:
                    # Caught up: linger for the next batch's worth rather than claim the few that came in during
                    # the POST (at 4 spans an export, chasing those made one request per ~25 records).
                    self._wait_for_records(left_fewer)
                elif outcome is _Outcome.BLOCKED:
                    if self._stop.is_set():
                        return  # it failed while shutdown waited for it: another try would only hold the exit
                    setup_failures += 1
                    self._stop.wait(self._policy.interval(setup_failures, self._rng))
                else:
                    setup_failures = 0
            except SpoolClosed:
                return
            except Exception:  # the worker never dies; backoff keeps a persistent fault from flooding the log
                errors += 1
                _logger.exception("Unexpected error delivering to Arthur; the worker carries on")
                self._stop.wait(self._policy.interval(errors, self._rng))
        self._drain()

    def _wait_for_records(self, some_wait: bool = False) -> None:
        """Sleep until records are submitted (or ``IDLE_POLL``: other processes' leftovers; at once when ``some_wait``),
        then linger until a batch's worth waits, a flush or shutdown asks, or ``delivery_linger`` has passed."""
        if self._stop.is_set():  # shutdown set the events before the loop cleared them: no waiting for them
            return
        if (some_wait or self._wake.wait(IDLE_POLL)) and self._settings.delivery_linger > 0:
            self._ready.wait(self._settings.delivery_linger)

    def _drain(self) -> None:
        """Shutdown: deliver until the deadline, an empty spool or the first failure; no waiting to retry."""
        try:
            while time.monotonic() < self._drain_deadline:
                if self._deliver_batch() not in (_Outcome.SETTLED, _Outcome.CAUGHT_UP):
                    return
        except SpoolClosed:
            return
        except Exception:
            _logger.exception("Unexpected error delivering to Arthur at shutdown")

    def _bind(self) -> _Outcome:
        """Fetch the model ahead of the first delivery; BLOCKED (wait with backoff) until it works."""
        prepare = getattr(self._transport, "prepare", None)  # optional: a test transport has no model to fetch
        try:
            if prepare is not None:
                prepare()
        except RetryableError as exc:
            self._health.failed(exc)
            return _Outcome.BLOCKED
        except PermanentError as exc:  # SetupError, or another refusal of the model request
            self._health.blocked(exc)
            return _Outcome.BLOCKED
        self._health.up()
        self._model_fetched = True
        return _Outcome.SETTLED

    def _deliver_batch(self, whole_batch: bool = False) -> _Outcome:
        """Claim, send and settle one batch; ``whole_batch``: only if a full batch waits (else IDLE)."""
        limit = self._settings.batch_max_records
        claimed = self._spool.claim(limit, minimum=limit if whole_batch else 1)
        if len(claimed) == limit:
            self._unsent = max(0, self._unsent - limit)
        elif not whole_batch:
            self._unsent = 0  # it took all that waited
        if not claimed:
            return _Outcome.IDLE
        self._pause_if_due()
        unsettled = {index: c.seq for index, c in enumerate(claimed)}  # until Arthur's answer is recorded

        def settle_answered(answered: list[tuple[int, RecordResult]]) -> None:
            # Delivered now, while the rest of the batch is retried: a crash meanwhile must not re-send them.
            self._settle_results([(unsettled.pop(index), result) for index, result in answered])

        assert self._sender is not None, "the worker runs where the sender is"
        try:
            results = self._sender.send([c.record for c in claimed], on_settled=settle_answered)
        except SetupError as exc:
            self._settle(released=list(unsettled.values()))
            self._health.blocked(exc)
            return _Outcome.BLOCKED
        except PermanentError as exc:
            self._health.up()
            self._settle(refused=[Refused(seq, DeadLetterReason.BATCH_REFUSED, str(exc))
                                  for seq in unsettled.values()])
            return _Outcome.SETTLED
        except RetryableError:  # retried until its deadline; the observer has seen every failure
            self._settle(released=list(unsettled.values()))
            return _Outcome.RETRY_LATER
        except BaseException:
            self._settle(released=list(unsettled.values()))
            raise
        self._model_fetched = True  # the model is bound before anything is sent
        self._health.up()
        self._pause_if_due()
        released = self._settle_results([(seq, results[index]) for index, seq in unsettled.items()])
        self._pause_if_due()
        if released:
            return _Outcome.RETRY_LATER
        return _Outcome.SETTLED if len(claimed) == limit else _Outcome.CAUGHT_UP

    def _pause_if_due(self) -> None:
        if self._pacer is not None:
            self._pacer.pause_if_due()

    def _settle_results(self, answered: Sequence[tuple[int, RecordResult]]) -> int:
        """Settle (seq, result) pairs by Arthur's answer; how many go back to pending."""
        acked: list[int] = []
        refused: list[Refused] = []
        released: list[int] = []
        dropped: list[int] = []
        for seq, result in answered:  # one pass: this runs for every record delivered
            if result.ok:
                acked.append(seq)
            elif result.retryable:
                released.append(seq)
            elif result.dropped:
                dropped.append(seq)
            else:
                refused.append(Refused(seq, DeadLetterReason.RECORD_REJECTED, f"{result.status}: {result.message}"))
        self._settle(acked=acked, refused=refused, released=released, dropped=dropped)
        return len(released)

    def _settle(self, acked: Sequence[int] = (), refused: Sequence[Refused] = (), released: Sequence[int] = (),
                dropped: Sequence[int] = ()) -> None:
        """``dropped``: answered, not stored, never sent again; the sender counted them (by its reason)."""
        with self._progress:  # the spool and the counters change together for ``delivery_stats``
            self._spool.settle([*acked, *dropped], refused, released)
            self._counters.add("delivered", len(acked))
            if refused:
                self._counters.add("dead_lettered", len(refused))
            self._progress.notify_all()
        if refused:
            self._report_dead_letters(refused)
        if self._on_counted is not None:
            self._on_counted()

    def _report_dead_letters(self, refused: Sequence[Refused]) -> None:
        self._unreported_dead += len(refused)
        now = time.monotonic()
        if now >= self._dead_letter_log_at:
            _logger.warning("%s refused %d records for good; they are kept as dead letters in %s (latest: %s)",
                            self._destination.title, self._unreported_dead, self._spool.path, refused[-1].message)
            self._unreported_dead = 0
            self._dead_letter_log_at = now + DEAD_LETTER_LOG_INTERVAL


def shutdown_side_by_side(pipelines: Sequence[Pipeline], timeout: float) -> None:
    """Shut the pipelines of several destinations down at once: one that is down never takes another's time.

    Never raises: it runs at the application's exit.
    """
    if len(pipelines) == 1:
        _shutdown_quietly(pipelines[0], timeout)
        return
    threads = [threading.Thread(target=_shutdown_quietly, args=(p, timeout), daemon=True) for p in pipelines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _shutdown_quietly(pipeline: Pipeline, timeout: float) -> None:
    try:
        pipeline.shutdown(timeout)
    except Exception:  # at the application's exit: never into the application
        _logger.exception("Unexpected error shutting %s delivery down", pipeline.destination.title)
