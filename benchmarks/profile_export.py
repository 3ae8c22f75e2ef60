"""Profile ArthurSpanExporter's hot paths with pyinstrument: where export() and delivery spend their time.

    uv run --frozen python benchmarks/profile_export.py                 # text, to the terminal
    uv run --frozen python benchmarks/profile_export.py --html /tmp/p   # and an HTML page per path
    uv run --frozen python benchmarks/profile_export.py --batch 4       # export()'s fixed costs at small batches

Three paths, each over SDK-made spans (attributes in ``BoundedAttributes``, as a span processor
hands them over): ``export()`` of non-LLM spans (classify and ignore), ``export()`` of recorded
generation spans (map + spool; the delivery thread held back), and delivery of what was spooled
(claim → bind → POST to a local Arthur → settle), the delivery thread's own step run in turn.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=20_000, help="generation spans (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=512, help="generation spans per export (default: %(default)s)")
    parser.add_argument("--html", type=Path, help="also write <dir>/<path>.html")
    args = parser.parse_args()

    from pyinstrument import Profiler

    from otel_arthur import pipeline as pipeline_module

    def report(name: str, profiler: Profiler, per: int) -> None:
        session = profiler.last_session
        print(f"\n=== {name}: {session.duration / per * 1e6:.2f} µs per span (profiler overhead included)")
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        if args.html:
            args.html.mkdir(parents=True, exist_ok=True)
            (args.html / f"{name}.html").write_text(profiler.output_html(), encoding="utf-8")

    ignored = list(c.sdk_spans(512, generation_share=0.0))
    generations = list(c.sdk_spans(args.spans))
    with tempfile.TemporaryDirectory(prefix="otel-arthur-profile-") as work, \
            c.exporter_on_local_arthur(Path(work), bind_with=generations, delivery="thread") as (_, exporter):
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        with profiler:
            for _ in range(200):
                exporter.export(ignored)
        report("export-ignored", profiler, 200 * len(ignored))

        # Hold the delivery thread back while export() spools, then profile it draining the spool.
        [pipeline] = exporter._pipelines  # the v3 destination's
        pipeline._stop.set()
        pipeline._wake.set()
        pipeline._thread.join()
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        with profiler:
            for i in range(0, len(generations), args.batch):
                exporter.export(generations[i:i + args.batch])
        report("export-generations", profiler, len(generations))

        # Then drain it, batch by batch, on this thread: the worker's own step (claim, bind, POST, settle).
        pipeline._stop.clear()
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        start = time.perf_counter()
        with profiler:
            while pipeline._deliver_batch() is not pipeline_module._Outcome.IDLE:
                pass
        print(f"\ndelivered {exporter.stats().delivered - 1} records in {time.perf_counter() - start:.2f} s (profiled)")
        report("delivery", profiler, len(generations))
        exporter.shutdown()


if __name__ == "__main__":
    main()
