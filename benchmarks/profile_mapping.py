"""CPU µs per generation span of the mapper alone, per recorded fixture file, for both front doors' inputs.

    uv run --frozen python benchmarks/profile_mapping.py [--spans 4000] [--rounds 5] [--profile FILE]

For each file of ``tests/fixtures/spans`` that holds generations: ``map_span`` of its SDK ``ReadableSpan``s
(the in-app exporter's input), and of the ``PlainSpan``s ``otlp.generation_spans`` builds from the same
spans encoded as an OTLP request (``serve``'s input), with that extraction timed on its own. Each figure is
the best of ``--rounds`` runs over ``--spans`` spans (the file's generations repeated), timed with
``time.thread_time``. ``--profile`` names a file (e.g. ``openllmetry_chat``) to run under cProfile instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _best_us(run: Callable[[], Any], rounds: int, per: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        run()
        best = min(best, time.thread_time() - start)
    return best / per * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=4000, help="spans mapped per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per figure, best kept (default: %(default)s)")
    parser.add_argument("--profile", help="a fixture file to profile with cProfile instead")
    args = parser.parse_args()

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from spanfixtures import SPANS_DIR, load_spans

    from otel_arthur import otlp
    from otel_arthur.mapping import classify, map_span, span_attributes

    print(f"CPU µs per generation span, best of {args.rounds} runs of {args.spans} spans")
    print(f"  {'fixture':<28} {'gens':>4} {'map SDK span':>13} {'to PlainSpan':>13} {'map PlainSpan':>14}")
    for path in sorted(SPANS_DIR.glob("*.json")):
        name = path.stem
        if args.profile and name != args.profile:
            continue
        generations = [span for span in load_spans(name) if classify(span_attributes(span)) is not None]
        if not generations:
            continue
        spans = (generations * (args.spans // len(generations) + 1))[:args.spans]
        request = otlp.parse_request(encode_spans(spans).SerializeToString(), otlp.PROTOBUF)
        plain = list(otlp.generation_spans(request))
        assert len(plain) == len(spans) and all(map(map_span, plain)), "a generation was not extracted"
        for span in spans:  # caches warm (the price table loaded), as in a running exporter
            map_span(span)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.rounds):
                for span in spans:
                    map_span(span)
                for span in plain:
                    map_span(span)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return
        sdk = _best_us(lambda: [map_span(span) for span in spans], args.rounds, len(spans))
        extract = _best_us(lambda: list(otlp.generation_spans(request)), args.rounds, len(spans))
        mapped = _best_us(lambda: [map_span(span) for span in plain], args.rounds, len(spans))
        print(f"  {name:<28} {len(generations):>4} {sdk:>13.2f} {extract:>13.2f} {mapped:>14.2f}")


if __name__ == "__main__":
    main()
