"""Where records go. Each destination is one module that says what it stores, how it sends a batch
and how it reads the answers; nothing generic (spool, retries, pipeline, front doors) knows more
than this contract::

    spans ─▶ destination.items (pure mapping + privacy) ─▶ Spool (destination.codec) ─▶ worker
          ─▶ RetrySender ─▶ destination.sender() ─▶ that destination's HTTP client

- ``v3``: Arthur's v3 inference API, one inference record per generation span.
- ``engine``: Arthur Engine's trace ingest, the AI spans in OpenInference form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from opentelemetry.sdk.trace import ReadableSpan

from otel_arthur.delivery import Sender, SenderObserver
from otel_arthur.spool import RECORD_CODEC, Codec

ENGINE_KEY_PREFIX = "engine "  # Arthur Engine's spool keys start with it (``engine.engine_key``); v3's with a URL


class DeliverySettings(Protocol):
    """What the pipeline reads of a destination's settings."""

    spool_dir: str
    spool_max_bytes: int
    batch_max_records: int


class Destination(Protocol):
    name: str
    """``v3`` or ``engine``: the ``destination`` label of logs and metrics."""
    title: str
    """How log lines name the service: ``Arthur``, ``Arthur Engine``."""
    key: str
    """The spool rows' ``destination`` column: where (URL without user info) and what (model, task)."""
    codec: Codec
    settings: DeliverySettings

    def items(self, spans: Sequence[ReadableSpan]) -> list[Any]:
        """What this destination stores for these spans, privacy applied; never raises for one bad span."""
        ...

    def prepared(self, items: Sequence[Any]) -> list[Any]:
        """Items as they are spooled, whichever front door made them (privacy filters not yet applied)."""
        ...

    def sender(self, observer: SenderObserver) -> Sender:
        """The transport end of the delivery chain; tells ``observer`` each request's time and what it drops."""
        ...


def destination_name(key: str) -> str:
    """``v3`` or ``engine``: which destination the spool rows of ``key`` (a ``Destination.key``) are for."""
    return "engine" if key.startswith(ENGINE_KEY_PREFIX) else "v3"


def codec_for(key: str) -> Codec:
    """How the spool rows of ``key`` are stored, whichever process wrote them."""
    if destination_name(key) == "engine":
        from otel_arthur.destinations.engine import EngineSpanCodec  # the protobuf stack, only when needed

        return EngineSpanCodec()
    return RECORD_CODEC
