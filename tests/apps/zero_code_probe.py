"""Run under ``opentelemetry-instrument``: prints, as JSON, what the zero-code set-up built from the environment."""

import json
import os

from opentelemetry import metrics, trace

provider = trace.get_tracer_provider()
report = {"tracer_provider": type(provider).__name__, "meter_provider": type(metrics.get_meter_provider()).__name__,
          "env": {name: os.environ.get(name) for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
                                                          "OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL")}}
if hasattr(provider, "resource"):
    report["resource"] = dict(provider.resource.attributes)
    report["sampler"] = provider.sampler.get_description()
    report["processors"] = []
    for processor in provider._active_span_processor._span_processors:
        engine = getattr(processor, "_batch_processor", processor)  # SDK >= 1.35 keeps the settings there
        report["processors"].append({
            "type": type(processor).__name__,
            "exporter": type(processor.span_exporter).__name__,
            "schedule_delay_millis": getattr(engine, "_schedule_delay_millis", None),
            "max_export_batch_size": getattr(engine, "_max_export_batch_size", None),
        })
print(json.dumps(report))
