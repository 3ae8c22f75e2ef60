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
from otel_arthur.mapping import MappedSpans
from otel_arthur.spool import Codec


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

    def items(self, spans: Sequence[ReadableSpan]) -> MappedSpans:
        """What this destination stores for these spans (``mapping.map_spans``: one bad span costs only itself)."""
        ...

    def prepare(self, item: Any) -> Any:
        """An item as it is spooled, whichever front door made it: privacy applied where ``items`` did not."""
        ...

    def sender(self, observer: SenderObserver) -> Sender:
        """The transport end of the delivery chain; tells ``observer`` each request's time and what it drops."""
        ...
