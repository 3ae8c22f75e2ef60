"""The HTTP layer of ``serve``: a few Starlette routes under uvicorn, over ``Receiver`` and ``Pipeline``.

::

    POST /v1/traces   body read up to the limit + 1 byte, then Receiver.handle on a worker thread
    GET  /healthz     200 while the process serves
    GET  /readyz      200 when ready, else 503; JSON says what is missing
    GET  /metrics     Prometheus text format

Why Starlette under uvicorn: they already are this project's server stack (the ``server`` extra;
the local Arthur and OpenAI endpoints run on them), both are maintained and widely deployed, and
they give what a receiver beside a Collector needs without code of ours: HTTP/1.1 keep-alive (the
Collector holds its connections open), a streamed request body (so the read is bounded),
``run_in_threadpool`` (inflating, decoding, mapping and the SQLite append run off the event loop),
lifespan hooks, and a graceful shutdown on SIGTERM that stops listening, closes idle connections
and lets requests in flight finish. ``http.server`` has no graceful drain and is not meant for
production; aiohttp or a gRPC server would be a second stack to carry for no gain.

Shutdown, on SIGTERM or SIGINT, within ``shutdown_timeout`` seconds of the signal: uvicorn stops
accepting connections and waits for the requests in flight (each is answered: 200 once spooled);
then the lifespan hook makes any later request a 503 and gives the pipeline the time left to
deliver. What is not delivered by then stays in the spool for the next start. The exit status
after SIGTERM is 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from otel_arthur.config import ArthurSettings, ReceiverSettings, display_url
from otel_arthur.pipeline import Pipeline
from otel_arthur.retry import RetryPolicy
from otel_arthur.serve import metrics
from otel_arthur.serve.processes import DecodeProcesses
from otel_arthur.serve.receiver import Receiver
from otel_arthur.stats import GAUGE, Sample

__all__ = ["TRACES_PATH", "Lifecycle", "create_app", "serve"]

_logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's default path; the Collector's otlphttp exporter appends it
_BACKLOG = 2048  # uvicorn's own default


class Lifecycle:
    """When shutdown began and whether it is done: uvicorn's signal handler starts the clock."""

    def __init__(self, pipeline: Pipeline, receiver: Receiver, shutdown_timeout: float) -> None:
        self.pipeline = pipeline
        self.receiver = receiver
        self.shutdown_timeout = shutdown_timeout
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._done = False

    def signalled(self) -> None:
        """Called from the signal handler: no I/O, no logging, just the clock."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.shutdown_timeout

    def shutdown(self) -> None:
        """Refuse new requests (503), deliver for the time left, leave the rest in the spool. Once."""
        with self._lock:
            if self._done:
                return
            self._done = True
        self.receiver.stop_accepting()
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self.shutdown_timeout
        remaining = max(deadline - time.monotonic(), 0.0)
        _logger.info("Shutting down: no longer accepting spans; delivering to Arthur for up to %.1f s", remaining)
        self.pipeline.shutdown(remaining)


async def _read_body(request: Request, limit: int) -> bytes:
    """At most ``limit + 1`` bytes: enough for the receiver to see that a body is over the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b""  # the receiver answers 413 from the header; not a byte is read
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


def create_app(pipeline: Pipeline, settings: ReceiverSettings, *, receiver: Receiver | None = None) -> Starlette:
    """The app over ``pipeline``; its lifespan shuts the pipeline down. ``app.state.lifecycle``, ``.receiver``."""
    receiver = receiver or Receiver(pipeline, max_body_bytes=settings.max_body_bytes, auth_token=settings.auth_token)
    lifecycle = Lifecycle(pipeline, receiver, settings.shutdown_timeout)

    def ready() -> tuple[bool, dict[str, object]]:
        readiness = pipeline.readiness()
        ready = readiness.ready and receiver.accepting
        return ready, {"ready": ready, "model_fetched": readiness.model_fetched,
                       "arthur_reachable": readiness.arthur_reachable, "spool_writable": readiness.spool_writable,
                       "spool_recovered_from": readiness.spool_recovered_from, "accepting": receiver.accepting}

    def ready_samples() -> list[Sample]:
        return [Sample("otel_arthur_ready", GAUGE, {}, 1.0 if ready()[0] else 0.0)]

    collectors = metrics.registry(receiver.counters.samples,
                                  metrics.pipeline_samples([(pipeline.destination.name, pipeline)]), ready_samples)

    async def traces(request: Request) -> Response:
        try:
            body = await _read_body(request, receiver.max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        reply = await run_in_threadpool(receiver.handle, body, request.headers)
        return Response(reply.body, status_code=reply.status, headers=dict(reply.headers))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        is_ready, report = await run_in_threadpool(ready)
        return JSONResponse(report, status_code=200 if is_ready else 503)

    async def metrics_page(request: Request) -> Response:
        body = await run_in_threadpool(metrics.exposition, collectors)
        return Response(body, headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(lifecycle.shutdown)

    app = Starlette(
        routes=[
            Route(TRACES_PATH, traces, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.lifecycle = lifecycle
    app.state.receiver = receiver
    return app


class _Server(uvicorn.Server):
    """uvicorn's server, telling ``on_signal`` when SIGTERM or SIGINT arrives."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_signal()
        super().handle_exit(sig, frame)


def _drained(sig: int, frame: FrameType | None) -> None:
    """uvicorn (>= 0.29) raises SIGTERM again once it has shut down; by then the drain is done: exit 0."""


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)  # from here connections queue until uvicorn takes them, never refused
    except OSError:
        sock.close()
        raise
    return sock


def serve(arthur: ArthurSettings, settings: ReceiverSettings, *, retry_policy: RetryPolicy | None = None) -> int:
    """Listen until SIGTERM or SIGINT, then drain; 0 after SIGTERM. ``OSError`` if the address is taken."""
    sock = _bind(settings.host, settings.port)  # before anything else: a taken port fails fast
    port = sock.getsockname()[1]
    try:
        pipeline = Pipeline(arthur, retry_policy=retry_policy)
    except BaseException:
        sock.close()
        raise
    try:
        decoder = DecodeProcesses(settings.decode_processes) if settings.decode_processes else None
    except BaseException:
        sock.close()
        pipeline.shutdown(0)
        raise
    receiver = Receiver(pipeline, max_body_bytes=settings.max_body_bytes, auth_token=settings.auth_token,
                        decoder=decoder.decode if decoder else None)
    app = create_app(pipeline, settings, receiver=receiver)
    lifecycle: Lifecycle = app.state.lifecycle
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(int(settings.shutdown_timeout), 1), server_header=False)
    server = _Server(config, lifecycle.signalled)
    _logger.info("Receiving OTLP/HTTP traces on http://%s:%d%s for Arthur model %s at %s; spool %s; auth %s",
                 settings.host, port, TRACES_PATH, arthur.model_id, display_url(arthur.url), arthur.spool_dir,
                 "bearer token" if settings.auth_token else "none")
    previous = signal.signal(signal.SIGTERM, _drained)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        lifecycle.shutdown()  # a no-op when the lifespan already did it
        if decoder is not None:
            decoder.close()
    _logger.info("Stopped")
    return 0
