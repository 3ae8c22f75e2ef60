"""The HTTP layer of ``serve``: a few Starlette routes under uvicorn, over ``Receiver`` and ``Pipeline``.

::

    POST /v1/traces   headers checked first (token, type, declared length: answered before a byte of the
                      body is read), then the body read up to the limit + 1 byte, then Receiver.handle
                      on a worker thread
    GET  /healthz     200 while the process serves
    GET  /readyz      200 when ready, else 503; JSON says what is missing
    GET  /metrics     Prometheus text format

Why Starlette under uvicorn: they already are this project's server stack (the ``server`` extra;
the local Arthur and OpenAI endpoints run on them), both are maintained and widely deployed, and
they give what a receiver beside a Collector needs without code of ours: HTTP/1.1 keep-alive (the
Collector holds its connections open), a streamed request body (so the read is bounded),
``run_in_threadpool`` (inflating, decoding, mapping and the SQLite append run off the event loop),
lifespan hooks, and a graceful shutdown on SIGTERM that stops listening, closes idle connections
and lets requests in flight finish. What uvicorn lacks, read deadlines for headers and body and a
cap on open connections, ``connections.py`` adds to its h11 protocol. ``http.server`` has no graceful drain and is not meant for
production; aiohttp would be a second HTTP stack to carry for no gain. OTLP/gRPC runs beside it on
grpcio (``grpc_receiver.py``), over the same ``Receiver``; both listen on ``--host``, both speak TLS when
a certificate is given.

Shutdown, on SIGTERM or SIGINT, within ``shutdown_timeout`` seconds of the signal: uvicorn stops
accepting connections (and the gRPC server new calls) and waits for the requests in flight (each is
answered: 200 once spooled);
then the lifespan hook makes any later request a 503 and gives the pipeline the time left to
deliver. What is not delivered by then stays in the spool for the next start. Work still running
``EXIT_GRACE`` after the timeout (a request stuck on the spool's lock, a decode uvicorn cannot
cancel) does not hold the exit: the process ends anyway, its unanswered requests are retried by
their clients, and the spool survives an abrupt end. The exit status after SIGTERM is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Sequence
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from otel_arthur import __version__
from otel_arthur.config import (
    OTEL_ARTHUR_RECEIVER_ALLOW_PLAINTEXT_TOKEN,
    ArthurSettings,
    ConfigurationError,
    EngineSettings,
    ReceiverSettings,
    display_url,
)
from otel_arthur.destinations import OtlpExtraction, destination_for
from otel_arthur.pipeline import Pipeline, shutdown_side_by_side
from otel_arthur.retry import RetryPolicy
from otel_arthur.serve import metrics
from otel_arthur.serve.connections import ConnectionGuard
from otel_arthur.serve.grpc_receiver import GrpcReceiver
from otel_arthur.serve.processes import DecodeProcesses
from otel_arthur.serve.receiver import Receiver
from otel_arthur.serve.warmup import ready_to_serve
from otel_arthur.stats import GAUGE, Sample

# An idle kept-alive connection is closed by the client, not by serve: uvicorn's 5 s default equals
# serve's Retry-After, so a Collector retrying on its idle connection met the close half-way ("connection
# reset by peer", one more retry); the Collector's HTTP client closes idle connections after 90 s.
KEEP_ALIVE_SECONDS = 120

__all__ = ["EXIT_GRACE", "TRACES_PATH", "Lifecycle", "create_app", "serve"]

_logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's default path; the Collector's otlphttp exporter appends it
_BACKLOG = 2048  # uvicorn's own default
EXIT_GRACE = 0.5  # seconds past the shutdown timeout after which the process ends, whatever still runs
_RESERVED_DESCRIPTORS = 64  # for the spool, logs, decode processes' pipes and Arthur, beside the connections
BUILD_INFO = Sample("otel_arthur_build_info", GAUGE, {"version": __version__}, 1.0)  # Prometheus' *_build_info idiom


class Lifecycle:
    """When shutdown began and whether it is done: uvicorn's signal handler starts the clock."""

    def __init__(self, pipelines: Sequence[Pipeline], receiver: Receiver, shutdown_timeout: float) -> None:
        self.pipelines = pipelines
        self.receiver = receiver
        self.shutdown_timeout = shutdown_timeout
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._done = False

    def signalled(self) -> None:
        """Called from the signal handler: no I/O, no logging, just the clock."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.shutdown_timeout

    def remaining(self) -> float:
        """Seconds left of the shutdown timeout, counted from the signal (from now when there was none)."""
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self.shutdown_timeout
        return max(deadline - time.monotonic(), 0.0)

    def shutdown(self) -> None:
        """Refuse new requests (503), deliver for the time left, leave the rest in the spool. Once."""
        with self._lock:
            if self._done:
                return
            self._done = True
        self.receiver.stop_accepting()
        remaining = self.remaining()
        _logger.info("Shutting down: no longer accepting spans; delivering to %s for up to %.1f s",
                     " and ".join(p.destination.title for p in self.pipelines), remaining)
        shutdown_side_by_side(self.pipelines, remaining)


async def _read_body(request: Request, limit: int) -> bytes:
    """At most ``limit + 1`` bytes: enough for the receiver to see that a body is over the limit."""
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


def create_app(pipeline: Pipeline | Sequence[Pipeline], settings: ReceiverSettings, *,
               receiver: Receiver | None = None, grpc_receiver: GrpcReceiver | None = None) -> Starlette:
    """The app over one pipeline per destination; its lifespan shuts them down. ``app.state.lifecycle``, ``.receiver``.

    ``grpc_receiver``: the OTLP/gRPC receiver beside it, in ``/readyz`` and ``/metrics`` too.
    """
    pipelines = [pipeline] if isinstance(pipeline, Pipeline) else list(pipeline)
    receiver = receiver or Receiver({p.destination.name: p for p in pipelines}, max_body_bytes=settings.max_body_bytes,
                                    max_spans_per_request=settings.max_spans_per_request,
                                    auth_token=settings.auth_token,
                                    extraction=OtlpExtraction.of(p.destination for p in pipelines))
    lifecycle = Lifecycle(pipelines, receiver, settings.shutdown_timeout)

    def ready() -> tuple[bool, dict[str, object]]:
        """Ready when every destination is; the top-level fields hold for all of them, ``destinations`` each."""
        each = {p.destination.name: p.readiness() for p in pipelines}
        receivers = {"http": True} | ({"grpc": grpc_receiver.serving} if grpc_receiver else {})
        ready = all(r.ready for r in each.values()) and receiver.accepting and all(receivers.values())
        reachable = [r.arthur_reachable for r in each.values()]
        return ready, {"ready": ready, "model_fetched": all(r.model_fetched for r in each.values()),
                       "arthur_reachable": None if None in reachable else all(reachable),
                       "spool_writable": all(r.spool_writable for r in each.values()),
                       "spool_recovered_from": next((r.spool_recovered_from for r in each.values()
                                                     if r.spool_recovered_from), None),
                       "accepting": receiver.accepting, "receivers": receivers,
                       "destinations": {name: dataclasses.asdict(r) | {"ready": r.ready} for name, r in each.items()}}

    def service_samples() -> list[Sample]:  # readiness and the version
        return [Sample("otel_arthur_ready", GAUGE, {}, 1.0 if ready()[0] else 0.0), BUILD_INFO]

    collectors = metrics.registry(receiver.counters.samples,
                                  metrics.pipeline_samples([(p.destination.name, p) for p in pipelines]),
                                  service_samples, *([grpc_receiver.samples] if grpc_receiver else []))

    async def traces(request: Request) -> Response:
        reply = receiver.answer_from_headers(request.headers)
        if reply is None:
            try:
                body = await _read_body(request, receiver.max_body_bytes)
                reply = await run_in_threadpool(receiver.handle, body, request.headers)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is left to read it
            except asyncio.CancelledError:
                # uvicorn cancels what still runs when its shutdown wait ends, and would answer 500, which
                # the Collector drops: a 503 it retries (the records may be spooled already: at least once).
                receiver.stop_accepting()
                reply = receiver.answer_from_headers(request.headers)
                assert reply is not None
        # Answered from the headers, the body is left unread: uvicorn discards it as it arrives.
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
    """uvicorn's server, its shutdown held to the lifecycle's deadline, counted from the signal; the gRPC
    server stops with it."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grpc_receiver: GrpcReceiver) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grpc_receiver = grpc_receiver

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._lifecycle.signalled()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn waits for the requests in flight for its own timeout from now: ours started at the signal
        self.config.timeout_graceful_shutdown = self._lifecycle.remaining()  # type: ignore[assignment]
        _exit_at_the_latest(self._lifecycle.remaining() + EXIT_GRACE)
        # New calls refused now, calls in flight finish within the same deadline as HTTP's requests
        self._grpc_receiver.stop(self._lifecycle.remaining())
        await super().shutdown(sockets)


