"""CPU per generation span of ArthurSpanExporter, export() and delivery together (every thread of
the process, and its delivery process when it delivers from one: ``ARTHUR_DELIVERY``).

    uv run --frozen python benchmarks/exporter_cpu.py                       # 512 and 4 spans per export
    uv run --frozen python benchmarks/exporter_cpu.py --batch 4 --spans 8000

Each batch size runs in a fresh process against a local Arthur (its CPU is not counted): the
spans are exported batch by batch, then flushed until Arthur holds every one; the figure is the
process's CPU (``time.process_time``: all its threads) plus its delivery process's over that span, divided by the spans. CPU,
not wall time: the machine is shared, and what the exporter costs is what it takes from the host.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402


def measure(arthur_url: str, model_id: str, spool_dir: str, batch: int, spans: int) -> dict[str, float]:
    from export_bench import _fresh_copies

    generations = _fresh_copies(list(c.sdk_spans(len(c.generation_templates()))), spans)
    exporter = c.arthur_exporter(arthur_url, model_id, spool_dir, bind_with=generations)  # bound before the clock starts
    delivered_before = exporter.stats().delivered
    cpu, wall = c.own_and_children_cpu(), time.perf_counter()
    export_cpu = 0.0
    for i in range(0, spans, batch):
        started = time.thread_time()
        exporter.export(generations[i:i + batch])
        export_cpu += time.thread_time() - started
    flushed = exporter.force_flush(600_000)
    cpu, wall = c.own_and_children_cpu() - cpu, time.perf_counter() - wall
    delivered = exporter.stats().delivered - delivered_before
    exporter.shutdown()
    return {"batch": batch, "spans": spans, "delivered": delivered, "flushed": flushed,
            "cpu_us_per_span": cpu / spans * 1e6, "export_thread_cpu_us_per_span": export_cpu / spans * 1e6,
            "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, action="append", help="spans per export (default: 512 and 4)")
    parser.add_argument("--spans", type=int, default=20_480, help="generation spans per run (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=2, help="fresh processes per batch size, interleaved")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
        return
    batches = args.batch or [512, 4]
    with tempfile.TemporaryDirectory(prefix="otel-arthur-cpu-") as work, \
            c.local_arthur(Path(work), Path(work) / "arthur.sqlite3") as arthur:
        model_id = c.create_model(arthur.url)
        results: dict[int, list[dict[str, float]]] = {b: [] for b in batches}
        for run in range(args.runs):
            for batch in batches:
                spans = args.spans if batch >= 64 else args.spans // 4  # small batches: fewer, same accuracy
                worker = {"arthur_url": arthur.url, "model_id": model_id, "batch": batch, "spans": spans,
                          "spool_dir": str(Path(work) / f"spool-{batch}-{run}")}
                out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(worker)], check=True,
                                     capture_output=True, text=True).stdout
                results[batch].append(json.loads(out.strip().splitlines()[-1]))
        for batch, runs in results.items():
            best = min(runs, key=lambda r: r["cpu_us_per_span"])
            every = ", ".join(f"{r['cpu_us_per_span']:.1f}" for r in runs)
            print(f"{batch:4d} spans/export: {best['cpu_us_per_span']:7.1f} µs CPU/span (best of {len(runs)}: {every}),"
                  f" export() thread {best['export_thread_cpu_us_per_span']:.1f},"
                  f" delivered {best['delivered']}/{best['spans']}")

if __name__ == "__main__":
    main()
