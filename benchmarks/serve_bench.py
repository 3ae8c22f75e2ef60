"""Measurements 4 and 5: ``otel-arthur serve``'s ingest rate, and its memory while Arthur is down.

4. ingest: 2 load clients (``load_client.py``: OTLPSpanExporter's HTTP client, bodies pre-encoded)
   post protobuf batches of 512 as fast as they are answered, in step: to the do-nothing sink (the
   baseline), to the floor receiver (``floor_receiver.py``: parse, a plain dict per span, one
   ``executemany``), then to ``serve`` decoding in its own process (the default), then to ``serve
   --decode-processes 2``, each with the local Arthur up and delivering; generation-only traffic,
   then mixed traffic (1 generation span in 10). Spans/s = spans answered 2xx (durably spooled) / s.
   serve's CPU per generation span counts its processes from the phase's start until its spool is
   empty: accepting and delivering every record.
5. outage: ``serve`` in front of a local Arthur of its own, under steady traffic; RSS (from /proc)
   and spool depth (its /metrics) sampled every second: a warm-up with Arthur up, Arthur stopped
   for ``outage_seconds``, then started again with the traffic stopped, until the spool is empty.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common as c
import requests


def floor_service(bench: Any) -> c.Service:
    port = c.free_port()
    argv = [sys.executable, str(c.BENCH / "floor_receiver.py"), "--port", str(port),
            "--db", str(bench.work / f"floor-{port}.sqlite3")]
    return c.Service("floor-receiver", argv, f"http://127.0.0.1:{port}", "/stats", bench.logs)


def serve_available() -> str | None:
    """None when ``otel-arthur serve`` exists, else why not."""
    completed = subprocess.run([c.OTEL_ARTHUR, "serve", "--help"], capture_output=True, text=True, timeout=60)
    return None if completed.returncode == 0 else (completed.stderr.strip().splitlines() or ["no serve"])[-1]


def serve_service(bench: Any, model_id: str, arthur_url: str | None = None, *extra: str) -> c.Service:
    port = c.free_port()
    argv = [c.OTEL_ARTHUR, "serve", "--port", str(port), "--grpc-port", "0", "--url", arthur_url or bench.arthur.url,
            "--model-id", model_id, "--api-key", c.API_KEY, "--allow-insecure", "--spool-dir", bench.spool_dir(),
            *extra]
    return c.Service("serve", argv, f"http://127.0.0.1:{port}", "/readyz", bench.logs)


# serve as measured: decoding in the serving process (the default), and in one process per core.
SERVE_VARIANTS = {"serve": (), "serve-2p": ("--decode-processes", "2")}


def metric(url: str, name: str) -> float | None:
    """One sample of serve's /metrics (the first series of that name)."""
    try:
        text = requests.get(url + "/metrics", timeout=5).text
    except requests.RequestException:
        return None
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def _clients(phases: list[dict[str, Any]], count: int, timeout: float, bodies: int) -> list[list[dict[str, Any]]]:
    """Run ``count`` load clients on the same schedule of phases; per client, its phase results."""
    args = [{"phases": phases, "bodies": bodies}] * count
    return [result["phases"] for result in c.run_workers_at_once("load_client.py", args, timeout=timeout)]


def _rate(phase_results: list[dict[str, Any]], key: str) -> float:
    """Sum over clients of what each had answered, over the longest client's time."""
    return sum(r[key] for r in phase_results) / max(r["seconds"] for r in phase_results)


