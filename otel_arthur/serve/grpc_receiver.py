"""OTLP/gRPC ``TraceService/Export`` for ``serve``, on grpcio: the same ``Receiver.handle`` as OTLP/HTTP.

The Collector's ``loadbalancing`` exporter speaks only OTLP/gRPC, and most SDKs default to it. The
method is registered with no deserializer, so the request reaches ``Receiver.handle`` as the bytes
on the wire (gRPC has already inflated a gzip message), with its metadata as OTLP/HTTP protobuf
headers: decoding, the limits, the token, mapping, spooling and ``partial_success`` are the HTTP
path's, word for word. Its answer becomes a gRPC status as the OTLP spec maps them::

    HTTP  gRPC                 status details                      the Collector's otlp exporter
    200   OK                   ExportTraceServiceResponse          done (partial_success logged)
    400   INVALID_ARGUMENT     google.rpc.Status                   drops
    401   UNAUTHENTICATED      google.rpc.Status                   drops
    413   RESOURCE_EXHAUSTED   google.rpc.Status, no RetryInfo     drops (retried only with RetryInfo)
    415   INVALID_ARGUMENT     (no other content type exists in gRPC)
    503   UNAVAILABLE          google.rpc.Status + RetryInfo       retries after retry_delay

The code is the one the HTTP error body already carries (``google.rpc.Status.code``). The status
travels in ``grpc-status-details-bin`` (what Go clients read); the RetryInfo also alone in
``google.rpc.retryinfo-bin``, the trailer the Python SDK's exporter reads. A message over
``--max-body-bytes`` (once inflated) is refused by gRPC itself with RESOURCE_EXHAUSTED, before it
reaches the receiver, so it is not in the receiver's counters.

grpcio and ``fork`` do not mix: the server is created in the serving process only, after the decode
processes were spawned (never forked).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otel_arthur import otlp
from otel_arthur.config import ReceiverSettings
from otel_arthur.serve.receiver import GRPC, Receiver
from otel_arthur.stats import COUNTER, Sample

__all__ = ["EXPORT_METHOD", "GrpcReceiver"]

_logger = logging.getLogger(__name__)

_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
EXPORT_METHOD = f"/{_SERVICE}/Export"
_WORKERS = 16  # concurrent Export calls; each holds a thread while it decodes and spools, as HTTP's pool does
_RETRY_INFO_TRAILER = "google.rpc.retryinfo-bin"  # opentelemetry-exporter-otlp-proto-grpc reads it from here
_STATUS_TRAILER = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class GrpcReceiver:
    """A grpcio server on ``settings.host:settings.grpc_port`` whose one method is ``TraceService/Export``."""

    def __init__(self, receiver: Receiver, settings: ReceiverSettings) -> None:
        """Binds at once (``OSError`` when the port is taken); ``start()`` serves."""
        self._receiver = receiver
        self._codes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopped: threading.Event | None = None
        self._server = grpc.server(
            ThreadPoolExecutor(_WORKERS, thread_name_prefix="otel-arthur-grpc"),
            handlers=[grpc.method_handlers_generic_handler(_SERVICE, {
                "Export": grpc.unary_unary_rpc_method_handler(self._export)})],  # bytes in, bytes out
            options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                     ("grpc.so_reuseport", 0)])  # grpcio's default would let a second serve share the port
        address = f"[{settings.host}]:{settings.grpc_port}" if ":" in settings.host else \
            f"{settings.host}:{settings.grpc_port}"
        try:
            self.port = self._server.add_secure_port(address, _credentials(settings)) if settings.tls else \
                self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio >= 1.56 raises where older ones returned 0
            raise OSError(f"cannot listen for OTLP/gRPC on {address}: {exc}") from None
        if not self.port:
            raise OSError(f"cannot listen for OTLP/gRPC on {address}")

    @property
    def serving(self) -> bool:
        return self._stopped is None

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float) -> threading.Event:
        """Refuse new calls now; calls in flight get ``grace`` seconds, then are cancelled. Set once all are done."""
        with self._lock:
            if self._stopped is None:
                self._stopped = self._server.stop(grace)
            return self._stopped

    def samples(self) -> Iterator[Sample]:
        with self._lock:
            codes = dict(self._codes)
        for code, count in sorted(codes.items()):
            yield Sample("otel_arthur_receiver_grpc_responses_total", COUNTER, {"code": code}, count)

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        headers = {"content-type": otlp.PROTOBUF, "content-length": str(len(request))}
        headers.update((key, value) for key, value in context.invocation_metadata()
                       if key == "authorization" and isinstance(value, str))
        reply = self._receiver.handle(request, headers, transport=GRPC)
        if reply.status == 200:
            self._count(grpc.StatusCode.OK)
            return reply.body
        status = Status.FromString(reply.body)  # in protobuf, as asked: code and message
        code = _CODES[status.code]
        trailers: list[tuple[str, bytes]] = []
        retry_after = reply.headers.get("Retry-After")
        if retry_after is not None:
            retry_info = RetryInfo(retry_delay=Duration(seconds=int(retry_after)))
            status.details.add().Pack(retry_info)
            trailers.append((_RETRY_INFO_TRAILER, retry_info.SerializeToString()))
        trailers.append((_STATUS_TRAILER, status.SerializeToString()))
        self._count(code)
        context.set_trailing_metadata(trailers)
        context.abort(code, status.message)  # raises: grpcio sends the code, the message and the trailers

    def _count(self, code: grpc.StatusCode) -> None:
        with self._lock:
            self._codes[code.name] += 1


def _credentials(settings: ReceiverSettings) -> grpc.ServerCredentials:
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)
