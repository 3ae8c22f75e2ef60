"""How long an application thread, back from I/O, waits for the GIL while the exporter works beside it.

    uv run --frozen python benchmarks/gil_wait.py --rounds 4 --calls 2000 [--before DIR]

Each "call" on the main thread makes one generation span (recorded attributes, through a
``BatchSpanProcessor`` exporting every 100 ms) and then sleeps 2 ms, as if waiting on its LLM; how
late it wakes past those 2 ms is the timer's slack, the machine's scheduling, and the time it
waited for the GIL held by the exporter's threads (mapping and spooling on the span processor's
thread, delivery to the local Arthur on the worker: ``otel_arthur`` delivers from a thread, ``otel_arthur_process``
from a delivery process). The no-op exporter shows the first two, so
the difference is the exporter's share, with far less noise than the wall time of a whole LLM
call on a shared machine. Configurations run in fresh processes, the order rotating each round;
``--before DIR`` adds the exporter imported from another commit's ``otel_arthur`` (see
``caller_latency.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

IO_SECONDS = 0.002  # the LLM call's wait, during which the exporter's threads run


def worker(args: dict[str, Any]) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    if args["config"] == "otel_noop":
        class NoopExporter(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        exporter: Any = NoopExporter()
    else:
        exporter = c.arthur_exporter(args["arthur_url"], args["model_id"], args["spool_dir"])
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-gil"}))
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=100)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    templates = c.generation_templates()

    def calls(count: int) -> list[float]:
        late = []
        for i in range(count):
            template = templates[i % len(templates)]
            with tracer.start_as_current_span(template.name, kind=template.kind, attributes=dict(template.attributes)):
                pass
            start = time.perf_counter()
            time.sleep(IO_SECONDS)
            late.append((time.perf_counter() - start - IO_SECONDS) * 1e6)
        return late

    calls(args["warmup"])
    processor.force_flush()
    if args["config"] != "otel_noop":
        exporter.force_flush(60_000)  # the model bound, the HTTP client imported: delivery in steady state
    late = calls(args["calls"])
    processor.force_flush()
    delivered = 0
    if args["config"] != "otel_noop":
        exporter.force_flush(60_000)
        delivered = exporter.stats().delivered
    processor.shutdown()
    c.emit({"late_us": late, "delivered": delivered})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--before", help="a directory holding another commit's otel_arthur package")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    envs = {"otel_noop": {}, "otel_arthur": {"ARTHUR_DELIVERY": "thread"},
            "otel_arthur_process": {"ARTHUR_DELIVERY": "process"}} | (
        {"before": {"PYTHONPATH": args.before}} if args.before else {})
    late: dict[str, list[dict[str, float]]] = {name: [] for name in envs}
    with tempfile.TemporaryDirectory(prefix="otel-arthur-gil-") as work:
        logs = Path(work)
        arthur = c.local_arthur(logs, logs / "arthur.sqlite3")
        with arthur:
            model_id = c.create_model(arthur.url)
            for number in range(args.rounds):
                names = list(envs)
                for name in names[number % len(names):] + names[:number % len(names)]:
                    output = c.run_worker("gil_wait.py", {
                        "config": "otel_noop" if name == "otel_noop" else "otel_arthur", "arthur_url": arthur.url,
                        "model_id": model_id, "spool_dir": str(logs / f"spool-{name}-{number}"),
                        "warmup": args.warmup, "calls": args.calls}, env=os.environ | envs[name],
                        priority=True)  # ahead of the machine's other work: its scheduling is not what is measured
                    late[name].append(c.summary(output["late_us"]))
    for name in envs:
        by_round = ", ".join(f"{r['p99']:.0f}" for r in late[name])
        print(f"{name:19s} late past {IO_SECONDS * 1e3:.0f} ms: median "
              f"{statistics.median(r['median'] for r in late[name]):6.0f} µs, p99 "
              f"{statistics.median(r['p99'] for r in late[name]):6.0f} µs (median over {args.rounds} rounds;"
              f" p99 by round: {by_round})")
    print(f"load average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        worker(json.loads(sys.argv[1]))
    else:
        main()
