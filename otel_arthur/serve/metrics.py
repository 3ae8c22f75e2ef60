"""``/metrics``: the pipeline's and the receiver's numbers as Prometheus metric families.

One custom collector reads ``Sample`` tuples (``PipelineStats.samples()``, ``ReceiverCounters.samples()``)
at scrape time and groups them into families, so the numbers are kept in one place, the pipeline's
and receiver's own counters, and never copied into a second set of Prometheus objects. A registry
of its own per app, not the process-wide default one: two apps in one process (tests) never collide.

Each pipeline's series (one pipeline per destination) carry ``destination="v3"`` or
``destination="engine"``; the spool gauges describe the spool file the pipelines share (every
destination's records) and are exposed once, without that label, so nothing is counted twice.

Families (``_total`` counters, gauges, one histogram)::

    otel_arthur_receiver_spans_{received,ignored,rejected,refused}_total
    otel_arthur_receiver_requests_total{transport}, otel_arthur_receiver_http_responses_total{code},
    otel_arthur_receiver_grpc_responses_total{code}
    otel_arthur_receiver_connections_closed_total{reason}
    otel_arthur_spans_received_total{destination}, otel_arthur_generation_spans_total{destination}
    otel_arthur_generation_spans_deduplicated_total{destination}
    otel_arthur_records_{spooled,delivered,retried,resent_unknown_outcome,dead_lettered}_total{destination},
    otel_arthur_records_dropped_total{destination,reason}
    otel_arthur_spool_{depth_records,size_bytes,dead_letters}, otel_arthur_oldest_undelivered_age_seconds
    otel_arthur_arthur_request_duration_seconds{destination} (histogram of the requests that carry records)
    otel_arthur_ready (1 when /readyz answers 200), otel_arthur_build_info{version} (always 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from otel_arthur.stats import COUNTER, HISTOGRAM, Sample

if TYPE_CHECKING:
    from otel_arthur.pipeline import Pipeline

__all__ = ["CONTENT_TYPE_LATEST", "DESTINATION_LABEL", "SampleCollector", "exposition", "pipeline_samples", "registry"]

DESTINATION_LABEL = "destination"

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_HELP = {
    "otel_arthur_receiver_spans_received": "Spans in OTLP requests answered 200: spooled + ignored + rejected.",
    "otel_arthur_receiver_spans_ignored": "Spans that are not LLM generations, accepted and dropped.",
    "otel_arthur_receiver_spans_rejected": "Generation spans that could not be mapped, reported in partial_success.",
    "otel_arthur_receiver_spans_refused": "Spans of requests answered 503; the client sends them again.",
    "otel_arthur_receiver_requests": "OTLP export requests answered, by transport (http, grpc).",
    "otel_arthur_receiver_http_responses": "Answers to POST /v1/traces, by HTTP status code.",
    "otel_arthur_receiver_grpc_responses": "Answers to OTLP/gRPC TraceService/Export, by gRPC status code.",
    "otel_arthur_receiver_connections_closed": "Connections closed without an answer: header_timeout, body_timeout"
                                               " or max_connections.",
    "otel_arthur_spans_received": "Spans handed to the pipeline.",
    "otel_arthur_generation_spans": "Generation spans mapped to records.",
    "otel_arthur_generation_spans_deduplicated": "Generation spans not recorded: the second span of a call"
                                                 " already recorded (v3 only).",
    "otel_arthur_records_spooled": "Records written to the spool.",
    "otel_arthur_records_delivered": "Records Arthur acknowledged (Arthur Engine: spans it answered for).",
    "otel_arthur_records_retried": "Records sent again after a failure, per attempt.",
    "otel_arthur_records_resent_unknown_outcome": "Records sent again after a request that got no answer"
                                                  " (timeout, broken connection): Arthur may store them twice.",
    "otel_arthur_records_dead_lettered": "Records Arthur refused for good, kept as dead letters.",
    "otel_arthur_records_dropped": "Records given up before Arthur saw them, by reason.",
    "otel_arthur_spool_depth_records": "Records waiting in the spool (every destination).",
    "otel_arthur_spool_size_bytes": "Bytes of records and dead letters in the spool.",
    "otel_arthur_spool_dead_letters": "Dead letters kept in the spool.",
    "otel_arthur_oldest_undelivered_age_seconds": "Age of the oldest record waiting; 0 when none waits.",
    "otel_arthur_arthur_request_duration_seconds": "Duration of requests carrying records to Arthur (v3 inferences,"
                                                   " Engine traces), answered or not.",
    "otel_arthur_ready": "1 when ready: model fetched, Arthur reachable at the last attempt, spool writable.",
    "otel_arthur_build_info": "Always 1; the version label says which otel-arthur serves.",
}

# Labelled families that have no sample until something happens: exposed (HELP and TYPE) from the
# first scrape anyway, so dashboards and alerts can refer to them before the first drop.
_DECLARED = {"otel_arthur_records_dropped": COUNTER, "otel_arthur_receiver_http_responses": COUNTER,
             "otel_arthur_receiver_grpc_responses": COUNTER, "otel_arthur_receiver_connections_closed": COUNTER}

SampleSource = Callable[[], Iterable[Sample]]


def _family(sample: Sample) -> str:
    if sample.kind == COUNTER and sample.name.endswith("_total"):
        return sample.name[: -len("_total")]
    if sample.kind == HISTOGRAM:
        for suffix in _HISTOGRAM_SUFFIXES:
            if sample.name.endswith(suffix):
                return sample.name[: -len(suffix)]
    return sample.name


class SampleCollector(Collector):
    """Groups the samples of each source into metric families, at every scrape."""

    def __init__(self, *sources: SampleSource) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        families = {name: Metric(name, _HELP[name], kind) for name, kind in _DECLARED.items()}
        for source in self._sources:
            for sample in source():
                name = _family(sample)
                metric = families.get(name)
                if metric is None:
                    metric = families[name] = Metric(name, _HELP.get(name, name), sample.kind)
                metric.add_sample(sample.name, dict(sample.labels), float(sample.value))
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are only known at scrape time; nothing to check at registration


def pipeline_samples(pipelines: Sequence[tuple[str, Pipeline]]) -> SampleSource:
    """The samples of several pipelines, ``(destination name, pipeline)``: each one's own series labelled
    ``destination=<name>``, the shared spool file's gauges once (from the first pipeline)."""

    def samples() -> Iterator[Sample]:
        for index, (name, pipeline) in enumerate(pipelines):
            stats = pipeline.stats()
            yield from stats.delivery_samples({DESTINATION_LABEL: name})
            if index == 0:
                yield from stats.spool_samples()

    return samples


def registry(*sources: SampleSource) -> CollectorRegistry:
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(SampleCollector(*sources))
    return collectors


def exposition(collectors: CollectorRegistry) -> bytes:
    """The text format (``CONTENT_TYPE_LATEST``); blocking: the pipeline's gauges read the spool."""
    return generate_latest(collectors)
