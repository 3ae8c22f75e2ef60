"""otel-arthur: LLM generation spans from OpenTelemetry into Arthur inference records."""

__version__ = "0.1.0"

from otel_arthur.exporter import ArthurSpanExporter

__all__ = ["ArthurSpanExporter", "__version__"]
