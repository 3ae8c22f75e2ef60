"""``ArthurSpanExporter``: an OpenTelemetry ``SpanExporter`` that sends LLM generations to Arthur.

    provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))

Shaped like the SDK's own OTLP exporter: constructor arguments fall back to ``ARTHUR_*``
environment variables (``otel_arthur.config``), ``export()`` never raises and returns a
``SpanExportResult``, ``shutdown()`` is idempotent. It runs on the span processor's worker thread,
so the application's threads never wait for Arthur.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_arthur.client import ArthurError, PermanentError
from otel_arthur.config import ArthurSettings, ConfigurationError
from otel_arthur.delivery import ArthurSender
from otel_arthur.mapping import map_span

_logger = logging.getLogger(__name__)


class ArthurSpanExporter(SpanExporter):
    """Picks the generation spans out of each batch, maps them to inference records, delivers them."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        login: str | None = None,
        password: str | None = None,
        organization_id: str | None = None,
        model_id: str | None = None,
        allow_insecure: bool | None = None,
        *,
        verify_ssl: bool | None = None,
        timeout: float | None = None,
        attribute_map: Mapping[str, str] | None = None,
        batch_max_records: int | None = None,
        batch_max_bytes: int | None = None,
    ) -> None:
        self._shutdown = False
        self._lock = threading.Lock()
        self._reachable: bool | None = None  # last known state, so each change is logged once
        try:
            self._settings: ArthurSettings | None = ArthurSettings.resolve(
                url=url, api_key=api_key, login=login, password=password, organization_id=organization_id,
                model_id=model_id, allow_insecure=allow_insecure, verify_ssl=verify_ssl, timeout=timeout,
                attribute_map=attribute_map, batch_max_records=batch_max_records, batch_max_bytes=batch_max_bytes,
            )
        except ConfigurationError as exc:
            # Zero-code set-up constructs us with no arguments: a bad environment must not stop the app.
            _logger.error("Arthur exporter disabled: %s", exc)
            self._settings = None
        self._sender = ArthurSender(self._settings) if self._settings is not None else None

    def __repr__(self) -> str:
        return f"ArthurSpanExporter({self._settings!r})"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _logger.warning("Exporter already shut down, ignoring batch")
            return SpanExportResult.FAILURE
        try:
            records = [record for record in map(map_span, spans) if record is not None]
            if not records:
                return SpanExportResult.SUCCESS
            if self._sender is None:
                return SpanExportResult.FAILURE
            with self._lock:
                results = self._sender.send(records)
        except ArthurError as exc:
            self._set_reachable(False, exc)
            return SpanExportResult.FAILURE
        except Exception:  # never into the application
            _logger.exception("Unexpected error exporting to Arthur")
            return SpanExportResult.FAILURE
        self._set_reachable(True)
        rejected = [r for r in results if not r.ok]
        if rejected:
            _logger.warning("Arthur rejected %d of %d records: %s", len(rejected), len(results), rejected[0].message)
        return SpanExportResult.SUCCESS

    def _set_reachable(self, reachable: bool, error: ArthurError | None = None) -> None:
        """Log once per change of state (down / back up), never once per failed batch."""
        if reachable == self._reachable:
            return
        if not reachable:
            level = logging.ERROR if isinstance(error, PermanentError) else logging.WARNING
            _logger.log(level, "Arthur refused or unreachable, records not delivered: %s", error)
        elif self._reachable is False:
            _logger.info("Arthur is reachable again")
        self._reachable = reachable

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # export() is synchronous: nothing is held between calls

    def shutdown(self) -> None:
        if self._shutdown:
            _logger.warning("Exporter already shut down, ignoring call")
            return
        self._shutdown = True
        if self._sender is not None:
            self._sender.close()
