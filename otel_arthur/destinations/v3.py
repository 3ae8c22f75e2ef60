"""Arthur's v3 inference API: one inference record per generation span, bound to a GENERATIVE_TEXT model.

``ArthurSender`` binds lazily (the first send fetches the model, on whatever thread sends, never
the application's), then POSTs the records as JSON rows in batches; Arthur answers with a strict 207.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from otel_arthur import forking
from otel_arthur.binding import Binding, bind
from otel_arthur.clients.http import RecordResult
from otel_arthur.clients.v3 import ArthurClient, encode_row
from otel_arthur.config import ArthurSettings, display_url
from otel_arthur.dedupe import CallMemory
from otel_arthur.delivery import AnswerWait, Sender, SenderObserver, send_in_batches
from otel_arthur.mapping import InferenceRecord, MappedSpans, map_span, map_spans
from otel_arthur.privacy import RecordFilter
from otel_arthur.spool import RECORD_CODEC, StoredRecord


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
        # One record per call: lives where records are spooled (serve's main process, not its decoders).
        self.calls = CallMemory()

    def items(self, spans: Sequence[ReadableSpan]) -> MappedSpans:
        return map_spans(spans, map_span)

    def from_otlp(self, request: Any, converted: Any = None) -> MappedSpans:
        return records_from_otlp(request, converted=converted)

    def prepare(self, item: InferenceRecord) -> InferenceRecord:
        return self._filter(item)  # content switches, redaction, size caps

    def sender(self, observer: SenderObserver) -> Sender:
        return ArthurSender(self.settings, observe_request=observer.observe_request)


def records_from_otlp(request: Any, mapper: Callable[[Any], Any] = map_span, converted: Any = None) -> MappedSpans:
    """The records of a parsed ``ExportTraceServiceRequest``'s generation spans, span by span; ``converted``:
    attributes the Engine's pass converted already (``otlp.Converted``)."""
    from otel_arthur import otlp  # serve's decoding (the server extra)

    return map_spans(otlp.generation_spans(request, converted), mapper)


class ArthurSender:
    """Sends records to the configured model through the native client."""

    def __init__(
        self,
        settings: ArthurSettings,
        client: ArthurClient | None = None,
        *,
        observe_request: Callable[[float], None] | None = None,
    ) -> None:
        """``observe_request(seconds)`` is told how long each inferences POST took, answered or not."""
        self._settings = settings
        self._client = client or ArthurClient(settings)
        self._observe_request = observe_request
        self._binding: Binding | None = None
        self._bind_lock = threading.Lock()
        self.wait = AnswerWait(settings.timeout)
        forking.register(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._bind_lock = threading.Lock()  # the parent's worker may have held it, fetching the model, at the fork

    @property
    def binding(self) -> Binding:
        """Fetch the model and bind to it, once; raises the client's errors until it succeeds."""
        if self._binding is None:
            with self._bind_lock:
                if self._binding is None:
                    model = self._client.get_model(self._settings.model_id)
                    self._binding = bind(model, self._settings.attribute_map)
        return self._binding

    def prepare(self) -> None:
        """Fetch the model now rather than at the first send (the pipeline's worker does, at start-up)."""
        _ = self.binding  # the property fetches and binds, once

    def set_deadline(self, deadline: float) -> None:
        """No request lasts past ``deadline`` (``time.monotonic()``): shutdown's."""
        self._client.set_deadline(deadline)

    def send(self, records: Sequence[InferenceRecord | StoredRecord]) -> list[RecordResult]:
        binding = self.binding
        bodies = [_row_json(binding, record) for record in records]  # each row's JSON, for sizing and joining

        def post(batch: range) -> list[RecordResult]:
            rows = bodies[batch.start:batch.stop]
            # The JSON array in one copy of the rows: the brackets go on the first and last row, not the whole.
            rows[0] = b"[" + rows[0]
            rows[-1] += b"]"
            body = b",".join(rows)
            return self._client.send_inferences(binding.model_id, rows, body,
                                                read_timeout=self.wait.read_timeout(len(body)))

        return send_in_batches([len(body) for body in bodies], self._settings.batch_max_records,
                               self._settings.batch_max_bytes, post, self.wait, self._observe_request)

    def close(self) -> None:
        self._client.close()


def _row_json(binding: Binding, record: InferenceRecord | StoredRecord) -> bytes:
    """A record's row as JSON: the spooled JSON itself when it is the row already and the model takes it as it is."""
    if binding.as_is:
        row = getattr(record, "row", None)  # a StoredRecord's
        if row is not None:
            return row.encode()
    return encode_row(binding.to_row(record))
