"""Time ArthurSpanExporter adds to each LLM call on the caller's thread, over OpenLLMetry with a no-op exporter.

    uv run --frozen python benchmarks/caller_latency.py --rounds 6 --calls 200

The same ChatOpenAI turn (``caller_cost.py``) against a local OpenAI-compatible endpoint, the span
processor exporting every 100 ms, Arthur answering at once: each round runs both configurations in
fresh interpreters, one after the other, the order alternating. Paired by round: the median over
rounds of (exporter's median − no-op's median), and the same for p99. The machine is shared, so
these figures are provisional; the delivery threads' CPU per call is printed beside them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

SAME_HASH_SEED = {"PYTHONHASHSEED": "0"}


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--schedule-delay-ms", type=int, default=100)
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="otel-arthur-latency-") as work:
        logs = Path(work)
        arthur, openai, sink = c.local_arthur(logs, logs / "arthur.sqlite3"), c.local_openai(logs), c.otlp_sink(logs)
        with arthur, openai, sink:
            model_id = c.create_model(arthur.url)
            common = {"openai_url": openai.url, "sink_url": sink.url, "warmup": args.warmup, "calls": args.calls,
                      "schedule_delay_ms": args.schedule_delay_ms}
            per_round: dict[str, list[dict[str, float]]] = {"otel_noop": [], "otel_arthur": []}
            background: dict[str, list[float]] = {"otel_noop": [], "otel_arthur": []}
            for number in range(args.rounds):
                units = [{"config": "otel_noop"},
                         {"config": "otel_arthur", "phases": [{"label": "0ms", "arthur_url": arthur.url,
                                                               "model_id": model_id,
                                                               "spool_dir": str(logs / f"spool-{number}")}]}]
                for unit in units if number % 2 == 0 else units[::-1]:
                    output = c.run_worker("caller_cost.py", common | {"configs": [unit]},
                                          env=os.environ | SAME_HASH_SEED)
                    phase = output["results"][0]["phases"][0]
                    per_round[unit["config"]].append(c.summary(phase["times_us"]))
                    background[unit["config"]].append(phase["background_cpu_per_call_us"])
                    if "exporter" in phase:
                        assert phase["exporter"]["delivered"] >= phase["exporter"]["generation_spans"] > 0, phase
    for key in ("median", "p99"):
        added = [a[key] - n[key] for a, n in zip(per_round["otel_arthur"], per_round["otel_noop"])]
        print(f"added {key:6s}: {statistics.median(added):8.0f} µs paired median over {args.rounds} rounds"
              f" (rounds: {', '.join(f'{x:.0f}' for x in added)})")
    print(f"no-op median {statistics.median(r['median'] for r in per_round['otel_noop']):.0f} µs;"
          f" background CPU per call: no-op {statistics.fmean(background['otel_noop']):.0f} µs,"
          f" exporter {statistics.fmean(background['otel_arthur']):.0f} µs;"
          f" load average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
