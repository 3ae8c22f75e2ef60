"""``Receiver.handle(body, headers) -> Reply``: every answer of ``POST /v1/traces``, decided without HTTP.

The OTLP/HTTP contract as the Collector's ``otlphttp`` exporter reads it: it retries 429, 502, 503
and 504 (honouring ``Retry-After``) and drops the data on any other status. So::

    status  when                                                             body
    200     the generation spans are in the spool; other spans ignored       ExportTraceServiceResponse, with
                                                                             partial_success counting the generation
                                                                             spans that could not be mapped
    400     undecodable: bad protobuf or JSON, corrupt or truncated gzip      google.rpc.Status
    401     a token is set and Authorization is not ``Bearer <token>``        google.rpc.Status
    413     body over the limit, as sent or once decompressed; more spans     google.rpc.Status
            (or resource or scope groups) than the limit, counted before any
            is decoded
    415     content type not protobuf or JSON; encoding not gzip/deflate      google.rpc.Status
    503     spool full, spool not writable, shutting down; ``Retry-After``    google.rpc.Status

Checked cheapest first: the token before the body, the declared length before a byte is inflated,
the spans counted before any is decoded.
Bodies are in the request's content type (protobuf when that is neither). Nothing a client sends
can produce a 500: a span that breaks the mapper is rejected alone (``mapping.map_spans``, the
exporter's net too) and counted as dropped ``unmappable``, and any other surprise while decoding
is a 400 (the same bytes would fail the same way again), logged with its traceback.
Accepted means spooled: ``accept`` is all or nothing, so a 503 leaves nothing half-stored behind.
"""

from __future__ import annotations

import functools
import hmac
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from otel_arthur import otlp
from otel_arthur.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_SPANS_PER_REQUEST
from otel_arthur.destinations import OtlpExtraction
from otel_arthur.mapping import InferenceRecord, MappedSpans, map_span
from otel_arthur.pipeline import Accepted, Refusal
from otel_arthur.stats import COUNTER, Sample

__all__ = ["DEFAULT_RETRY_AFTER", "GRPC", "HTTP", "Decoded", "DecoderUnavailable", "Intake", "Receiver",
           "ReceiverCounters", "Reply", "decode_request"]

_logger = logging.getLogger(__name__)

HTTP, GRPC = "http", "grpc"  # the transports a request came by, for /metrics
DEFAULT_RETRY_AFTER = 5  # seconds a 503 asks the client to wait: delivery frees spool room in batches
_MESSAGE_LIMIT = 300  # characters of a reason quoted back to the client

# google.rpc.Code of each HTTP status, as OTLP/HTTP's error bodies carry them: INVALID_ARGUMENT,
# UNAUTHENTICATED, RESOURCE_EXHAUSTED, INVALID_ARGUMENT, UNAVAILABLE.
_RPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}
_REFUSALS = {
    Refusal.SPOOL_FULL: "the spool is full; retry once delivery to Arthur has made room",
    Refusal.SHUTTING_DOWN: "otel-arthur serve is shutting down; retry",
    Refusal.SPOOL_ERROR: "the spool cannot be written; retry",
}


class Intake(Protocol):
    """Where accepted records go: ``Pipeline`` (tests pass fakes)."""

    def accept(self, records: Sequence[InferenceRecord]) -> Refusal | Accepted: ...

    def count_received(self, spans: int, generations: int) -> None: ...

    def drop_unmappable(self, count: int, reason: str) -> None: ...


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class ReceiverCounters:
    """What the receiver saw, for ``/metrics``; thread-safe (requests are handled on worker threads).

    Span counts are of requests answered 200: received = spooled + ignored + rejected. Spans of a
    request answered 503 are counted as refused (the client sends them again). Connections closed
    without an answer are counted by reason (``connections.py``). Requests are counted by transport;
    HTTP status codes are OTLP/HTTP's (gRPC's own codes are counted by ``grpc_receiver.py``).
    """

    SPAN_OUTCOMES = ("received", "ignored", "rejected", "refused")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans = dict.fromkeys(self.SPAN_OUTCOMES, 0)
        self._responses: dict[int, int] = {}
        self._requests = dict.fromkeys((HTTP, GRPC), 0)
        self._closed_connections: dict[str, int] = {}

    def spans(self, **counts: int) -> None:
        with self._lock:
            for outcome, count in counts.items():
                self._spans[outcome] += count

    def response(self, status: int, transport: str = HTTP) -> None:
        with self._lock:
            self._requests[transport] += 1
            if transport == HTTP:
                self._responses[status] = self._responses.get(status, 0) + 1

    def connection_closed(self, reason: str) -> None:
        with self._lock:
            self._closed_connections[reason] = self._closed_connections.get(reason, 0) + 1

    def samples(self) -> Iterator[Sample]:
        with self._lock:
            spans, responses, closed = dict(self._spans), dict(self._responses), dict(self._closed_connections)
            requests = dict(self._requests)
        for outcome in self.SPAN_OUTCOMES:
            yield Sample(f"otel_arthur_receiver_spans_{outcome}_total", COUNTER, {}, spans[outcome])
        for transport, count in requests.items():
            yield Sample("otel_arthur_receiver_requests_total", COUNTER, {"transport": transport}, count)
        for status, count in sorted(responses.items()):
            yield Sample("otel_arthur_receiver_http_responses_total", COUNTER, {"code": str(status)}, count)
        for reason, count in sorted(closed.items()):
            yield Sample("otel_arthur_receiver_connections_closed_total", COUNTER, {"reason": reason}, count)


