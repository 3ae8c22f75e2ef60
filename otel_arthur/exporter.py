"""``ArthurSpanExporter``: an OpenTelemetry ``SpanExporter`` that sends LLM calls to Arthur.

    provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))

Shaped like the SDK's own OTLP exporter: constructor arguments fall back to ``ARTHUR_*``
environment variables (``otel_arthur.config``), ``export()`` never raises and returns a
``SpanExportResult``, ``shutdown()`` is idempotent. Two destinations, each on when its settings
are present: Arthur's v3 inference API (``url``/``ARTHUR_ENDPOINT_URL``: one record per
generation span) and Arthur Engine (``engine_url``/``ARTHUR_ENGINE_URL``: the AI spans in
OpenInference form). ``export()`` maps the spans for each destination and appends them to the
on-disk spool, its only I/O; one delivery process (or thread: ``delivery``) per destination (its
``Pipeline``) delivers them, so neither the application nor the span processor waits, an outage of one destination
never holds the other back, and nothing is lost when either is down or the process dies.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_arthur.config import (
    ARTHUR_ENGINE_URL,
    ArthurSettings,
    ConfigurationError,
    EngineSettings,
    engine_configured,
    resolve_delivery,
    v3_configured,
)
from otel_arthur.destinations import Destination, destination_for
from otel_arthur.mapping import MappedSpans, classify, span_attributes
from otel_arthur.pacing import Pacer
from otel_arthur.pipeline import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    Pipeline,
    shutdown_side_by_side,
)
from otel_arthur.retry import RetryPolicy
from otel_arthur.stats import PipelineStats

_logger = logging.getLogger(__name__)

PACE_SPANS = 8  # spans mapped between looks at the pacer: ~0.1-0.25 ms of generation spans, ~3 µs of ignored ones


class ArthurSpanExporter(SpanExporter):
    """Maps each batch for every configured destination and spools it for delivery."""

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
        engine_url: str | None = None,
        engine_api_key: str | None = None,
        task_id: str | None = None,
        engine_spans: str | None = None,
        delivery: str | None = None,
    ) -> None:
        """Arguments fall back to ``ARTHUR_*`` (``otel_arthur.config``).

        v3 (``url``, credentials, ``model_id``…) is on when ``url`` or ``ARTHUR_ENDPOINT_URL`` is
        set; Arthur Engine (``engine_url``, ``engine_api_key``, ``task_id``, ``engine_spans``) when
        ``engine_url`` or ``ARTHUR_ENGINE_URL`` is (or ``ARTHUR_BASE_URL`` without a v3 URL).
        Privacy (``otel_arthur.privacy``), for both: ``send_content=False`` withholds prompts and
        completions; ``redact_builtins`` (``"builtin"`` or names such as ``"email,card"``) and
        ``redact_patterns`` (``{"name": regex}`` or ``"name=regex;…"``) replace matches by
        ``[REDACTED:name]``; ``redact`` is your own ``text -> text`` hook, run after them. All of
        it happens before anything is spooled.
        ``delivery`` (``ARTHUR_DELIVERY``): ``"process"`` (the default) delivers from a child process over the same
        spool, out of the application's interpreter; ``"thread"`` from a thread in it (``docs/delivery.md``).
        """
        self._shutdown = False
        self._settings: ArthurSettings | None = None
        self._engine_settings: EngineSettings | None = None
        self._pipelines: list[Pipeline] = []
        self._disabled = False  # a destination asked for cannot run: its generations are failed exports
        self._pacer = Pacer()  # export() runs on the span processor's thread, in the application's interpreter
        self._delivery = resolve_delivery(delivery)
        privacy = {"send_content": send_content, "redact_builtins": redact_builtins,
                   "redact_patterns": redact_patterns, "max_text_bytes": max_text_bytes,
                   "spool_dir": spool_dir, "spool_max_bytes": spool_max_bytes}
        wants_v3, wants_engine = v3_configured(url), engine_configured(engine_url, v3_url=url)
        if wants_v3 or not wants_engine:  # with neither, the v3 error names what is missing, as it always has
            try:
                self._settings = ArthurSettings.resolve(
                    url=url, api_key=api_key, login=login, password=password, organization_id=organization_id,
                    model_id=model_id, allow_insecure=allow_insecure, verify_ssl=verify_ssl, timeout=timeout,
                    attribute_map=attribute_map, batch_max_records=batch_max_records,
                    batch_max_bytes=batch_max_bytes, **privacy)
            except ConfigurationError as exc:
                # Zero-code set-up constructs us with no arguments: a bad environment must not stop the app.
                also = "" if wants_engine else f" (for Arthur Engine: pass engine_url= or set {ARTHUR_ENGINE_URL})"
                _logger.error("Arthur exporter disabled: %s%s", exc, also)
                self._disabled = True
            else:
                self._start(destination_for(self._settings, redact), retry_policy)
        if wants_engine:
            try:
                self._engine_settings = EngineSettings.resolve(
                    engine_url=engine_url, engine_api_key=engine_api_key, task_id=task_id,
                    engine_spans=engine_spans, v3_url=url, allow_insecure=allow_insecure, verify_ssl=verify_ssl,
                    timeout=timeout, **privacy)
            except ConfigurationError as exc:
                _logger.error("Arthur Engine export disabled: %s", exc)
                self._disabled = True
            else:
                try:
                    destination = destination_for(self._engine_settings, redact)  # the protobuf stack, when used
                except ImportError as exc:
                    _logger.error("Arthur Engine export disabled: it needs the engine extra, pip install"
                                  " 'otel-arthur[engine]' (%s)", exc)
                    self._disabled = True
                else:
                    self._start(destination, retry_policy)

    def _start(self, destination: Destination, retry_policy: RetryPolicy | None) -> None:
        try:
            self._pipelines.append(Pipeline(to=destination, retry_policy=retry_policy, pacer=Pacer(),
                                            delivery=self._delivery))
        except (OSError, sqlite3.Error) as exc:
            _logger.error("%s export disabled: cannot use the spool in %s (%s)", destination.title,
                          destination.settings.spool_dir, exc)
            self._disabled = True

    def __repr__(self) -> str:
        shown = [repr(s) for s in (self._settings, self._engine_settings) if s is not None]
        return f"ArthurSpanExporter({', '.join(shown)})"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _logger.warning("Exporter already shut down, ignoring batch")
            return SpanExportResult.FAILURE
        # A generation meant for a destination that cannot run is not exported: say so.
        spooled = not (self._disabled and any(classify(span_attributes(span)) for span in spans))
        self._pacer.begin()
        for pipeline in self._pipelines:
            try:
                mapped = self._mapped(pipeline.destination, spans)
                pipeline.count_received(len(spans), len(mapped.records))
                if mapped.unmappable:
                    pipeline.drop_unmappable(mapped.unmappable, mapped.reason)
                spooled = pipeline.submit(mapped.records, self._pacer) and spooled
            except Exception:  # never into the application
                _logger.exception("Unexpected error exporting to %s", pipeline.destination.title)
                spooled = False
        return SpanExportResult.SUCCESS if spooled else SpanExportResult.FAILURE

    def _mapped(self, destination: Destination, spans: Sequence[ReadableSpan]) -> MappedSpans:
        """The spans mapped ``PACE_SPANS`` at a time, pacing between (a span that cannot be mapped costs only itself)."""
        if len(spans) <= PACE_SPANS:
            return destination.items(spans)
        mapped = MappedSpans()
        for start in range(0, len(spans), PACE_SPANS):
            mapped.extend(destination.items(spans[start:start + PACE_SPANS]))
            self._pacer.pause_if_due()
        return mapped

    def stats(self, destination: str | None = None) -> PipelineStats:
        """Counters and spool gauges (``PipelineStats.samples()`` for metrics); all zero when disabled.

        ``destination``: ``"v3"`` or ``"engine"``; by default the first configured (v3 when on).
        """
        for pipeline in self._pipelines:
            if destination is None or pipeline.destination.name == destination:
                return pipeline.stats()
        return PipelineStats()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until everything spooled so far is delivered; False on timeout or when some of it was refused."""
        deadline = time.monotonic() + timeout_millis / 1000
        flushed = True
        for pipeline in self._pipelines:
            try:
                flushed = pipeline.force_flush(max(0.0, deadline - time.monotonic())) and flushed
            except Exception:  # the application's thread calls this: never into the application
                _logger.exception("Unexpected error flushing to %s", pipeline.destination.title)
                flushed = False
        return flushed

    def shutdown(self, timeout_millis: float | None = None) -> None:
        """Deliver for up to the timeout (the span processor passes what is left of its own); the rest stays on disk.

        The destinations shut down side by side: one that is down never takes the other's time.
        """
        if self._shutdown:
            _logger.warning("Exporter already shut down, ignoring call")
            return
        self._shutdown = True
        shutdown_side_by_side(self._pipelines, DEFAULT_SHUTDOWN_TIMEOUT if timeout_millis is None
                              else timeout_millis / 1000)
