"""otel-arthur benchmarks: one command, every figure a ratio against a baseline measured in the same run.

    uv run --frozen python benchmarks/run.py            # everything, a few minutes on 2 cores
    uv run --frozen python benchmarks/run.py --quick    # smoke run: tiny sizes, numbers meaningless
    uv run --frozen python benchmarks/run.py --long     # the outage lasts 10 minutes instead of 60 s

Prints a table, writes the raw figures to ``benchmarks/results/<timestamp>.json`` and the outage
plot to ``benchmarks/results/<timestamp>-outage.png``. Everything runs on 127.0.0.1: the local
Arthur (``otel-arthur local-arthur``), the local OpenAI endpoint, an OTLP sink
(``benchmarks/sink.py``) and ``otel-arthur serve`` are subprocesses, and so is each measured
configuration, so none shares an interpreter (or a GIL) with another.

1. caller_cost  the same ChatOpenAI turn, no telemetry vs (a) the seed's ArthurCallbackHandler,
                (b) OpenLLMetry + BatchSpanProcessor(ArthurSpanExporter()), (c) OpenLLMetry + no-op
                exporter; Arthur at 0 ms and 50 ms added latency, and down (b); for reference
                (d) OpenLLMetry + OTLPSpanExporter to a do-nothing sink
2. ignored      ns per non-LLM span through ArthurSpanExporter.export()
3. throughput   recorded generation spans: ArthurSpanExporter until delivered vs OTLPSpanExporter
4. serve_ingest spans/s that `otel-arthur serve` accepts from 2 concurrent OTLP exporters, against
                a do-nothing sink and a floor receiver (parse + plain dict + executemany)
5. outage       serve's RSS and spool depth, sampled each second, while Arthur is down then back
6. startup      python -c "import otel_arthur" + exporter vs bare opentelemetry-sdk vs import arthurai
7. replicas     1, 2 and 3 serve replicas, each its own spool, the load spread evenly: accepted and
                delivered spans/s, serve CPU per span (benchmarks/replicas_bench.py)
8. peer         serve beside Arize Phoenix (installed on demand under benchmarks/.cache/): spans/s
                accepted and stored, CPU per stored span, what each keeps when stopped under load
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

RESULTS = c.BENCH / "results"
# Every caller_cost interpreter hashes alike: with random seeds the no-telemetry median alone moved by up
# to 260 µs from one process to the next (34 µs with a fixed seed), more than the differences measured.
SAME_HASH_SEED = os.environ | {"PYTHONHASHSEED": "0"}

# Sizes per mode. --set name=value overrides any of them (the smoke test makes them tiny).
SIZES: dict[str, dict[str, Any]] = {
    "default": {
        "rounds": 4,  # caller_cost: every configuration this many times, interleaved, samples pooled
        "calls": 150,  # caller_cost: measured calls per configuration and round
        "calls_seed_50ms": 60,  # the seed handler at 50 ms takes > 50 ms a call
        "warmup": 20,
        "schedule_delay_ms": 250,  # BatchSpanProcessor: exports happen during the measured calls
        "ignored_repeat": 200,  # export() calls on a batch of 512 ignored spans
        "throughput_spans": 100_000,
        "startup_runs": 5,
        "arthurai_runs": 2,
        "ingest_seconds": 10,
        "outage_seconds": 60,
        "outage_rate": 500,  # generation spans/s sent to serve during the outage run
        "drain_timeout": 300,
        "client_start_delay": 6.0,  # seconds for the load clients to encode their bodies before they start
        "client_bodies": 4,  # distinct request bodies per load client (of 512 spans, each with fresh ids)
        "after_drain_seconds": 3,
        "peer_rounds": 2,  # peer: serve and Phoenix each this many times, interleaved (A B B A)
        "peer_seconds": 15,  # peer: the measured phase, flat out
        "peer_stop_seconds": 4,  # peer: the clients go on sending this long; SIGINT 1 s into it
        "phoenix": 1,  # 0: peer measures serve alone (the smoke test skips Phoenix's install)
        "phoenix_start_timeout": 180,  # its first start creates its database (~30 s on an idle machine)
        "one_process": 0,  # 1: caller_cost configurations share interpreters, two at once (--quick)
        "parallel": 0,  # 1: sections run at once, each with its own servers' share (--quick: timings meaningless)
        "replicas_seconds": 10,  # replicas: load per replica count
        "replicas_clients": 2,  # replicas: load clients per replica
    },
}
SIZES["quick"] = SIZES["default"] | {
    "rounds": 1, "calls": 2, "calls_seed_50ms": 1, "warmup": 1, "ignored_repeat": 2, "throughput_spans": 512,
    "startup_runs": 1, "arthurai_runs": 1, "ingest_seconds": 0.5, "outage_seconds": 2, "outage_rate": 200,
    "drain_timeout": 60, "client_start_delay": 2.5, "client_bodies": 1, "after_drain_seconds": 1, "one_process": 1,
    "parallel": 1, "replicas_seconds": 0.5, "replicas_clients": 1, "peer_rounds": 1, "peer_seconds": 1,
    "peer_stop_seconds": 2,
}
SIZES["long"] = SIZES["default"] | {"outage_seconds": 600}


class Bench:
    """The run's shared state: sizes, the work directory, the local servers."""

    def __init__(self, sizes: dict[str, Any], work: Path) -> None:
        self.sizes = sizes
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.arthur = c.local_arthur(self.logs, work / "arthur.sqlite3")
        self.arthur_slow = c.local_arthur(self.logs, work / "arthur-slow.sqlite3", name="local-arthur-50ms")
        self.arthur_outage = c.local_arthur(self.logs, work / "arthur-outage.sqlite3", name="local-arthur-outage")
        self.down_url = f"http://127.0.0.1:{c.free_port()}"  # nothing listens there: Arthur is down
        self.openai = c.local_openai(self.logs)
        self.sink = c.otlp_sink(self.logs)
        self.services = (self.arthur, self.arthur_slow, self.arthur_outage, self.openai, self.sink)
        self._spools = itertools.count(1)
        self.png_path: Path | None = None

    def __enter__(self) -> Bench:
        try:
            c.start_all(self.services)
            c.set_faults(self.arthur_slow.url, rate_slow=1.0, slow_seconds=0.05)  # every API answer 50 ms late
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for service in self.services:
            service.stop()

    def spool_dir(self) -> str:
        return str(self.work / f"spool-{next(self._spools)}")


