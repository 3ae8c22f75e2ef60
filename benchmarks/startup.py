"""Measurement 6: start-up time and footprint of a fresh interpreter doing one thing.

    python                       -c pass                                           (reference)
    bare opentelemetry-sdk       TracerProvider + BatchSpanProcessor(ConsoleSpanExporter())
    otel_arthur                  import otel_arthur + TracerProvider + BatchSpanProcessor(ArthurSpanExporter(...))
    arthurai                     import arthurai (what the seed's callback handler needs)

Wall time from spawn to exit (median of ``runs``) and peak RSS (``VmHWM``, reported by the child).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SDK = ("from opentelemetry.sdk.trace import TracerProvider\n"
       "from opentelemetry.sdk.trace.export import BatchSpanProcessor, {exporter_import}\n"
       "{extra}"
       "provider = TracerProvider()\n"
       "provider.add_span_processor(BatchSpanProcessor({exporter}))\n")

SNIPPETS = {
    "python": "pass",
    "bare_sdk": SDK.format(exporter_import="ConsoleSpanExporter", extra="", exporter="ConsoleSpanExporter()"),
    "otel_arthur": SDK.format(
        exporter_import="ConsoleSpanExporter",
        extra="import otel_arthur\n",
        exporter="otel_arthur.ArthurSpanExporter(url='http://127.0.0.1:9', api_key='k', model_id='m',"
                 " allow_insecure=True, spool_dir={spool!r})",
    ),
    "arthurai": "import arthurai",
}


# The child reports its own peak RSS (VmHWM starts afresh at exec; ru_maxrss would count the forked parent).
_REPORT_PEAK = "\nimport sys\nsys.stdout.write([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"


def run_once(code: str) -> tuple[float, float]:
    """(seconds from spawn to exit, peak RSS in MiB) of ``python -c code``."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code + _REPORT_PEAK], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed: {completed.stderr[-2000:]}")
    peak_kb = float(completed.stdout.split("VmHWM:")[1].split()[0])
    return elapsed, peak_kb / 1024


def measure(runs: int, arthurai_runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in SNIPPETS}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as spool:
        for name in SNIPPETS:  # one untimed run each: bytecode caches and the page cache warm
            if name != "arthurai":
                run_once(SNIPPETS[name].format(spool=spool) if name == "otel_arthur" else SNIPPETS[name])
        for _ in range(runs):  # interleaved, so a busy moment hits every variant alike
            for name, code in SNIPPETS.items():
                if name == "arthurai" and len(samples[name]) >= arthurai_runs:
                    continue
                samples[name].append(run_once(code.format(spool=spool) if name == "otel_arthur" else code))
    for name, values in samples.items():  # arthurai_runs=0 leaves it unmeasured: None
        results[name] = {
            "runs": len(values),
            "seconds_median": statistics.median(v[0] for v in values) if values else None,
            "seconds_min": min(v[0] for v in values) if values else None,
            "peak_rss_mb_median": statistics.median(v[1] for v in values) if values else None,
        }
    base, ours, arthurai = results["bare_sdk"], results["otel_arthur"], results["arthurai"]
    results["added_seconds"] = ours["seconds_median"] - base["seconds_median"]
    results["added_rss_mb"] = ours["peak_rss_mb_median"] - base["peak_rss_mb_median"]
    results["arthurai_added_seconds"] = (arthurai["seconds_median"] - base["seconds_median"]
                                         if arthurai["runs"] else None)
    results["arthurai_added_rss_mb"] = (arthurai["peak_rss_mb_median"] - base["peak_rss_mb_median"]
                                        if arthurai["runs"] else None)
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5, 1), indent=2))
