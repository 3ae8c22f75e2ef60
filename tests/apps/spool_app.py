"""An instrumented app for the chaos tests: generation spans through BatchSpanProcessor -> ArthurSpanExporter.

    python spool_app.py COUNT [--pause SECONDS] [--debug]

Configured by environment only (``ARTHUR_*``, ``OTEL_BSP_*``), as a deployed app would be. Emits
COUNT spans carrying the attributes of the recorded generation fixtures (fresh trace and span ids
from the SDK), printing ``{"emitted": n}`` lines as it goes, then shuts the provider down (the
exporter delivers what it can in its shutdown time) and prints ``{"done": …}`` with the
exporter's stats and the time taken. COUNT 0 only delivers what the spool already holds: it waits
for ``force_flush`` before shutting down. ``--debug`` turns DEBUG logging on for every logger.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests directory, for spanfixtures
from spanfixtures import generation_spans  # noqa: E402

from otel_arthur import ArthurSpanExporter  # noqa: E402


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between spans")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    started = time.monotonic()
    exporter = ArthurSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "chaos-app"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("chaos-app")
    templates = generation_spans()
    for n in range(args.count):
        template = templates[n % len(templates)]
        span = tracer.start_span(template.name, kind=template.kind, attributes=template.attributes)
        span.set_status(template.status)
        span.end()
        if (n + 1) % 50 == 0:
            say(emitted=n + 1)
        if args.pause:
            time.sleep(args.pause)
    if args.count == 0:
        exporter.force_flush(timeout_millis=60_000)
    provider.shutdown()
    say(done=True, seconds=round(time.monotonic() - started, 3), stats=dataclasses.asdict(exporter.stats()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
