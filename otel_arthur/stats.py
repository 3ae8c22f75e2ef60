"""What delivery has done, as plain numbers with labels: ready for ``/metrics`` or OpenTelemetry metrics.

Counts are this process's since it started (monotonic, Prometheus ``_total`` counters); the spool
gauges describe the whole spool file, which other processes may share.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from otel_arthur.spool import Gauges

__all__ = ["Counters", "DropReason", "PipelineStats", "Sample"]

COUNTER = "counter"
GAUGE = "gauge"


class DropReason:
    """Why a record was given up before Arthur saw it: the ``reason`` label of ``records_dropped``."""

    SPOOL_FULL = "spool_full"
    """The spool reached its byte bound; the oldest pending records made room."""
    SPOOL_ERROR = "spool_error"
    """The spool could not be written (disk full, locked past the busy timeout, unreadable file)."""
    SHUTDOWN = "shutdown"
    """Submitted after shutdown."""


class Sample(NamedTuple):
    """One exposed value: ``otel_arthur_records_dropped_total{reason="spool_full"} 3``."""

    name: str
    kind: str  # COUNTER or GAUGE, a distinction Prometheus and OpenTelemetry both make
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of the delivery pipeline."""

    received_spans: int = 0
    generation_spans: int = 0
    spooled: int = 0
    delivered: int = 0
    retried: int = 0  # records sent again after a failure, counted per attempt
    dead_lettered: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)  # by DropReason
    spool_depth: int = 0  # records waiting (pending or in flight), every destination
    spool_bytes: int = 0  # records and dead letters, what ARTHUR_SPOOL_MAX_BYTES bounds
    dead_letters: int = 0  # dead letters kept in the spool
    oldest_undelivered_age: float = 0.0  # seconds; 0 when nothing waits

    def samples(self) -> Iterator[Sample]:
        for name, value in (("spans_received_total", self.received_spans),
                            ("generation_spans_total", self.generation_spans),
                            ("records_spooled_total", self.spooled),
                            ("records_delivered_total", self.delivered),
                            ("records_retried_total", self.retried),
                            ("records_dead_lettered_total", self.dead_lettered)):
            yield Sample(f"otel_arthur_{name}", COUNTER, {}, value)
        for reason, value in sorted(self.dropped.items()):
            yield Sample("otel_arthur_records_dropped_total", COUNTER, {"reason": reason}, value)
        for name, value in (("spool_depth_records", self.spool_depth),
                            ("spool_size_bytes", self.spool_bytes),
                            ("spool_dead_letters", self.dead_letters),
                            ("oldest_undelivered_age_seconds", self.oldest_undelivered_age)):
            yield Sample(f"otel_arthur_{name}", GAUGE, {}, value)


class Counters:
    """The pipeline's monotonic counts; thread-safe (the exporter's thread and the worker both add)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("received_spans", "generation_spans", "spooled", "delivered", "retried",
                                      "dead_lettered"), 0)
        self._dropped: dict[str, int] = {}

    def add(self, name: str, amount: int) -> None:
        with self._lock:
            self._counts[name] += amount

    def drop(self, reason: str, amount: int) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + amount

    def snapshot(self, gauges: Gauges) -> PipelineStats:
        with self._lock:
            counts, dropped = dict(self._counts), dict(self._dropped)
        return PipelineStats(**counts, dropped=dropped, spool_depth=gauges.depth, spool_bytes=gauges.bytes,
                             dead_letters=gauges.dead_letters, oldest_undelivered_age=gauges.oldest_age)
