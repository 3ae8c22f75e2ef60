"""A local server standing in for the Arthur Engine's trace ingest (``genai-engine``), as read from its source.

The Engine is Arthur's open-source product; it cannot run here (Python 3.12, torch, PostgreSQL), so
this answers its ingest contract (``/work/shared/reference/arthur-engine-api.md``, checked against
``src/routers/v1/trace_api_routes.py``, ``legacy_span_routes.py``, ``routers/route_handler.py``,
``services/trace/trace_ingestion_service.py``, ``repositories/tasks_repository.py`` and
``routers/v2/task_management_routes.py``). Everything it accepts lands in SQLite (``engine_store``).

Endpoints::

    POST /api/v1/traces          OTLP protobuf ExportTraceServiceRequest -> 200/206/422 span counts
    POST /v1/traces              the same; the Engine's deprecated route
    POST /api/v2/tasks           {"name", "is_agentic"?} -> the task (200)
    GET  /api/v2/tasks/{task_id} the task, 404 unknown, 400 not a UUID (what ``otel-arthur doctor`` reads)
    GET  /_local/spans           local only, no auth: stored spans; ?task_id=…&trace_id=…
    GET  /_local/tasks           local only, no auth: every task, with the service names mapped to it
    GET  /_local/stats           local only, no auth: task, span and request counts
    GET  /_local/faults          local only, no auth: faults in force and how many were injected
    POST /_local/faults          local only, no auth: replace the faults (``arthur_faults``)

As the Engine does:

- ``Authorization: Bearer <key>`` (one key here, no JWT): 401 ``Requires authentication`` without
  the header, 401 ``Bad credentials`` otherwise; answered before the body is read.
- The body is read whole and parsed with ``ExportTraceServiceRequest.ParseFromString``: no
  ``Content-Encoding`` support, so a gzip body fails to parse, 400 ``Invalid protobuf message
  format``. Before that, FastAPI (under the Engine) treats a body without ``Content-Type`` or with a
  JSON one as JSON, and the Engine's route class turns its validation error into a 400: an
  OTLP/JSON body is refused 400. An empty body is likewise refused 400 (FastAPI: field required).
- Routing per resource, first match wins: resource attribute ``arthur.task`` taken as given; the
  ``service.name`` → task mapping; a new task named after the service name (``is_autocreated``,
  ``is_agentic``; the Engine names it the service name itself, not ``auto-created:…``) mapped to it;
  else the ``__unmapped__`` task. A GCP ``cloud.resource_id`` match is not modelled.
- ``arthur.task`` naming no task: the spans' foreign key fails, nothing of the request is stored and
  the answer is 500 ``{"detail": "(sqlite3.IntegrityError) FOREIGN KEY constraint failed"}`` — the
  Engine's ``str(exc)`` of the same failure on SQLite (its unit tests' database; PostgreSQL words it
  differently). Tasks auto-created by the request stay, as in the Engine (created before the insert).
- Answer ``{"total_spans", "accepted_spans", "rejected_spans", "rejection_reasons", "status"}``:
  200 ``success`` when nothing was rejected (no spans too), 206 ``partial_success``, 422 ``failure``.
  Errors are ``{"detail": "…"}``.

The Engine rejects a span only when processing it raises, which well-formed OTLP never makes it do.
The stand-in's own, documented choice: a span is rejected (``Invalid span data format: …``, the
Engine's wording) when its ``trace_id`` is not 16 bytes or its ``span_id`` not 8, or all zero (what
OTLP calls invalid), and when a per-record fault is drawn for it. Ids are stored as lowercase hex.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from otel_arthur.local import arthur_faults
from otel_arthur.local.arthur_faults import FaultInjector, Faults, InjectFaults
from otel_arthur.local.engine_store import LocalEngineStore, SpanRow
from otel_arthur.local.stand_in import (
    CountRequests,
    http_error_handler,
    local_stats,
    same,
)
from otel_arthur.otlp import any_value

__all__ = [
    "DEFAULT_API_KEY",
    "Faults",
    "LocalEngineStore",
    "RunningLocalEngine",
    "TRACES_PATH",
    "create_app",
    "running",
]

TRACES_PATH = "/api/v1/traces"
DEPRECATED_TRACES_PATH = "/v1/traces"
TASKS_PATH = "/api/v2/tasks"
LOCAL_PREFIX = "/_local"
# The routes faults apply to: the Engine's API, never /_local.
API_PREFIXES = ("/api/", "/v1/")

# Not a secret: it only opens this offline stand-in.
DEFAULT_API_KEY = "local-engine-api-key"

TASK_ATTRIBUTE = "arthur.task"
SERVICE_NAME_ATTRIBUTE = "service.name"

_TRACE_ID_BYTES = 16
_SPAN_ID_BYTES = 8
_STATUS_CODES = {ProtoStatus.STATUS_CODE_UNSET: "Unset", ProtoStatus.STATUS_CODE_OK: "Ok",
                 ProtoStatus.STATUS_CODE_ERROR: "Error"}
_INGEST_STATUSES = {"success": 200, "partial_success": 206, "failure": 422}


# --- pure parts -----------------------------------------------------------------------------------


def fastapi_body_problem(content_type: str | None, body: bytes) -> str | None:
    """Why FastAPI refuses the body before the Engine's handler sees it (the Engine answers 400), or None.

    FastAPI reads a body without ``Content-Type``, or with a JSON one, as JSON; the handler wants
    ``bytes``, which a JSON object or array is not.
    """
    if not body:
        return "1 validation error: body: Field required"
    media = (content_type or "").split(";")[0].strip().lower()
    if media and not (media == "application/json" or media.endswith("+json")):
        return None
    try:
        json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return "1 validation error: body: JSON decode error"
    return "1 validation error: body: Input should be a valid bytes"


def span_problem(span: ProtoSpan) -> str | None:
    """Why the stand-in rejects this span (see the module docstring), or None."""
    for name, value, size in (("trace_id", span.trace_id, _TRACE_ID_BYTES), ("span_id", span.span_id, _SPAN_ID_BYTES)):
        if len(value) != size or not any(value):
            return f"{name} must be {size} bytes, not all zero; got {len(value)} bytes {value.hex()!r}"
    return None


def span_row(span: ProtoSpan, task_id: str, resource_attributes: dict[str, Any]) -> SpanRow:
    return SpanRow(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        name=span.name,
        kind=ProtoSpan.SpanKind.Name(span.kind),
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
        status_code=_STATUS_CODES.get(span.status.code, "Unset"),
        task_id=task_id,
        attributes=_attributes(span.attributes),
        resource_attributes=resource_attributes,
    )


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in key_values}


def _text(value: Any) -> str | None:
    """A resource attribute as the Engine reads ``arthur.task`` and ``service.name``: its string form."""
    return None if value is None else str(value)


def ingest_answer(total: int, rejection_reasons: list[str]) -> tuple[int, dict[str, Any]]:
    """The Engine's ``_create_response``: status code and body for these counts."""
    rejected = len(rejection_reasons)
    accepted = total - rejected
    status = "success" if rejected == 0 else "partial_success" if accepted > 0 else "failure"
    body = {"total_spans": total, "accepted_spans": accepted, "rejected_spans": rejected,
            "rejection_reasons": rejection_reasons, "status": status}
    return _INGEST_STATUSES[status], body


