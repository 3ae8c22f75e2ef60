"""What delivery has done, as plain numbers with labels: ready for ``/metrics`` or OpenTelemetry metrics.

Counts are this process's since it started (monotonic, Prometheus ``_total`` counters; a forked
child's start from zero, its parent's stay its parent's); the spool gauges describe the whole spool
file, which other processes may share.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from otel_arthur import forking
from otel_arthur.spool import Gauges

__all__ = ["LATENCY_BUCKETS", "Counters", "DropReason", "Histogram", "HistogramSnapshot", "PipelineStats", "Sample"]

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"  # samples <name>_bucket{le=…} (cumulative), <name>_sum, <name>_count, as Prometheus has them
# Upper bounds, seconds, of Arthur request durations: a healthy POST takes tens of milliseconds,
# a struggling one up to the client's timeout (ARTHUR_TIMEOUT, 10 s by default).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DropReason:
    """Why a record was given up before Arthur saw it: the ``reason`` label of ``records_dropped``."""

    SPOOL_FULL = "spool_full"
    """The spool reached its byte bound; the oldest pending records made room."""
    SPOOL_ERROR = "spool_error"
    """The spool could not be written (disk full, locked past the busy timeout, unreadable file)."""
    SHUTDOWN = "shutdown"
    """Submitted after shutdown."""
    ENGINE_REJECTED = "engine_rejected"
    """Arthur Engine refused them inside a 206, without saying which of the request's spans they were."""
    UNMAPPABLE = "unmappable"
    """A generation span (or its record) that could not be mapped or spooled; the rest of its batch went on."""


class Sample(NamedTuple):
    """One exposed value: ``otel_arthur_records_dropped_total{reason="spool_full"} 3``."""

    name: str
    kind: str  # COUNTER, GAUGE or HISTOGRAM, distinctions Prometheus and OpenTelemetry both make
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class HistogramSnapshot:
    """Observations so far: ``counts[i]`` fell at or under ``bounds[i]`` and above the bound before it."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: tuple[int, ...] = (0,) * len(LATENCY_BUCKETS)
    count: int = 0  # every observation, those over the last bound included
    sum: float = 0.0

    def samples(self, name: str, labels: Mapping[str, str] | None = None) -> Iterator[Sample]:
        labels = dict(labels or {})
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts):
            cumulative += count
            yield Sample(f"{name}_bucket", HISTOGRAM, {**labels, "le": repr(float(bound))}, cumulative)
        yield Sample(f"{name}_bucket", HISTOGRAM, {**labels, "le": "+Inf"}, self.count)
        yield Sample(f"{name}_sum", HISTOGRAM, labels, self.sum)
        yield Sample(f"{name}_count", HISTOGRAM, labels, self.count)


class Histogram:
    """Fixed buckets, thread-safe; an observation costs a bisect and a lock."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._counts = [0] * len(bounds)
        self._count = 0
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            if index < len(self._counts):
                self._counts[index] += 1
            self._count += 1
            self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return HistogramSnapshot(self._bounds, tuple(self._counts), self._count, self._sum)