class DecoderUnavailable(RuntimeError):
    """A ``Decoder`` could not run (a decode process died, or is shutting down): answered 503, retried."""


@dataclass
class Decoded:
    """One request body, decoded and mapped for each destination: what is left to do is spooling."""

    spans: int = 0
    mapped: dict[str, MappedSpans] = field(default_factory=dict)  # by destination name


Decoder = Callable[[bytes, "str | None", str, int, int], Decoded]


def decode_request(body: bytes, encoding: str | None, media: str, max_body_bytes: int, max_spans: int,
                   extraction: OtlpExtraction = OtlpExtraction(), *, encoded: bool = False) -> Decoded:
    """Inflate, parse and map one body for each destination; ``otlp.RequestError`` when it is unusable as a whole.

    Pure and module-level, so ``DecodeProcesses`` can run it in another process; ``encoded``: the items as
    their spools store them (``OtlpExtraction.encoded``), what such a process hands back.
    """
    request = otlp.parse_request(otlp.decompress(body, encoding, max_body_bytes), media, max_spans)
    mapped = extraction(request)
    return Decoded(spans=otlp.count_spans(request), mapped=extraction.encoded(mapped) if encoded else mapped)


class Receiver:
    """Decides the answer to one ``POST /v1/traces``; safe to call from many threads at once."""

    def __init__(
        self,
        intake: Intake | Mapping[str, Intake],
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_spans_per_request: int = DEFAULT_MAX_SPANS_PER_REQUEST,
        auth_token: str | None = None,
        retry_after: int = DEFAULT_RETRY_AFTER,
        extraction: OtlpExtraction | None = None,
        mapper: Callable[[Any], Any] = map_span,
        decoder: Decoder | None = None,
    ) -> None:
        """``intake``: one per destination, by name (``{"v3": pipeline, "engine": pipeline}``); a single one is v3's.

        ``extraction`` says what each destination takes from a request (by default v3's records,
        mapped with ``mapper``); ``decoder`` runs ``decode_request`` elsewhere (``DecodeProcesses.decode``).
        """
        self._intakes: Mapping[str, Intake] = intake if isinstance(intake, Mapping) else {"v3": intake}
        extraction = extraction or OtlpExtraction(v3_mapper=mapper)
        if set(extraction.names) != set(self._intakes):
            raise ValueError(f"destinations {extraction.names} mapped, {tuple(self._intakes)} taking them")
        self.max_body_bytes = max_body_bytes
        self.max_spans_per_request = max_spans_per_request
        self._expected_auth = f"Bearer {auth_token}".encode() if auth_token else None
        self._retry_after = retry_after
        self._decode: Decoder = decoder or functools.partial(decode_request, extraction=extraction)
        self._accepting = True
        self.counters = ReceiverCounters()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        """From now on every request is answered 503 (shutting down), so the client keeps its spans."""
        self._accepting = False

    def answer_from_headers(self, headers: Mapping[str, str]) -> Reply | None:
        """The answer when the headers alone decide it (401, 415, 503 shutting down, 413 by the declared
        length), counted; ``None`` when it takes the body. Asked before a byte of the body is read."""
        reply = self._check_headers(_lowered(headers))[1]
        if reply is not None:
            self.counters.response(reply.status)
        return reply

    def handle(self, body: bytes, headers: Mapping[str, str], *, transport: str = HTTP) -> Reply:
        """``body`` as received (compressed or not); ``headers`` with any key case. The one entry point of
        both transports: OTLP/gRPC passes its message and metadata as an OTLP/HTTP protobuf request."""
        reply = self._handle(body, _lowered(headers))
        self.counters.response(reply.status, transport)
        return reply

    def _check_headers(self, headers: Mapping[str, str]) -> tuple[str, Reply | None]:
        """The media type to answer in, and the answer when the headers alone decide it."""
        try:
            media = otlp.media_type(headers.get("content-type"))
        except otlp.RequestError as exc:
            media = otlp.PROTOBUF
            unsupported: otlp.RequestError | None = exc
        else:
            unsupported = None
        if not self._authorized(headers.get("authorization")):
            return media, self._error(media, 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if unsupported is not None:
            return media, self._error(media, unsupported.status, str(unsupported))
        if not self._accepting:
            return media, self._refused(media, Refusal.SHUTTING_DOWN)
        if _declared_length(headers) > self.max_body_bytes:
            return media, self._too_large(media)
        return media, None

    def _handle(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        media, refused = self._check_headers(headers)
        if refused is not None:
            return refused
        if len(body) > self.max_body_bytes:
            return self._too_large(media)
        try:
            decoded = self._decode(body, headers.get("content-encoding"), media, self.max_body_bytes,
                                   self.max_spans_per_request)
        except DecoderUnavailable as exc:  # ours, not the client's: it may retry
            _logger.error("Cannot decode a request: %s; answering 503", exc)
            return self._unavailable(media, f"otel-arthur serve cannot decode right now ({exc}); retry")
        except otlp.RequestError as exc:
            _logger.debug("Answering %d: %s", exc.status, exc)
            return self._error(media, exc.status, str(exc))
        except Exception as exc:  # a decoder bug on odd input; the same bytes would fail again, so not a 5xx
            _logger.exception("Cannot process an OTLP request; answering 400")
            return self._error(media, 400, f"cannot process the request: {type(exc).__name__}")
        return self._deliver(media, decoded)

    def _authorized(self, authorization: str | None) -> bool:
        if self._expected_auth is None:
            return True
        return hmac.compare_digest((authorization or "").encode(), self._expected_auth)

    def _deliver(self, media: str, decoded: Decoded) -> Reply:
        """Spool each destination's share; a refusal of any is a 503 (what others took stays: at least once)."""
        accepted: list[tuple[Intake, MappedSpans, Accepted]] = []
        for name, intake in self._intakes.items():
            mapped = decoded.mapped.get(name) or MappedSpans()
            outcome: Refusal | Accepted
            try:
                outcome = intake.accept(mapped.records) if mapped.records else Accepted()
            except Exception:  # our side, not the client's: worth a retry, never a drop
                _logger.exception("Cannot spool %d records for %s; answering 503", len(mapped.records), name)
                outcome = Refusal.SPOOL_ERROR
            if isinstance(outcome, Refusal):
                self.counters.spans(refused=decoded.spans)
                return self._refused(media, outcome)
            accepted.append((intake, mapped, outcome))
        # A span counts once however many destinations took it: by the destination that took the most.
        taken = max((len(m.records) + m.unmappable for _, m, _ in accepted), default=0)
        rejected = max((m.unmappable + o.oversized + o.unmappable for _, m, o in accepted), default=0)
        reason = next((m.reason for _, m, _ in accepted if m.reason), "") or next(
            ("a record larger than the whole spool may hold (--spool-max-bytes)" for _, _, o in accepted
             if o.oversized), "a record could not be spooled")
        self.counters.spans(received=decoded.spans, ignored=decoded.spans - taken, rejected=rejected)
        for intake, mapped, _ in accepted:
            intake.count_received(decoded.spans, len(mapped.records))
            if mapped.unmappable:  # counted only once answered 200: after a 503 the client sends them again
                intake.drop_unmappable(mapped.unmappable, mapped.reason)
        message = f"{rejected} spans not recorded; first: {reason}"[:_MESSAGE_LIMIT] if rejected else ""
        return Reply(200, {"Content-Type": media}, otlp.encode_response(media, rejected, message))

    def _too_large(self, media: str) -> Reply:
        return self._error(media, 413, f"request body over the {self.max_body_bytes}-byte limit")

    def _refused(self, media: str, refusal: Refusal) -> Reply:
        return self._unavailable(media, _REFUSALS[refusal])

    def _unavailable(self, media: str, message: str) -> Reply:
        return self._error(media, 503, message, {"Retry-After": str(self._retry_after)})

    @staticmethod
    def _error(media: str, status: int, message: str, extra: Mapping[str, str] | None = None) -> Reply:
        body = otlp.encode_status(media, _RPC_CODES[status], message[:_MESSAGE_LIMIT])
        return Reply(status, {"Content-Type": media, **(extra or {})}, body)


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _declared_length(headers: Mapping[str, str]) -> int:
    try:
        return int(headers.get("content-length") or 0)
    except ValueError:
        return 0
