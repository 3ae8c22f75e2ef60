"""Arthur's v3 inference API: one inference record per generation span, bound to a GENERATIVE_TEXT model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from otel_arthur.config import ArthurSettings, display_url
from otel_arthur.delivery import ArthurSender, Sender, SenderObserver
from otel_arthur.mapping import InferenceRecord, MappedSpans, map_span, map_spans
from otel_arthur.privacy import RecordFilter
from otel_arthur.spool import RECORD_CODEC


def destination(settings: ArthurSettings) -> str:
    """Which Arthur model records are for: URL (without user info) and model id. Spool rows carry it."""
    return f"{display_url(settings.url)} {settings.model_id}"


class V3Destination:
    name = "v3"
    title = "Arthur"
    codec = RECORD_CODEC

    def __init__(self, settings: ArthurSettings, redact: Callable[[str], str] | None = None) -> None:
        self.settings = settings
        self.key = destination(settings)
        self._filter = RecordFilter.from_settings(settings, redact)

    def items(self, spans: Sequence[ReadableSpan]) -> MappedSpans:
        return map_spans(spans, map_span)

    def from_otlp(self, request: Any) -> MappedSpans:
        return records_from_otlp(request)

    def prepare(self, item: InferenceRecord) -> InferenceRecord:
        return self._filter(item)  # content switches, redaction, size caps

    def sender(self, observer: SenderObserver) -> Sender:
        return ArthurSender(self.settings, observe_request=observer.observe_request)


def records_from_otlp(request: Any, mapper: Callable[[ReadableSpan], Any] = map_span) -> MappedSpans:
    """The records of a parsed ``ExportTraceServiceRequest``'s generation spans, span by span."""
    from otel_arthur import otlp  # serve's decoding (the server extra)

    return map_spans(otlp.generation_spans(request), mapper)
