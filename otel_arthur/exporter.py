"""``ArthurSpanExporter``: an OpenTelemetry ``SpanExporter`` that sends LLM generations to Arthur.

    provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))

Shaped like the SDK's own OTLP exporter: constructor arguments fall back to ``ARTHUR_*``
environment variables (``otel_arthur.config``), ``export()`` never raises and returns a
``SpanExportResult``, ``shutdown()`` is idempotent. ``export()`` maps the generation spans to
records and appends them to the on-disk spool, its only I/O; a background thread of the
``Pipeline`` delivers them, so neither the application nor the span processor waits for Arthur,
and nothing is lost when Arthur is down or the process dies.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_arthur.config import ArthurSettings, ConfigurationError
from otel_arthur.mapping import map_spans
from otel_arthur.pipeline import DEFAULT_SHUTDOWN_TIMEOUT, Pipeline
from otel_arthur.retry import RetryPolicy
from otel_arthur.stats import PipelineStats

_logger = logging.getLogger(__name__)


class ArthurSpanExporter(SpanExporter):
    """Picks the generation spans out of each batch, maps them to inference records, spools them for delivery."""

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
        spool_dir: str | None = None,
        spool_max_bytes: int | None = None,
        max_text_bytes: int | None = None,
        retry_policy: RetryPolicy | None = None,
        send_content: bool | None = None,
        redact: Callable[[str], str] | None = None,
        redact_builtins: str | Sequence[str] | None = None,
        redact_patterns: str | Mapping[str, str] | None = None,
    ) -> None:
        """Arguments fall back to ``ARTHUR_*`` (``otel_arthur.config``).

        Privacy (``otel_arthur.privacy``): ``send_content=False`` withholds prompts and completions;
        ``redact_builtins`` (``"builtin"`` or names such as ``"email,card"``) and ``redact_patterns``
        (``{"name": regex}`` or ``"name=regex;…"``) replace matches by ``[REDACTED:name]``; ``redact``
        is your own ``text -> text`` hook, run on every text field after them. All of it happens
        before a record is spooled.
        """
        self._shutdown = False
        self._settings: ArthurSettings | None = None
        self._pipeline: Pipeline | None = None
        try:
            self._settings = ArthurSettings.resolve(
                url=url, api_key=api_key, login=login, password=password, organization_id=organization_id,
                model_id=model_id, allow_insecure=allow_insecure, verify_ssl=verify_ssl, timeout=timeout,
                attribute_map=attribute_map, batch_max_records=batch_max_records, batch_max_bytes=batch_max_bytes,
                spool_dir=spool_dir, spool_max_bytes=spool_max_bytes, max_text_bytes=max_text_bytes,
                send_content=send_content, redact_builtins=redact_builtins, redact_patterns=redact_patterns,
            )
            self._pipeline = Pipeline(self._settings, retry_policy=retry_policy, redact=redact)
        except ConfigurationError as exc:
            # Zero-code set-up constructs us with no arguments: a bad environment must not stop the app.
            _logger.error("Arthur exporter disabled: %s", exc)
        except (OSError, sqlite3.Error) as exc:
            assert self._settings is not None
            _logger.error("Arthur exporter disabled: cannot use the spool in %s (%s)", self._settings.spool_dir, exc)

    def __repr__(self) -> str:
        return f"ArthurSpanExporter({self._settings!r})"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _logger.warning("Exporter already shut down, ignoring batch")
            return SpanExportResult.FAILURE
        try:
            mapped = map_spans(spans)  # a span that cannot be mapped costs only itself
            if self._pipeline is None:
                return SpanExportResult.FAILURE if mapped.records else SpanExportResult.SUCCESS
            self._pipeline.count_received(len(spans), len(mapped.records))
            if mapped.unmappable:
                self._pipeline.drop_unmappable(mapped.unmappable, mapped.reason)
            spooled = self._pipeline.submit(mapped.records)
        except Exception:  # never into the application
            _logger.exception("Unexpected error exporting to Arthur")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if spooled else SpanExportResult.FAILURE

    def stats(self) -> PipelineStats:
        """Counters and spool gauges (``PipelineStats.samples()`` for metrics); all zero when disabled."""
        return self._pipeline.stats() if self._pipeline is not None else PipelineStats()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until everything spooled so far is delivered; False on timeout or when Arthur refused some of it."""
        if self._pipeline is None:
            return True
        try:
            return self._pipeline.force_flush(timeout_millis / 1000)
        except Exception:  # the application's thread calls this: never into the application
            _logger.exception("Unexpected error flushing to Arthur")
            return False

    def shutdown(self, timeout_millis: float | None = None) -> None:
        """Deliver for up to the timeout (the span processor passes what is left of its own); the rest stays on disk."""
        if self._shutdown:
            _logger.warning("Exporter already shut down, ignoring call")
            return
        self._shutdown = True
        if self._pipeline is None:
            return
        try:
            self._pipeline.shutdown(DEFAULT_SHUTDOWN_TIMEOUT if timeout_millis is None else timeout_millis / 1000)
        except Exception:  # at the application's exit: never into the application
            _logger.exception("Unexpected error shutting Arthur delivery down")