def ingest(bench: Any) -> dict[str, Any]:
    missing = serve_available()
    if missing:
        return {"skipped": f"otel-arthur serve is not available: {missing}"}
    seconds = bench.sizes["ingest_seconds"]
    model_id = c.create_model(bench.arthur.url)
    out: dict[str, Any] = {"clients": 2, "seconds": seconds, "batch": 512}
    with contextlib.ExitStack() as services:
        floor = services.enter_context(floor_service(bench))
        serves = {name: services.enter_context(serve_service(bench, model_id, None, *extra))
                  for name, extra in SERVE_VARIANTS.items()}
        for traffic in ("generation", "mixed"):
            # The sink, the floor, then each serve; a serve's spool drained before the next phase, so
            # one serve still delivering cannot take the CPU the next one is measured with.
            sink = _phase(bench, {"url": bench.sink.url, "traffic": traffic, "seconds": seconds})
            before = c.cpu_seconds(floor.pid)
            floored = _phase(bench, {"url": floor.url, "traffic": traffic, "seconds": seconds})
            floor_spans = sum(r["spans"] for r in floored)
            out.setdefault("floor", {})[traffic] = {
                "spans_per_s": _rate(floored, "spans"), "generation_spans_per_s": _rate(floored, "generation_spans"),
                "cpu_us_per_span": (c.cpu_seconds(floor.pid) - before) / floor_spans * 1e6 if floor_spans else None,
                "failed_requests": sum(r["failed_requests"] for r in floored), "clients": floored,
            }
            for name, serve in serves.items():
                before = c.tree_cpu_seconds(serve.pid)
                ours = _phase(bench, {"url": serve.url, "traffic": traffic, "seconds": seconds})
                busy = max(r["seconds"] for r in ours)
                cores = (c.tree_cpu_seconds(serve.pid) - before) / busy  # includes its start-up wait, ~0
                drained = _drain(serve.url, bench.sizes["drain_timeout"])
                generations = sum(r["generation_spans"] for r in ours)
                # Until drained: every record accepted in the phase also delivered (the polls of /metrics add ~0)
                cpu_until_drained = c.tree_cpu_seconds(serve.pid) - before
                out.setdefault(name, {"argv_extra": list(SERVE_VARIANTS[name])})[traffic] = {
                    "spans_per_s": _rate(ours, "spans"), "generation_spans_per_s": _rate(ours, "generation_spans"),
                    "sink_spans_per_s": _rate(sink, "spans"),
                    "floor_spans_per_s": out["floor"][traffic]["spans_per_s"],
                    "failed_requests": sum(r["failed_requests"] for r in ours),
                    "serve_cpu_cores": cores, "drain_seconds_after": drained,
                    "cpu_us_per_generation_span": cpu_until_drained / generations * 1e6 if generations else None,
                    "body_bytes": ours[0]["body_bytes"], "clients": ours, "sink_clients": sink,
                }
        for name, serve in serves.items():
            out[name]["rss_mb"] = c.tree_rss_mb(serve.pid)
            out[name]["delivered"] = metric(serve.url, "otel_arthur_records_delivered_total")
    return out


def _phase(bench: Any, phase: dict[str, Any]) -> list[dict[str, Any]]:
    """One phase from 2 clients started together; per client, what it had answered."""
    delay = bench.sizes["client_start_delay"]
    phase = {**phase, "start_at": time.time() + delay}
    return [client[0] for client in _clients([phase], 2, timeout=delay + phase["seconds"] + 120,
                                             bodies=bench.sizes["client_bodies"])]


