"""otel-arthur: LLM generation spans from OpenTelemetry into Arthur inference records."""