def task_response(task: dict[str, Any]) -> dict[str, Any]:
    """A task as the Engine's ``TaskResponse`` carries it (times in milliseconds since the epoch)."""
    return {
        "id": task["id"],
        "name": task["name"],
        "created_at": task["created_at"],
        "updated_at": task["created_at"],  # tasks are never updated here
        "is_agentic": task["is_agentic"],
        "is_autocreated": task["is_autocreated"],
        "is_system_task": task["is_system_task"],
        "is_archived": False,
        "agent_metadata": None,
        "rules": [],
        "metrics": [],
    }


# --- HTTP -----------------------------------------------------------------------------------------


def _store(request: Request) -> LocalEngineStore:
    return request.app.state.store


def _authorize(request: Request) -> None:
    """Raise 401 unless ``Authorization: Bearer <the API key>``, worded as the Engine words it."""
    credential = request.headers.get("authorization")
    if not credential:
        raise HTTPException(401, "Requires authentication")
    parts = credential.split()
    if len(parts) != 2 or parts[0].lower() != "bearer" or not same(parts[1], request.app.state.api_key):
        raise HTTPException(401, "Bad credentials")


async def _post_traces(request: Request) -> Response:
    _authorize(request)
    body = await request.body()
    problem = fastapi_body_problem(request.headers.get("content-type"), body)
    if problem is not None:
        raise HTTPException(400, problem)
    export = ExportTraceServiceRequest()
    try:
        export.ParseFromString(body)  # whatever Content-Encoding says: the Engine never decompresses
    except DecodeError:
        raise HTTPException(400, "Invalid protobuf message format") from None
    store = _store(request)
    total = sum(len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans)
    faults: FaultInjector = request.app.state.faults
    drawn = iter(faults.record_faults(total) or repeat(None))
    accepted: list[SpanRow] = []
    reasons: list[str] = []
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        task_id = store.resolve_task(_text(resource.get(TASK_ATTRIBUTE)), _text(resource.get(SERVICE_NAME_ATTRIBUTE)))
        for span in (span for scope in resource_spans.scope_spans for span in scope.spans):
            fault = next(drawn)
            problem = f"fault injected: record {fault}" if fault is not None else span_problem(span)
            if problem is None:
                accepted.append(span_row(span, task_id, resource))
            else:
                reasons.append(f"Invalid span data format: {problem}")
    try:
        store.add_spans(accepted)
    except sqlite3.IntegrityError as exc:  # an arthur.task that names no task
        raise HTTPException(500, f"(sqlite3.IntegrityError) {exc}") from None
    status, answer = ingest_answer(total, reasons)
    return JSONResponse(answer, status_code=status)


