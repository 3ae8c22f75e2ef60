"""Where records go. Each destination is one module that says what it stores, how it sends a batch
and how it reads the answers; nothing generic (spool, retries, pipeline, front doors) knows more
than this contract::

    spans ─▶ destination.items (pure mapping + privacy) ─▶ Spool (destination.codec) ─▶ worker
          ─▶ RetrySender ─▶ destination.sender() ─▶ that destination's HTTP client

- ``v3``: Arthur's v3 inference API, one inference record per generation span.
- ``engine``: Arthur Engine's trace ingest, the AI spans in OpenInference form.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.sdk.trace import ReadableSpan

from otel_arthur.config import ArthurSettings, EngineSettings
from otel_arthur.dedupe import CallMemory, call_of
from otel_arthur.delivery import Sender, SenderObserver
from otel_arthur.mapping import MappedSpans, map_span
from otel_arthur.spool import RECORD_CODEC, Codec, Encoded, unspoolable

ENGINE_KEY_PREFIX = "engine "  # Arthur Engine's spool keys start with it (``engine.engine_key``); v3's with a URL


class DeliverySettings(Protocol):
    """What the pipeline reads of a destination's settings."""

    spool_dir: str
    spool_max_bytes: int
    batch_max_records: int
    delivery_linger: float


class Destination(Protocol):
    name: str
    """``v3`` or ``engine``: the ``destination`` label of logs and metrics."""
    title: str
    """How log lines name the service: ``Arthur``, ``Arthur Engine``."""
    key: str
    """The spool rows' ``destination`` column: where (URL without user info) and what (model, task)."""
    codec: Codec
    settings: DeliverySettings
    calls: CallMemory | None
    """Leaves out the second span of one LLM call (``otel_arthur.dedupe``); None keeps every item."""

    def items(self, spans: Sequence[ReadableSpan]) -> MappedSpans:
        """What this destination stores for these spans (``mapping.map_spans``: one bad span costs only itself)."""
        ...

    def from_otlp(self, request: Any, converted: Any = None) -> MappedSpans:
        """The same for the spans of a parsed ``ExportTraceServiceRequest`` (``serve``). ``converted``
        (``otlp.Converted``): the attributes one destination's pass converts, filled by the Engine, read by v3."""
        ...

    def prepare(self, item: Any) -> Any:
        """An item as it is spooled, whichever front door made it: privacy applied where ``items`` did not."""
        ...

    def sender(self, observer: SenderObserver) -> Sender:
        """The transport end of the delivery chain; tells ``observer`` each request's time and what it drops."""
        ...


@dataclass(frozen=True)
class OtlpExtraction:
    """What ``serve`` takes out of each request for each destination, as a picklable value.

    Decode processes get it with each body and build their destinations from it once (Engine
    settings are a frozen, hashable dataclass). ``v3_mapper``: the v3 records' mapper (``map_span``;
    tests replace it), None when v3 is off.
    """

    v3_mapper: Callable[[ReadableSpan], Any] | None = map_span
    engine: EngineSettings | None = None
    v3: ArthurSettings | None = None
    """v3's settings, for ``encoded`` (the privacy its records are spooled with)."""

    @classmethod
    def of(cls, destinations: Iterable[Destination]) -> OtlpExtraction:
        """What these destinations take (at most one of each kind)."""
        names = {d.name: d for d in destinations}
        engine, v3 = names.get("engine"), names.get("v3")
        return cls(v3_mapper=map_span if v3 is not None else None,
                   engine=engine.settings if engine is not None else None,  # type: ignore[arg-type]
                   v3=v3.settings if v3 is not None else None)  # type: ignore[arg-type]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("v3", self.v3_mapper is not None), ("engine", self.engine is not None))
                     if on)

    def __call__(self, request: Any) -> dict[str, MappedSpans]:
        # Both on: the Engine converts every attribute of its spans, and v3 maps its generations from those values.
        converted: list[Any] | None = [] if self.v3_mapper is not None and self.engine is not None else None
        mapped = {}
        if self.engine is not None:
            mapped["engine"] = self._destinations["engine"].from_otlp(request, converted)
        if self.v3_mapper is not None:
            from otel_arthur.destinations.v3 import records_from_otlp

            mapped["v3"] = records_from_otlp(request, self.v3_mapper, converted)
        return mapped


    @functools.cached_property
    def _destinations(self) -> dict[str, Destination]:
        """Made at the first use and kept as long as this value (a decode process keeps its own for its life)."""
        return {name: destination_for(settings) for name, settings in (("v3", self.v3), ("engine", self.engine))
                if settings is not None}

    def encoded(self, mapped: dict[str, MappedSpans]) -> dict[str, MappedSpans]:
        """``mapped`` with each item as its destination's spool stores it (``spool.Encoded``: privacy applied,
        encoded, the call ``dedupe`` compares worked out first), an item that cannot be counted as unmappable.

        What a decode process hands back: a tenth of the records' pickling, and nothing left for the serving
        process but to store them (it did the privacy and the encoding itself, ~8 µs per record).
        """
        for name, batch in mapped.items():
            destination = self._destinations.get(name)
            if destination is None:
                raise ValueError(f"{name}'s settings are needed to spool its records")
            items, batch.records = batch.records, []
            prepare, encode, identity = destination.prepare, destination.codec.encode, destination.codec.identity
            for item in items:
                try:
                    call = call_of(item) if destination.calls is not None else None
                    batch.records.append(Encoded(identity(item), encode(prepare(item)), call))
                except Exception as exc:  # as the serving process would: the record alone is left out
                    batch.failed(unspoolable(identity(item), exc))
        return mapped


def destination_for(settings: ArthurSettings | EngineSettings, redact: Callable[[str], str] | None = None) -> Destination:
    """The destination these settings configure."""
    if isinstance(settings, EngineSettings):
        from otel_arthur.destinations.engine import (
            EngineDestination,  # the protobuf stack, when used
        )

        return EngineDestination(settings, redact)
    from otel_arthur.destinations.v3 import V3Destination

    return V3Destination(settings, redact)


def destination_name(key: str) -> str:
    """``v3`` or ``engine``: which destination the spool rows of ``key`` (a ``Destination.key``) are for."""
    return "engine" if key.startswith(ENGINE_KEY_PREFIX) else "v3"


def codec_for(key: str) -> Codec:
    """How the spool rows of ``key`` are stored, whichever process wrote them."""
    if destination_name(key) == "engine":
        from otel_arthur.destinations.engine import (
            EngineSpanCodec,  # the protobuf stack, only when needed
        )

        return EngineSpanCodec()
    return RECORD_CODEC