# -- 1. caller-thread cost --------------------------------------------------------------------------

def caller_cost(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    fast, slow = c.create_model(bench.arthur.url), c.create_model(bench.arthur_slow.url)
    common = {"openai_url": bench.openai.url, "sink_url": bench.sink.url, "warmup": s["warmup"],
              "calls": s["calls"], "schedule_delay_ms": s["schedule_delay_ms"]}
    arthur_0 = {"label": "0ms", "arthur_url": bench.arthur.url, "model_id": fast}
    arthur_50 = {"label": "50ms", "arthur_url": bench.arthur_slow.url, "model_id": slow}
    arthur_down = {"label": "outage", "arthur_url": bench.down_url, "model_id": fast, "outage": True}

    def units() -> list[dict[str, Any]]:  # fresh spool directories each round
        return [
            {"config": "none"},
            {"config": "seed", "phases": [arthur_0, arthur_50 | {"calls": s["calls_seed_50ms"]}]},
            {"config": "otel_noop"},
            {"config": "otel_otlp"},
            {"config": "otel_arthur", "phases": [p | {"spool_dir": bench.spool_dir()}
                                                 for p in (arthur_0, arthur_50, arthur_down)]},
        ]

    samples: dict[str, list[float]] = {}
    per_round: dict[str, list[dict[str, float]]] = {}
    background: dict[str, list[float]] = {}
    delivery_process: dict[str, list[float]] = {}
    exporter_checks = []
    for round_number in range(s["rounds"]):
        batch = units()
        if s["one_process"]:  # --quick: two interpreters at once, uninstrumented and OpenLLMetry
            batches = [batch[:2], batch[2:]]
            outputs = c.run_workers_at_once("caller_cost.py", [common | {"configs": b} for b in batches],
                                            priority=bool(s["parallel"]))
        else:  # each configuration in its own interpreter, one at a time, the order rotated each round
            shift = round_number % len(batch)
            outputs = [c.run_worker("caller_cost.py", common | {"configs": [unit]}, env=SAME_HASH_SEED)
                       for unit in batch[shift:] + batch[:shift]]
        for output in outputs:
            for unit in output["results"]:
                config = unit["config"]
                for phase in unit["phases"]:
                    label = config if config in ("none", "otel_noop", "otel_otlp") else f"{config}@{phase['label']}"
                    samples.setdefault(label, []).extend(phase["times_us"])
                    per_round.setdefault(label, []).append(c.summary(phase["times_us"]))
                    # The exporter's threads in the application's interpreter (they compete with the caller
                    # for the GIL) and its delivery process (ARTHUR_DELIVERY=process, the default: it does not).
                    background.setdefault(label, []).append(phase["background_cpu_per_call_us"])
                    delivery_process.setdefault(label, []).append(phase["child_processes_cpu_per_call_us"])
                    if "exporter" in phase:
                        exporter_checks.append(phase["exporter"] | {"phase": phase["label"]})

    stats = {label: c.summary(values) for label, values in samples.items()}
    base = stats["none"]
    out: dict[str, Any] = {"configurations": {}, "exporter_runs": exporter_checks,
                           "rounds": s["rounds"], "calls_per_round": s["calls"],
                           "schedule_delay_ms": s["schedule_delay_ms"], "one_process": s["one_process"]}

    def paired(label: str, reference: str) -> float:
        """Median over rounds of (this round's median − the reference's median in the same round)."""
        return statistics.median(r["median"] - q["median"] for r, q in zip(per_round[label], per_round[reference]))

    for label, st in stats.items():
        out["configurations"][label] = {
            "median_us": st["median"], "p99_us": st["p99"], "mean_us": st["mean"], "n": st["n"],
            "added_median_us": st["median"] - base["median"], "added_p99_us": st["p99"] - base["p99"],
            "added_mean_us": st["mean"] - base["mean"], "added_paired_median_us": paired(label, "none"),
            "round_medians_us": [r["median"] for r in per_round[label]],
            "background_cpu_per_call_us": statistics.fmean(background[label]),
            "delivery_process_cpu_per_call_us": statistics.fmean(delivery_process[label]),
        }
    conf = out["configurations"]
    seed_50 = conf["seed@50ms"]["added_median_us"]
    out["seed_50ms_added_median_us"] = seed_50
    out["b_vs_a50"] = {}
    out["exporter_share"] = {}

    def share(label: str) -> dict[str, float]:
        """What ``label`` adds over OpenLLMetry with a no-op exporter: the exporter's own share."""
        x, noop = conf[label], conf["otel_noop"]
        return {"median_us": x["median_us"] - noop["median_us"], "p99_us": x["p99_us"] - noop["p99_us"],
                "mean_us": x["mean_us"] - noop["mean_us"], "paired_median_us": paired(label, "otel_noop"),
                # CPU the exporter's threads spent per call: the caller can only be kept waiting while
                # another thread holds the GIL, so this bounds its share from above, whatever the noise.
                "background_cpu_per_call_us": x["background_cpu_per_call_us"] - noop["background_cpu_per_call_us"],
                "delivery_process_cpu_per_call_us": x["delivery_process_cpu_per_call_us"]}

    for condition in ("0ms", "50ms", "outage"):
        b = conf[f"otel_arthur@{condition}"]
        out["b_vs_a50"][condition] = {"added_median_us": b["added_median_us"], "added_p99_us": b["added_p99_us"],
                                      "fraction_of_a50": b["added_median_us"] / seed_50 if seed_50 else None}
        out["exporter_share"][condition] = share(f"otel_arthur@{condition}")
    out["otlp_share"] = share("otel_otlp")
    # How far the no-telemetry median moved between rounds: the resolution of a difference of medians.
    medians = conf["none"]["round_medians_us"]
    out["noise_none_round_median_spread_us"] = max(medians) - min(medians)
    return out


# -- 2, 3. export() ---------------------------------------------------------------------------------

def ignored(bench: Bench) -> dict[str, Any]:
    model_id = c.create_model(bench.arthur.url)
    return c.run_worker("export_bench.py", {"mode": "ignored", "spans": 512, "repeat": bench.sizes["ignored_repeat"],
                                            "arthur_url": bench.arthur.url, "model_id": model_id,
                                            "spool_dir": bench.spool_dir()})


def throughput(bench: Bench) -> dict[str, Any]:
    n = bench.sizes["throughput_spans"]
    model_id = c.create_model(bench.arthur.url)
    # A sink of its own: its counts and CPU are this section's alone (--quick runs caller_cost, which
    # exports to the shared sink, at the same time).
    with c.otlp_sink(bench.logs, name="otlp-sink-throughput") as sink:
        before = c.cpu_seconds(sink.pid)
        otlp = c.run_worker("export_bench.py", {"mode": "otlp", "spans": n, "sink_url": sink.url})
        otlp["receiver_cpu_us_per_span"] = (c.cpu_seconds(sink.pid) - before) / n * 1e6
    before = c.cpu_seconds(bench.arthur.pid)
    arthur = c.run_worker("export_bench.py", {"mode": "arthur", "spans": n, "arthur_url": bench.arthur.url,
                                              "model_id": model_id, "spool_dir": bench.spool_dir()})
    # Both receivers share the 2 cores with the exporter: the local Arthur validates and stores each row.
    arthur["receiver_cpu_us_per_span"] = (c.cpu_seconds(bench.arthur.pid) - before) / n * 1e6
    return {"spans": n, "arthur": arthur, "otlp": otlp, "ratio": arthur["spans_per_s"] / otlp["spans_per_s"],
            "records_per_request": arthur["records_per_request"],
            "exporter_cpu_ratio": otlp["cpu_us_per_span"] / arthur["cpu_us_per_span"]}


# -- 4, 5. serve ------------------------------------------------------------------------------------

def serve_ingest(bench: Bench) -> dict[str, Any]:
    import serve_bench

    return serve_bench.ingest(bench)


def outage(bench: Bench) -> dict[str, Any]:
    import serve_bench

    return serve_bench.outage(bench)


# -- 6. start-up ------------------------------------------------------------------------------------

def startup(bench: Bench) -> dict[str, Any]:
    import startup as startup_module

    return startup_module.measure(bench.sizes["startup_runs"], bench.sizes["arthurai_runs"])


def replicas(bench: Bench) -> dict[str, Any]:
    import replicas_bench

    return replicas_bench.measure(bench)


def peer(bench: Bench) -> dict[str, Any]:
    import peer_bench

    return peer_bench.compare(bench)


# The sections in the order they run: one line each.
RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "startup": startup,
    "ignored": ignored,
    "throughput": throughput,
    "caller_cost": caller_cost,
    "serve_ingest": serve_ingest,
    "outage": outage,
    "replicas": replicas,
    "peer": peer,
}
SECTIONS = tuple(RUNNERS)