async def _post_task(request: Request) -> Response:
    _authorize(request)
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise HTTPException(400, "1 validation error: body: JSON decode error") from None
    name = body.get("name") if isinstance(body, dict) else None
    is_agentic = body.get("is_agentic", False) if isinstance(body, dict) else False
    if not isinstance(name, str) or not isinstance(is_agentic, bool):
        raise HTTPException(400, 'body must be {"name": "...", "is_agentic": false}')
    if not name.strip():
        raise HTTPException(400, "Task names cannot contain only white space characters")
    return JSONResponse(task_response(_store(request).create_task(name, is_agentic=is_agentic)))


async def _get_task(request: Request) -> Response:
    _authorize(request)
    try:
        task_id = str(uuid.UUID(request.path_params["task_id"]))
    except ValueError:
        raise HTTPException(400, "1 validation error: path.task_id: Input should be a valid UUID") from None
    task = _store(request).get_task(task_id)
    if task is None:
        raise HTTPException(404, f"Task {task_id} not found.")
    return JSONResponse(task_response(task))


async def _get_local_spans(request: Request) -> Response:
    query = request.query_params
    return JSONResponse(_store(request).spans(task_id=query.get("task_id"), trace_id=query.get("trace_id")))


async def _get_local_tasks(request: Request) -> Response:
    return JSONResponse(_store(request).tasks())


def create_app(
    db_path: str | os.PathLike[str], *, api_key: str = DEFAULT_API_KEY, faults: Faults | None = None
) -> Starlette:
    """The local Engine over the SQLite database at ``db_path`` (``":memory:"`` works too).

    The store is ``app.state.store``, the fault injector ``app.state.faults``; whoever created the
    app closes the store when done with it.
    """
    store = LocalEngineStore(db_path)
    routes = [
        Route(TRACES_PATH, _post_traces, methods=["POST"]),
        Route(DEPRECATED_TRACES_PATH, _post_traces, methods=["POST"]),
        Route(TASKS_PATH, _post_task, methods=["POST"]),
        Route(f"{TASKS_PATH}/{{task_id}}", _get_task, methods=["GET"]),
        Route(f"{LOCAL_PREFIX}/spans", _get_local_spans, methods=["GET"]),
        Route(f"{LOCAL_PREFIX}/tasks", _get_local_tasks, methods=["GET"]),
        Route(f"{LOCAL_PREFIX}/stats", local_stats, methods=["GET"]),
        *arthur_faults.routes(LOCAL_PREFIX),
    ]
    injector = FaultInjector(faults)
    app = Starlette(
        routes=routes,
        # Counting outermost: injected faults show in the request counts (a dropped connection as 502).
        middleware=[Middleware(CountRequests, store=store, local_prefix=LOCAL_PREFIX),
                    Middleware(InjectFaults, injector=injector, prefix=API_PREFIXES, error_key="detail")],
        exception_handlers={HTTPException: http_error_handler("detail")},
    )
    app.state.store = store
    app.state.faults = injector
    app.state.api_key = api_key
    return app


@dataclass(frozen=True)
class RunningLocalEngine:
    """A local Engine being served: where it is, the key it accepts, its store and its faults."""

    url: str
    api_key: str
    store: LocalEngineStore
    faults: FaultInjector

    @property
    def traces_url(self) -> str:
        return f"{self.url}{TRACES_PATH}"

    def spans(self, *, task_id: str | None = None, trace_id: str | None = None) -> list[dict[str, Any]]:
        return self.store.spans(task_id=task_id, trace_id=trace_id)

    def stats(self) -> dict[str, Any]:
        return self.store.stats()


@contextmanager
def running(
    db_path: str | os.PathLike[str] = ":memory:",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_API_KEY,
    faults: Faults | None = None,
) -> Iterator[RunningLocalEngine]:
    """Serve a local Engine on a background thread (a free port by default); always stopped on exit."""
    from otel_arthur.local.runner import (
        BackgroundServer,  # uvicorn: only when actually serving
    )

    app = create_app(db_path, api_key=api_key, faults=faults)
    try:
        with BackgroundServer(app, host, port) as server:
            yield RunningLocalEngine(server.url, api_key, app.state.store, app.state.faults)
    finally:
        app.state.store.close()