def _drain(url: str, timeout: float) -> float | None:
    """Seconds until serve's spool is empty; None if it is not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if metric(url, "otel_arthur_spool_depth_records") == 0:
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def outage(bench: Any) -> dict[str, Any]:
    missing = serve_available()
    if missing:
        return {"skipped": f"otel-arthur serve is not available: {missing}"}
    s = bench.sizes
    arthur = bench.arthur_outage  # its own local Arthur: stopping it disturbs no other measurement
    model_id = c.create_model(arthur.url)
    warmup = min(10.0, s["outage_seconds"] / 2)
    samples: list[dict[str, float]] = []
    marks: dict[str, float] = {}
    with serve_service(bench, model_id, arthur.url) as serve:
        spool = Path(serve.argv[serve.argv.index("--spool-dir") + 1])
        t0 = time.monotonic()
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                now = time.monotonic() - t0
                depth = metric(serve.url, "otel_arthur_spool_depth_records")
                samples.append({"t": now, "rss_mb": c.rss_mb(serve.pid),
                                "spool_depth": depth if depth is not None else -1,
                                "spool_mb": c.directory_bytes(spool) / 2**20})
                stop_sampling.wait(max(0.0, 1.0 - (time.monotonic() - t0 - now)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # Steady traffic from one client through the warm-up and the outage.
        start_at = time.time() + s["client_start_delay"]
        phase = {"label": "steady", "url": serve.url, "traffic": "generation", "rate": s["outage_rate"],
                 "seconds": warmup + s["outage_seconds"], "start_at": start_at}
        client: list[Any] = []
        load = threading.Thread(target=lambda: client.extend(
            _clients([phase], 1, timeout=phase["seconds"] + s["client_start_delay"] + 120,
                     bodies=s["client_bodies"])[0]))
        load.start()
        time.sleep(max(0.0, start_at + warmup - time.time()))
        marks["outage_start"] = time.monotonic() - t0
        arthur.stop()
        load.join()
        marks["traffic_stop"] = time.monotonic() - t0
        arthur.start()
        marks["outage_end"] = time.monotonic() - t0
        deadline = time.monotonic() + s["drain_timeout"]
        while time.monotonic() < deadline:
            if metric(serve.url, "otel_arthur_spool_depth_records") == 0:
                break
            time.sleep(0.5)
        marks["drained"] = time.monotonic() - t0
        time.sleep(s["after_drain_seconds"])  # a few samples after the drain
        stop_sampling.set()
        sampler.join()
        delivered = metric(serve.url, "otel_arthur_records_delivered_total")
    before = [x["rss_mb"] for x in samples if x["t"] <= marks["outage_start"]]
    after = [x["rss_mb"] for x in samples if x["t"] > marks["outage_start"]]
    depths = [x["spool_depth"] for x in samples]
    sent = client[0] if client else {}
    result = {
        "outage_seconds": marks["outage_end"] - marks["outage_start"], "rate": s["outage_rate"], "marks": marks,
        "rss_start_mb": before[-1] if before else samples[0]["rss_mb"], "rss_peak_mb": max(after or [0]),
        "spool_peak_depth": int(max(depths)), "spool_final_depth": int(depths[-1]),
        "spool_peak_mb": max(x["spool_mb"] for x in samples),
        "drain_seconds": marks["drained"] - marks["outage_end"],
        "sent_generation_spans": sent.get("generation_spans", 0), "failed_requests": sent.get("failed_requests"),
        "delivered": delivered, "stored_in_arthur": c.arthur_stats(arthur.url)["by_model"].get(model_id, {}).get(
            "inferences", 0),
        "samples": samples,
    }
    result["rss_growth_mb"] = result["rss_peak_mb"] - result["rss_start_mb"]
    png = getattr(bench, "png_path", None)
    if png is not None:
        plot(result, Path(png))
        result["png"] = str(png)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x["t"] for x in result["samples"]]
    fig, rss_axis = plt.subplots(figsize=(9, 4.5), dpi=110)
    rss_axis.plot(t, [x["rss_mb"] for x in result["samples"]], color="tab:blue", label="serve RSS (MB)")
    rss_axis.set_xlabel("seconds")
    rss_axis.set_ylabel("RSS (MB)", color="tab:blue")
    top = max(x["rss_mb"] for x in result["samples"])
    rss_axis.set_ylim(0, max(top * 1.3, result["rss_start_mb"] + 60))
    depth_axis = rss_axis.twinx()
    depth_axis.plot(t, [max(0, x["spool_depth"]) for x in result["samples"]], color="tab:orange",
                    label="spool depth (records)")
    depth_axis.set_ylabel("spool depth (records)", color="tab:orange")
    depth_axis.set_ylim(bottom=0)
    marks = result["marks"]
    rss_axis.axvspan(marks["outage_start"], marks["outage_end"], color="tab:red", alpha=0.1, label="Arthur down")
    rss_axis.axhline(result["rss_start_mb"] + 50, color="tab:blue", linestyle=":", linewidth=1,
                     label="target: +50 MB")
    lines = rss_axis.get_legend_handles_labels()
    more = depth_axis.get_legend_handles_labels()
    rss_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    rss_axis.set_title(f"otel-arthur serve: {result['rate']} generation spans/s, Arthur down "
                       f"{result['outage_seconds']:.0f} s, then back until the spool drained", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    print("run through benchmarks/run.py", file=sys.stderr)