def _exit_at_the_latest(seconds: float) -> None:
    """End the process ``seconds`` from now if it still runs: a daemon timer, so a timely exit cancels it."""
    def exit_now() -> None:
        _logger.error("Still busy %.1f s past the shutdown timeout: exiting now; requests not answered are"
                      " retried by their clients, records not delivered stay in the spool", EXIT_GRACE)
        os._exit(0)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()


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


def _connection_cap(wanted: int) -> int:
    """``wanted``, or fewer when the file-descriptor limit could not hold that many connections."""
    import resource  # POSIX, as the spool is

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or wanted <= soft - _RESERVED_DESCRIPTORS:
        return wanted
    allowed = max(soft - _RESERVED_DESCRIPTORS, 1)
    _logger.warning("--max-connections %d lowered to %d: the file-descriptor limit (ulimit -n) is %d",
                    wanted, allowed, soft)
    return allowed


def serve(destinations: Sequence[ArthurSettings | EngineSettings], settings: ReceiverSettings, *,
          retry_policy: RetryPolicy | None = None) -> int:
    """Listen until SIGTERM or SIGINT, then drain; 0 after SIGTERM. ``OSError`` if the address is taken.

    ``destinations``: the settings of each destination to deliver to (v3, Arthur Engine, or both).
    """
    _refuse_token_in_clear(settings)
    sock = _bind(settings.host, settings.port)  # before anything else but the settings: a taken port fails fast
    port = sock.getsockname()[1]
    pipelines: list[Pipeline] = []
    try:
        for destination in destinations:
            pipelines.append(Pipeline(to=destination_for(destination), retry_policy=retry_policy))
        extraction = OtlpExtraction.of(p.destination for p in pipelines)
        decoder = DecodeProcesses(settings.decode_processes, extraction) if settings.decode_processes else None
    except BaseException:
        sock.close()
        shutdown_side_by_side(pipelines, 0)
        raise
    receiver = Receiver({p.destination.name: p for p in pipelines}, max_body_bytes=settings.max_body_bytes,
                        max_spans_per_request=settings.max_spans_per_request, auth_token=settings.auth_token,
                        extraction=extraction, decoder=decoder.decode if decoder else None)
    try:
        grpc_receiver = GrpcReceiver(receiver, settings)  # after the decode processes: grpcio must not be forked
    except BaseException:
        sock.close()
        shutdown_side_by_side(pipelines, 0)
        if decoder is not None:
            decoder.close()
        raise
    app = create_app(pipelines, settings, receiver=receiver, grpc_receiver=grpc_receiver)
    lifecycle: Lifecycle = app.state.lifecycle
    guard = ConnectionGuard(settings.header_timeout, settings.body_timeout, _connection_cap(settings.max_connections),
                            receiver.counters.connection_closed)
    config = uvicorn.Config(app, http=guard.protocol(), log_config=None, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=max(int(settings.shutdown_timeout), 1),
                            timeout_keep_alive=KEEP_ALIVE_SECONDS, server_header=False, **_uvicorn_tls(settings))
    server = _Server(config, lifecycle, grpc_receiver)
    scheme = "https" if settings.tls else "http"
    _logger.info("Receiving OTLP/HTTP traces on %s://%s:%d%s and OTLP/gRPC on %s:%d for %s; spool %s; auth %s; TLS %s",
                 scheme, settings.host, port, TRACES_PATH, settings.host, grpc_receiver.port,
                 " and ".join(_described(d) for d in destinations), destinations[0].spool_dir,
                 "bearer token" if settings.auth_token else "none",
                 ("mutual" if settings.tls_client_ca_file else "on") if settings.tls else "off")
    previous = signal.signal(signal.SIGTERM, _drained)
    ready_to_serve(maps=decoder is None)  # else the decode processes map, each made ready as it started
    try:
        grpc_receiver.start()
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        stopped = grpc_receiver.stop(lifecycle.remaining())  # already stopping when uvicorn shut down
        lifecycle.shutdown()  # a no-op when the lifespan already did it
        stopped.wait(lifecycle.remaining() + EXIT_GRACE)
        if decoder is not None:
            decoder.close()
    _logger.info("Stopped")
    return 0


