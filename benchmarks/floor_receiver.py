"""The floor ``serve`` is measured against: the least an OTLP/HTTP receiver that stores each span can do.

The same stack as ``serve`` (uvicorn + Starlette, the work in Starlette's thread pool), and per request:
parse the OTLP protobuf (upb), build a plain dict per span with every attribute converted to Python
(the resource's once per ``ResourceSpans``), encode it with orjson, one ``executemany`` and one commit
into SQLite (WAL, ``synchronous=NORMAL``, as serve's spool), then answer 200. No classification,
mapping, privacy or delivery: what remains is the cost of receiving and durably keeping the spans.

    python benchmarks/floor_receiver.py --port 4321 --db /tmp/floor.sqlite3

``GET /stats`` answers ``{"requests": …, "spans": …}`` (committed).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_EMPTY = ExportTraceServiceResponse().SerializeToString()


def python_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [python_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: python_value(pair.value) for pair in pairs}


def span_rows(body: bytes) -> list[tuple[str, str, bytes]]:
    """(trace id, span id, the span as JSON) for each span of an OTLP/HTTP protobuf body."""
    request = ExportTraceServiceRequest.FromString(body)
    rows = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
                record = {
                    "trace_id": trace_id, "span_id": span_id, "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name, "kind": span.kind, "start_time_unix_nano": span.start_time_unix_nano,
                    "end_time_unix_nano": span.end_time_unix_nano, "attributes": attributes(span.attributes),
                    "status": {"code": span.status.code, "message": span.status.message},
                    "resource": resource, "scope": scope,
                }
                rows.append((trace_id, span_id, orjson.dumps(record)))
    return rows


class SpanStore:
    """One SQLite file, one transaction per request."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL,"
                         " body BLOB NOT NULL)")
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "spans": 0}

    def add(self, body: bytes) -> None:
        rows = span_rows(body)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO spans VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")
            self.counts["requests"] += 1
            self.counts["spans"] += len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def create_app(store: SpanStore) -> Starlette:
    async def traces(request: Request) -> Response:
        await run_in_threadpool(store.add, await request.body())
        return Response(_EMPTY, media_type="application/x-protobuf")

    async def stats(request: Request) -> Response:
        return JSONResponse(store.counts)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.close()

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/stats", stats)],
                     lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(SpanStore(args.db)), host="127.0.0.1", port=args.port, http="h11",  # serve's protocol
                log_config=None, log_level="warning", access_log=False, server_header=False)


if __name__ == "__main__":
    main()