# -- the table --------------------------------------------------------------------------------------

def _us(value: float) -> str:
    return f"{value / 1000:+.2f} ms" if abs(value) >= 1000 else f"{value:+.0f} µs"


def _fraction(value: float | None) -> str:
    if value is None:
        return "—"
    return f"1/{1 / value:.0f}" if value > 0 else f"{value:.4f}"


def table(results: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of measurement, result, baseline (same run), ratio, target, met."""
    rows: list[dict[str, str]] = []

    def row(measurement: str, result: str, baseline: str = "", ratio: str = "", target: str = "",
            met: bool | None = None) -> None:
        rows.append({"measurement": measurement, "result": result, "baseline": baseline, "ratio": ratio,
                     "target": target, "met": "" if met is None else ("yes" if met else "NO")})

    def failed(section: str) -> bool:
        data = results.get(section) or {}
        if "error" in data or "skipped" in data:
            row(f"{section}", "ERROR" if "error" in data else "skipped",
                (data.get("error") or data.get("skipped") or "").splitlines()[-1][:90])
            return True
        return False

    if not failed("caller_cost"):
        cc = results["caller_cost"]
        conf = cc["configurations"]
        none = conf["none"]
        base = f"no telemetry {none['median_us'] / 1000:.2f} ms / p99 {none['p99_us'] / 1000:.2f} ms"
        for label, name in (("seed@0ms", "(a) seed ArthurCallbackHandler, Arthur 0 ms"),
                            ("seed@50ms", "(a) seed ArthurCallbackHandler, Arthur 50 ms"),
                            ("otel_noop", "(c) OpenLLMetry + no-op exporter")):
            x = conf[label]
            row(f"1 added per call: {name}", f"{_us(x['added_median_us'])} / p99 {_us(x['added_p99_us'])}"
                f" (paired {_us(x['added_paired_median_us'])})", base)
        a50 = cc["seed_50ms_added_median_us"]
        for condition, name in (("0ms", "Arthur 0 ms"), ("50ms", "Arthur 50 ms"), ("outage", "Arthur down")):
            b = cc["b_vs_a50"][condition]
            paired = conf[f"otel_arthur@{condition}"]["added_paired_median_us"]
            row(f"1 added per call: (b) OpenLLMetry + ArthurSpanExporter, {name}",
                f"{_us(b['added_median_us'])} / p99 {_us(b['added_p99_us'])} (paired {_us(paired)})",
                f"(a) at 50 ms {_us(a50)}",
                _fraction(b["fraction_of_a50"]), "≤ 1/200 of (a)@50ms",
                b["fraction_of_a50"] is not None and b["fraction_of_a50"] <= 1 / 200)
        noise = cc["noise_none_round_median_spread_us"] / 2
        for condition, name in (("0ms", "Arthur 0 ms"), ("50ms", "Arthur 50 ms"), ("outage", "Arthur down")):
            share = cc["exporter_share"][condition]
            row(f"1 exporter's share (b)−(c), {name}: wall / CPU in the app's other threads (+ delivery process)",
                f"{_us(share['median_us'])} median, {_us(share['mean_us'])} mean / "
                f"{share['background_cpu_per_call_us']:.0f} µs CPU"
                f" (+ {share['delivery_process_cpu_per_call_us']:.0f} µs)",
                f"(c) adds {_us(conf['otel_noop']['added_median_us'])}; wall noise ±{noise:.0f} µs",
                "", "≤ 20 µs (judged on CPU)", share["background_cpu_per_call_us"] <= 20)
        share = cc["otlp_share"]
        row("1 for reference: (d) OTLPSpanExporter → sink in place of (b): wall / CPU off-thread",
            f"{_us(share['median_us'])} median, {_us(share['mean_us'])} mean / "
            f"{share['background_cpu_per_call_us']:.0f} µs CPU",
            f"(d) adds {_us(conf['otel_otlp']['added_median_us'])}")
    if not failed("ignored"):
        ig = results["ignored"]
        row("2 ignored (non-LLM) span through export()", f"{ig['ns_per_ignored_span']:.0f} ns",
            f"SDK create+end of that span {ig['ns_sdk_create_end_span']:.0f} ns",
            f"{ig['ns_per_ignored_span'] / ig['ns_sdk_create_end_span']:.3f}×", "≤ 1 µs",
            ig["ns_per_ignored_span"] <= 1000)
    if not failed("throughput"):
        tp = results["throughput"]
        row(f"3 export throughput, {tp['spans']:,} generation spans",
            f"{tp['arthur']['spans_per_s']:,.0f} spans/s delivered",
            f"OTLPSpanExporter → sink {tp['otlp']['spans_per_s']:,.0f} spans/s", f"{tp['ratio']:.2f}×", "≥ 1.0×",
            tp["ratio"] >= 1.0)
        row("3 records per Arthur request", f"{tp['records_per_request']:.0f}", "", "", "≥ 100",
            tp["records_per_request"] >= 100)
        row("3 exporter CPU per span (all its threads and its delivery process)",
            f"ArthurSpanExporter {tp['arthur']['cpu_us_per_span']:.0f} µs",
            f"OTLPSpanExporter {tp['otlp']['cpu_us_per_span']:.0f} µs", f"{tp['exporter_cpu_ratio']:.2f}× less")
        row("3 receiver CPU per span, on the same 2 cores",
            f"local Arthur {tp['arthur']['receiver_cpu_us_per_span']:.0f} µs",
            f"OTLP sink {tp['otlp']['receiver_cpu_us_per_span']:.0f} µs")
    if not failed("serve_ingest"):
        si = results["serve_ingest"]
        for traffic in ("generation", "mixed"):
            x = si["floor"][traffic]
            row(f"4 floor receiver (parse + plain dict + executemany): {traffic} traffic, 2 OTLP clients",
                f"{x['spans_per_s']:,.0f} spans/s, {x['cpu_us_per_span']:.1f} µs CPU/span",
                f"same clients → sink {si['serve'][traffic]['sink_spans_per_s']:,.0f} spans/s")
        for name, how in (("serve", "serve"), ("serve-2p", "serve --decode-processes 2")):
            for traffic in ("generation", "mixed"):
                x = si[name][traffic]
                cores = f", {x['serve_cpu_cores']:.2f} cores" if x.get("serve_cpu_cores") is not None else ""
                row(f"4 {how}: {traffic} traffic, 2 OTLP clients",
                    f"{x['generation_spans_per_s']:,.0f} gen spans/s ({x['spans_per_s']:,.0f} spans/s{cores})",
                    f"same clients → sink {x['sink_spans_per_s']:,.0f} spans/s",
                    f"{x['spans_per_s'] / x['sink_spans_per_s']:.2f}×" if x["sink_spans_per_s"] else "",
                    "≥ 20k gen spans/s" if traffic == "generation" else "",
                    x["generation_spans_per_s"] >= 20_000 if traffic == "generation" else None)
                ratio = x["spans_per_s"] / x["floor_spans_per_s"] if x["floor_spans_per_s"] else 0.0
                row(f"4 {how}: {traffic} traffic, against the floor receiver",
                    f"{x['spans_per_s']:,.0f} spans/s", f"floor {x['floor_spans_per_s']:,.0f} spans/s",
                    f"{ratio:.2f}×", "≥ 0.8×" if traffic == "generation" else "",
                    ratio >= 0.8 if traffic == "generation" else None)
                cpu = x["cpu_us_per_generation_span"]
                drained = x["drain_seconds_after"] is not None
                row(f"4 {how}: {traffic} traffic, serve's CPU per generation span incl. delivery",
                    "—" if cpu is None else f"{cpu:.0f} µs" + ("" if drained else " (spool not drained: partial)"),
                    "", "", "≤ 40 µs" if traffic == "generation" else "",
                    cpu is not None and drained and cpu <= 40 if traffic == "generation" else None)
    if not failed("outage"):
        o = results["outage"]
        row(f"5 serve RSS, Arthur down {o['outage_seconds']:.0f} s then back",
            f"{o['rss_growth_mb']:+.1f} MB (peak {o['rss_peak_mb']:.0f} MB)",
            f"RSS before the outage {o['rss_start_mb']:.0f} MB", "", "≤ +50 MB", o["rss_growth_mb"] <= 50)
        row("5 spool during the outage, then drained",
            f"peak {o['spool_peak_depth']:,} records → {o['spool_final_depth']:,} in {o['drain_seconds']:.0f} s",
            f"{o['sent_generation_spans']:,} sent", "", "grows, then 0",
            o["spool_peak_depth"] > 0 and o["spool_final_depth"] == 0)
    if not failed("startup"):
        st = results["startup"]
        bare, ours, arthurai = st["bare_sdk"], st["otel_arthur"], st["arthurai"]
        row("6 start-up: import otel_arthur + exporter", f"{ours['seconds_median']:.3f} s",
            f"bare opentelemetry-sdk {bare['seconds_median']:.3f} s", f"{st['added_seconds']:+.3f} s", "≤ +0.1 s",
            st["added_seconds"] <= 0.1)
        row("6 footprint: import otel_arthur + exporter", f"{ours['peak_rss_mb_median']:.1f} MB",
            f"bare opentelemetry-sdk {bare['peak_rss_mb_median']:.1f} MB", f"{st['added_rss_mb']:+.1f} MB",
            "≤ +20 MB", st["added_rss_mb"] <= 20)
        if arthurai["runs"]:
            row("6 for comparison: import arthurai",
                f"{arthurai['seconds_median']:.2f} s, {arthurai['peak_rss_mb_median']:.0f} MB",
                "bare opentelemetry-sdk",
                f"{st['arthurai_added_seconds']:+.2f} s, {st['arthurai_added_rss_mb']:+.0f} MB")
    if not failed("replicas"):
        import replicas_bench

        for measurement, result, baseline in replicas_bench.rows(results["replicas"]):
            row(measurement, result, baseline)
    if not failed("peer"):
        pe = results["peer"]
        serve, phoenix = pe["serve"], pe["phoenix"]
        def cpu(side: dict[str, Any], per: str) -> str:
            cpu_us = side["cpu_us_per_durable_span"]
            return "nothing stored" if cpu_us is None else f"{_us(cpu_us).lstrip('+')} CPU/{per} span"

        row(f"8 serve beside Arize Phoenix: generation traffic, 2 OTLP clients, {pe['seconds']} s",
            f"serve {serve['accepted_per_s']:,.0f} spans/s accepted (spooled), "
            f"{serve['stored_per_s']:,.0f}/s delivered to Arthur; {cpu(serve, 'accepted')}",
            "Phoenix skipped" if "skipped" in phoenix else
            f"Phoenix {phoenix['version']} {phoenix['accepted_per_s']:,.0f} spans/s accepted, "
            f"{phoenix['stored_per_s']:,.1f}/s stored; {cpu(phoenix, 'stored')}, "
            f"{phoenix['cpu_us_per_accepted_span']:,.0f} µs CPU/accepted span",
            "" if "skipped" in phoenix else f"{serve['accepted_per_s'] / phoenix['accepted_per_s']:.2f}× accepted")

        def kept(side: dict[str, Any]) -> str:
            x = side["sigint"]
            parts = f" (spool {x['spooled']:,} + delivered {x['delivered']:,})" if "spooled" in x else ""
            return (f"kept {x['kept']:,}{parts} of {x['accepted']:,} accepted, {x['lost']:,} lost"
                    + (", killed after waiting" if x["killed"] else ""))

        row("8 SIGINT under load: what each keeps", f"serve {kept(serve)}",
            "Phoenix skipped" if "skipped" in phoenix else f"Phoenix {kept(phoenix)}", "", "serve: 0 lost",
            serve["sigint"]["lost"] <= 0)
    return rows


def render(rows: list[dict[str, str]], markdown: bool = False) -> str:
    columns = ("measurement", "result", "baseline", "ratio", "target", "met")
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r[k] for k in columns) + " |" for r in rows]
        return "\n".join(lines)
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) if rows else len(k) for k in columns}
    lines = ["  ".join(k.ljust(widths[k]) for k in columns), "  ".join("-" * widths[k] for k in columns)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in columns) for r in rows]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, meaningless numbers")
    mode.add_argument("--long", action="store_true", help="the outage run lasts 10 minutes")
    parser.add_argument("--only", help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a size, e.g. --set throughput_spans=20000 (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "long" if args.long else "default"
    sizes = dict(SIZES[mode])
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in sizes:
            raise SystemExit(f"unknown size {name!r}; known: {', '.join(sizes)}")
        sizes[name] = type(sizes[name])(float(value)) if isinstance(sizes[name], (int, float)) else value
    sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"{stamp}.json", args.out / f"{stamp}-outage.png"
    results: dict[str, Any] = {
        "meta": {"timestamp": stamp, "mode": mode, "sizes": sizes, "machine": c.machine(),
                 "load_average_start": os.getloadavg(),
                 "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])},
    }
    started = time.monotonic()

    def run_section(section: str, bench: Bench) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {section} …", file=sys.stderr, flush=True)
        section_start = time.monotonic()
        try:
            results[section] = RUNNERS[section](bench)
        except Exception as exc:  # one section failing must not lose the others
            results[section] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(results[section]["traceback"], file=sys.stderr)
        results[section]["section_seconds"] = time.monotonic() - section_start

    with tempfile.TemporaryDirectory(prefix="otel-arthur-bench-") as work, Bench(sizes, Path(work)) as bench:
        bench.png_path = png_path
        chosen = [section for section in SECTIONS if section in sections]
        for section in SECTIONS:
            if section not in chosen:
                results[section] = {"skipped": "not selected (--only)"}
        if sizes["parallel"]:  # --quick: every section at once; the numbers mean nothing, the run is short
            threads = [threading.Thread(target=run_section, args=(section, bench)) for section in chosen]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for section in chosen:
                run_section(section, bench)
    results["meta"]["seconds"] = time.monotonic() - started
    results["meta"]["load_average_end"] = os.getloadavg()  # other work on the machine skews the timings
    rows = table(results)
    results["table"] = rows
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    machine = results["meta"]["machine"]
    print(f"\notel-arthur benchmarks ({mode}), {machine['nproc']} cores, {machine['cpu_model']}, "
          f"Python {machine['python']}, {results['meta']['seconds']:.0f} s, load average "
          f"{results['meta']['load_average_start'][0]:.2f} at the start\n")
    print(render(rows, args.markdown))
    print(f"\nraw figures: {json_path}")
    if png_path.exists():
        print(f"outage plot: {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