_COUNTER_FIELDS = ("received_spans", "generation_spans", "deduplicated", "spooled", "delivered", "retried",
                   "resent_unknown_outcome", "dead_lettered")


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of the delivery pipeline."""

    received_spans: int = 0
    generation_spans: int = 0
    deduplicated: int = 0  # generation spans left out as the second span of a call already recorded (dedupe)
    spooled: int = 0
    delivered: int = 0
    retried: int = 0  # records sent again after a failure, counted per attempt
    resent_unknown_outcome: int = 0  # of those, sent again after a request with no answer: Arthur may store them twice
    dead_lettered: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)  # by DropReason
    spool_depth: int = 0  # records waiting (pending or in flight), every destination
    spool_bytes: int = 0  # records and dead letters, what ARTHUR_SPOOL_MAX_BYTES bounds
    dead_letters: int = 0  # dead letters kept in the spool
    oldest_undelivered_age: float = 0.0  # seconds; 0 when nothing waits
    arthur_request_seconds: HistogramSnapshot = field(default_factory=HistogramSnapshot)  # inference POSTs

    def plus(self, other: PipelineStats) -> PipelineStats:
        """These stats with ``other``'s counters and request durations added (a delivery process's); gauges are ours."""
        dropped = dict(self.dropped)
        for reason, count in other.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        mine, theirs = self.arthur_request_seconds, other.arthur_request_seconds
        return replace(self, **{name: getattr(self, name) + getattr(other, name) for name in _COUNTER_FIELDS},
                       dropped=dropped, arthur_request_seconds=HistogramSnapshot(
                           mine.bounds, tuple(a + b for a, b in zip(mine.counts, theirs.counts)),
                           mine.count + theirs.count, mine.sum + theirs.sum))

    def samples(self) -> Iterator[Sample]:
        """Every series, unlabelled: one pipeline's view (``exporter.stats().samples()``)."""
        yield from self.delivery_samples()
        yield from self.spool_samples()

    def delivery_samples(self, labels: Mapping[str, str] | None = None) -> Iterator[Sample]:
        """What this pipeline did (counters, request durations), each sample carrying ``labels``."""
        labels = dict(labels or {})
        for name, value in (("spans_received_total", self.received_spans),
                            ("generation_spans_total", self.generation_spans),
                            ("generation_spans_deduplicated_total", self.deduplicated),
                            ("records_spooled_total", self.spooled),
                            ("records_delivered_total", self.delivered),
                            ("records_retried_total", self.retried),
                            ("records_resent_unknown_outcome_total", self.resent_unknown_outcome),
                            ("records_dead_lettered_total", self.dead_lettered)):
            yield Sample(f"otel_arthur_{name}", COUNTER, labels, value)
        for reason, value in sorted(self.dropped.items()):
            yield Sample("otel_arthur_records_dropped_total", COUNTER, {**labels, "reason": reason}, value)
        yield from self.arthur_request_seconds.samples("otel_arthur_arthur_request_duration_seconds", labels)

    def spool_samples(self) -> Iterator[Sample]:
        """The spool file's gauges: every destination's records, so never labelled by one."""
        for name, value in (("spool_depth_records", self.spool_depth),
                            ("spool_size_bytes", self.spool_bytes),
                            ("spool_dead_letters", self.dead_letters),
                            ("oldest_undelivered_age_seconds", self.oldest_undelivered_age)):
            yield Sample(f"otel_arthur_{name}", GAUGE, {}, value)


class Counters:
    """The pipeline's monotonic counts; thread-safe (the exporter's thread and the worker both add)."""

    def __init__(self) -> None:
        self._start()
        forking.register(after_in_child=self._start)  # a forked child is a new process: its counts start anew

    def _start(self) -> None:
        self._lock = threading.Lock()  # a fresh one in a forked child: the parent's may have been held at the fork
        self._counts = dict.fromkeys(_COUNTER_FIELDS, 0)
        self._dropped: dict[str, int] = {}
        self._latency = Histogram()

    def add(self, name: str, amount: int) -> None:
        with self._lock:
            self._counts[name] += amount

    def drop(self, reason: str, amount: int) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + amount

    def dropped_total(self) -> int:
        with self._lock:
            return sum(self._dropped.values())

    def observe_request(self, seconds: float) -> None:
        """One request to Arthur's inferences endpoint took ``seconds``, answered or not."""
        self._latency.observe(seconds)

    def snapshot(self, gauges: Gauges) -> PipelineStats:
        with self._lock:
            counts, dropped = dict(self._counts), dict(self._dropped)
        return PipelineStats(**counts, dropped=dropped, spool_depth=gauges.depth, spool_bytes=gauges.bytes,
                             dead_letters=gauges.dead_letters, oldest_undelivered_age=gauges.oldest_age,
                             arthur_request_seconds=self._latency.snapshot())
