"""Time ArthurSpanExporter adds to each LLM call on the caller's thread, over OpenLLMetry with a no-op exporter.

    uv run --frozen python benchmarks/caller_latency.py --rounds 6 --calls 200 [--before DIR]

The same ChatOpenAI turn (``caller_cost.py``) against a local OpenAI-compatible endpoint, the span
processor exporting every 100 ms, Arthur answering at once: each round runs each configuration (the
no-op exporter; ours delivering from a thread, ``otel_arthur``, and from a delivery process,
``otel_arthur_process``) in fresh interpreters, one after the other, the order alternating. Paired by round: the median over
rounds of (exporter's median − no-op's median), and the same for p99. The machine is shared, so
these figures are provisional; the delivery threads' CPU per call is printed beside them.

``--before DIR``: a third configuration in each round, the exporter as imported from ``DIR`` (an
``otel_arthur`` package from another commit: ``git archive <commit> otel_arthur | tar -x -C DIR``),
so a change is judged against its parent under the same load.
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
DELIVERY_MODES = {"otel_arthur": {"ARTHUR_DELIVERY": "thread"}, "otel_arthur_process": {"ARTHUR_DELIVERY": "process"}}


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--schedule-delay-ms", type=int, default=100)
    parser.add_argument("--before", help="a directory holding another commit's otel_arthur package")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="otel-arthur-latency-") as work:
        logs = Path(work)
        arthur, openai, sink = c.local_arthur(logs, logs / "arthur.sqlite3"), c.local_openai(logs), c.otlp_sink(logs)
        with arthur, openai, sink:
            model_id = c.create_model(arthur.url)
            common = {"openai_url": openai.url, "sink_url": sink.url, "warmup": args.warmup, "calls": args.calls,
                      "schedule_delay_ms": args.schedule_delay_ms}
            envs = {"otel_noop": {}, **DELIVERY_MODES} | ({"before": {"PYTHONPATH": args.before}} if args.before else {})
            per_round: dict[str, list[dict[str, float]]] = {name: [] for name in envs}
            background: dict[str, list[float]] = {name: [] for name in envs}
            in_children: dict[str, list[float]] = {name: [] for name in envs}
            for number in range(args.rounds):
                names = list(envs)
                names = names[number % len(names):] + names[:number % len(names)]  # the order rotates
                for name in names:
                    unit = {"config": "otel_noop"} if name == "otel_noop" else {
                        "config": "otel_arthur", "phases": [{"label": "0ms", "arthur_url": arthur.url,
                                                             "model_id": model_id,
                                                             "spool_dir": str(logs / f"spool-{name}-{number}")}]}
                    output = c.run_worker("caller_cost.py", common | {"configs": [unit]},
                                          env=os.environ | SAME_HASH_SEED | envs[name])
                    phase = output["results"][0]["phases"][0]
                    per_round[name].append(c.summary(phase["times_us"]))
                    background[name].append(phase["background_cpu_per_call_us"])
                    in_children[name].append(phase["child_processes_cpu_per_call_us"])
                    if "exporter" in phase:
                        assert phase["exporter"]["delivered"] >= phase["exporter"]["generation_spans"] > 0, phase
    for name in (n for n in envs if n != "otel_noop"):
        for key in ("median", "p99"):
            added = [a[key] - n[key] for a, n in zip(per_round[name], per_round["otel_noop"])]
            print(f"{name} added {key:6s}: {statistics.median(added):8.0f} µs paired median over {args.rounds}"
                  f" rounds (rounds: {', '.join(f'{x:.0f}' for x in added)})")
        print(f"{name} background CPU per call {statistics.fmean(background[name]):.0f} µs in its threads,"
              f" {statistics.fmean(in_children[name]):.0f} µs in its delivery process")
    print(f"no-op median {statistics.median(r['median'] for r in per_round['otel_noop']):.0f} µs,"
          f" p99 {statistics.median(r['p99'] for r in per_round['otel_noop']):.0f} µs;"
          f" background CPU per call {statistics.fmean(background['otel_noop']):.0f} µs;"
          f" load average {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