def _uvicorn_tls(settings: ReceiverSettings) -> dict[str, object]:
    """uvicorn's TLS options: the certificate and key, and with a client CA, a client certificate required."""
    if not settings.tls:
        return {}
    options: dict[str, object] = {"ssl_certfile": settings.tls_cert_file, "ssl_keyfile": settings.tls_key_file}
    if settings.tls_client_ca_file:
        options |= {"ssl_ca_certs": settings.tls_client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def _refuse_token_in_clear(settings: ReceiverSettings) -> None:
    """A bearer token sent in clear beyond this host can be read on the way: refuse to start, unless told
    that TLS ends in front of this process (``ConfigurationError``, exit 3)."""
    if not settings.token_in_clear_beyond_host:
        return
    if not settings.allow_plaintext_token:
        raise ConfigurationError(
            f"a bearer token is required but TLS is off and {settings.host} is reachable beyond this host: clients "
            "would send the token in clear. Pass --tls-cert-file and --tls-key-file, listen on 127.0.0.1, or, "
            f"behind a proxy or mesh that ends TLS, pass --allow-plaintext-token or set "
            f"{OTEL_ARTHUR_RECEIVER_ALLOW_PLAINTEXT_TOKEN}=true")
    _logger.warning("A bearer token is required but TLS is off on %s: allowed by --allow-plaintext-token, on the "
                    "understanding that TLS ends in front of this process", settings.host)


def _described(destination: ArthurSettings | EngineSettings) -> str:
    if isinstance(destination, EngineSettings):
        routing = f"task {destination.task_id}" if destination.task_id else "tasks by service.name"
        return f"Arthur Engine at {display_url(destination.url)} ({routing}, {destination.spans} spans)"
    return f"Arthur model {destination.model_id} at {display_url(destination.url)}"
