"""An OTLP/HTTP load client: OTLPSpanExporter's own HTTP client posting protobuf batches for a while.

    python benchmarks/load_client.py '{"phases": [{"url": "http://127.0.0.1:4319", "traffic": "generation",
                                                   "seconds": 10, "start_at": <epoch s>, "rate": 0}]}'

The request bodies are what ``OTLPSpanExporter.export()`` sends (``encode_spans(...)``, protobuf),
encoded once before the clock starts and posted through the exporter's own client, so the client
spends its CPU on sending, not on re-encoding: the receiver, not the load generator, sets the pace.
Every request carries fresh trace and span ids (a receiver that stores spans by id, as Phoenix does,
would otherwise drop repeats): each id holds the body's random marker, replaced per request. Its spans'
start and end times are fresh too, moved to the time of sending (so nothing keyed by a start time, a
price or a dedupe key, is found in a cache because an earlier request held the same span).
``traffic``: ``generation`` (every span an LLM generation, recorded attributes) or ``mixed`` (one in
ten; the rest HTTP-server-like spans). ``rate``: spans per second, 0 for as fast as answered.
Phases run one after another, each from its ``start_at``, so several clients can keep in step.
Prints one JSON line: per phase, spans and requests accepted (2xx) and refused, and its seconds.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, sdk_spans  # noqa: E402

BATCH = 512
SHARES = {"generation": 1.0, "mixed": 0.1}
MARKER_BYTES = 6  # in every trace and span id of a body; 2 more bytes number the spans


def bodies(traffic: str, count: int) -> list[tuple[bytes, int]]:
    """``count`` distinct request bodies of BATCH spans, each span in a trace of its own; (body, generation spans).

    Every trace and span id of a body holds the same random marker (``FreshIds`` replaces it); each body's
    spans start and end when it is made, their durations the templates'.
    """
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, TraceFlags

    share = SHARES[traffic]
    every = round(1 / share)
    templates = list(sdk_spans(BATCH, generation_share=share))
    out: list[tuple[bytes, int]] = []
    while len(out) < count:
        marker = os.urandom(MARKER_BYTES)
        shift = time.time_ns() - templates[0].start_time  # each body made ms apart: its own start times
        batch = []
        for i, t in enumerate(templates):
            number = i.to_bytes(2, "big")
            context = SpanContext(int.from_bytes(marker + os.urandom(8) + number, "big"),
                                  int.from_bytes(marker + number, "big"), is_remote=False,
                                  trace_flags=TraceFlags(TraceFlags.SAMPLED))
            span = ReadableSpan(name=t.name, context=context, resource=t.resource, attributes=None, events=t.events,
                                kind=t.kind, status=t.status, start_time=t.start_time + shift, end_time=t.end_time + shift,
                                instrumentation_scope=t.instrumentation_scope)
            span._attributes = t._attributes
            batch.append(span)
        body = encode_spans(batch).SerializePartialToString()
        if body.count(marker) == 2 * BATCH:  # else the marker also occurs elsewhere in the body: draw again
            out.append((body, sum(1 for i in range(BATCH) if i % every == 0)))
    return out


# Each span's start_time_unix_nano (field 7) and end_time_unix_nano (field 8): fixed64, their tag bytes.
_START_TAG, _END_TAG = b"\x39", b"\x41"
_TIME = struct.Struct("<Q")


class FreshIds:
    """A body of ``bodies()``: ``body()`` is the same spans under new trace and span ids, starting now.

    The body is cut around what changes (each id's marker, each span's start and end time, in place in
    the wire format), so a request is one join of the pieces: ~0.3 ms for 512 spans, nothing re-encoded.
    """

    def __init__(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans = [span for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans
                 for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]
        self.size = len(body)
        marker = spans[0].span_id[:MARKER_BYTES]
        slots: list[tuple[int, int, int | None]] = []  # (where, how long, which time: None for a marker)
        at = body.find(marker)
        while at != -1:
            slots.append((at, MARKER_BYTES, None))
            at = body.find(marker, at + MARKER_BYTES)
        self._times: list[int] = []
        cursor = 0
        for span in spans:  # in the body's order: each span's times after the previous span's
            for tag, value in ((_START_TAG, span.start_time_unix_nano), (_END_TAG, span.end_time_unix_nano)):
                at = body.find(tag + _TIME.pack(value), cursor)
                if at == -1:
                    raise ValueError("a span's time is not where the wire format puts it")
                slots.append((at + 1, _TIME.size, len(self._times)))
                self._times.append(value)
                cursor = at + 1 + _TIME.size
        slots.sort()
        self._pieces: list[bytes] = []  # the body's bytes between slots, a placeholder for each slot
        self._marker_places: list[int] = []
        self._time_places: list[int] = [0] * len(self._times)
        end = 0
        for at, length, time_index in slots:
            if at < end:
                raise ValueError("an id marker overlaps a span's time")
            self._pieces.append(body[end:at])
            if time_index is None:
                self._marker_places.append(len(self._pieces))
            else:
                self._time_places[time_index] = len(self._pieces)
            self._pieces.append(b"")
            end = at + length
        self._pieces.append(body[end:])
        self._times_format = struct.Struct(f"<{len(self._times)}Q")

    def body(self) -> bytes:
        pieces = self._pieces.copy()
        marker = os.urandom(MARKER_BYTES)
        for place in self._marker_places:
            pieces[place] = marker
        shift = time.time_ns() - self._times[0]
        times = memoryview(self._times_format.pack(*[value + shift for value in self._times]))
        for index, place in enumerate(self._time_places):
            pieces[place] = times[index * 8:index * 8 + 8]
        return b"".join(pieces)


def run_phase(send: Any, prepared: list[tuple[FreshIds, int]], phase: dict[str, Any]) -> dict[str, Any]:
    """Post batches from ``start_at`` (epoch seconds) for ``seconds``, at ``rate`` spans/s (0: flat out)."""
    rate = phase.get("rate", 0)
    interval = BATCH / rate if rate else 0.0
    time.sleep(max(0.0, phase.get("start_at", 0) - time.time()))
    ok_spans = ok_generations = ok_requests = failed_requests = 0
    start = time.perf_counter()
    deadline = start + phase["seconds"]
    next_at = start
    i = 0
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        if interval:
            if now < next_at:
                time.sleep(min(next_at - now, deadline - now))
                continue
            next_at += interval
        template, generations = prepared[i % len(prepared)]
        i += 1
        if send(template.body()).success:
            ok_requests += 1
            ok_spans += BATCH
            ok_generations += generations
        else:
            failed_requests += 1
    return {"label": phase.get("label", ""), "traffic": phase["traffic"], "seconds": time.perf_counter() - start,
            "spans": ok_spans, "generation_spans": ok_generations, "requests": ok_requests,
            "failed_requests": failed_requests, "body_bytes": prepared[0][0].size}


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    args = json.loads(sys.argv[1])
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    phases = args["phases"]
    prepared = {traffic: [(FreshIds(body), generations) for body, generations in bodies(traffic, args.get("bodies", 8))]
                for traffic in {p["traffic"] for p in phases}}
    # The exporter's own client: what OTLPSpanExporter.export() calls once it has encoded a batch.
    senders = {url: OTLPSpanExporter(endpoint=url + "/v1/traces", timeout=30)._client.export
               for url in {p["url"] for p in phases}}
    emit({"phases": [run_phase(senders[p["url"]], prepared[p["traffic"]], p) for p in phases]})


if __name__ == "__main__":
    main()
