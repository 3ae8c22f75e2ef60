"""CPU per record of delivery alone (claim → bind → encode → POST → parse the 207 → settle), with cProfile.

    uv run --frozen python benchmarks/profile_delivery.py                # 20k records, 500 per request
    uv run --frozen python benchmarks/profile_delivery.py --top 30

The exporter spools the records with its delivery thread held back; then this thread drains the spool
with the worker's own step, timed by ``time.thread_time`` (the local Arthur runs in its own process and
is not counted), once plainly and once under cProfile, whose table says where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=20_000, help="records per drain (default: %(default)s)")
    parser.add_argument("--top", type=int, default=25, help="rows of the profile table (default: %(default)s)")
    parser.add_argument("--sort", default="tottime", help="pstats order: tottime, cumulative… (default: %(default)s)")
    args = parser.parse_args()

    from export_bench import _fresh_copies

    from otel_arthur import pipeline as pipeline_module

    templates = list(c.sdk_spans(len(c.generation_templates())))
    with tempfile.TemporaryDirectory(prefix="otel-arthur-profile-") as work, \
            c.exporter_on_local_arthur(Path(work), bind_with=templates, delivery="thread") as (_, exporter):
        pipeline = exporter._pipelines[0]
        assert pipeline is not None
        pipeline._stop.set()  # hold the worker back: this thread drains the spool
        pipeline._wake.set()
        assert pipeline._thread is not None
        pipeline._thread.join()
        pipeline._stop.clear()

        def drain(profiler: cProfile.Profile | None) -> float:
            spans = _fresh_copies(templates, args.spans)
            for i in range(0, len(spans), 512):
                exporter.export(spans[i:i + 512])
            delivered = exporter.stats().delivered
            started = time.thread_time()
            if profiler is not None:
                profiler.enable()
            while pipeline._deliver_batch() is not pipeline_module._Outcome.IDLE:
                pass
            if profiler is not None:
                profiler.disable()
            cpu = time.thread_time() - started
            assert exporter.stats().delivered - delivered == args.spans, "not every record was delivered"
            return cpu / args.spans * 1e6

        plain = drain(None)
        profiler = cProfile.Profile(time.thread_time)  # CPU, as the figure: waiting for Arthur is not work
        profiled = drain(profiler)
        print(f"delivery: {plain:.2f} µs CPU per record ({args.spans} records; {profiled:.2f} under cProfile)")
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
        exporter.shutdown()


if __name__ == "__main__":
    main()
