"""The benchmark harness runs end to end (``--quick``) and writes every figure it promises.

Behaviour only: the numbers of a quick run mean nothing and are not looked at.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "meta": {"timestamp", "mode", "sizes", "machine", "seconds"},
    "caller_cost": {"configurations", "b_vs_a50", "exporter_share", "otlp_share", "seed_50ms_added_median_us",
                    "noise_none_round_median_spread_us", "exporter_runs"},
    "ignored": {"ns_per_ignored_span", "ns_per_span_noop_exporter", "ns_sdk_create_end_span"},
    "throughput": {"arthur", "otlp", "ratio", "records_per_request"},
    "serve_ingest": {"serve", "serve-2p", "floor"},
    "outage": {"rss_start_mb", "rss_peak_mb", "rss_growth_mb", "spool_peak_depth", "spool_final_depth",
               "drain_seconds", "samples", "png"},
    "startup": {"python", "bare_sdk", "otel_arthur", "arthurai", "added_seconds", "added_rss_mb"},
    "replicas": {"by_replicas", "clients_per_replica", "cores"},
    "peer": {"serve", "phoenix"},
}
# A quick run took 107 s on this 2-core machine shared with six other test runs (replicas section
# included): twice that, so a busy machine fails it only when the harness really hangs.
QUICK_RUN_SECONDS = 230
CONFIGURATIONS = {"none", "otel_noop", "otel_otlp", "seed@0ms", "seed@50ms", "otel_arthur@0ms",
                  "otel_arthur@50ms", "otel_arthur@outage"}


@pytest.mark.timeout(QUICK_RUN_SECONDS + 10)
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--set", "arthurai_runs=0",
         "--set", "phoenix=0", "--out", str(tmp_path)],  # Phoenix's install is left to real runs
        capture_output=True, text=True, timeout=QUICK_RUN_SECONDS, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    [path] = tmp_path.glob("*.json")
    results = json.loads(path.read_text(encoding="utf-8"))

    for section, keys in EXPECTED.items():
        assert "error" not in results[section], results[section].get("traceback")
        assert keys <= set(results[section]), (section, keys - set(results[section]))
    assert set(results["caller_cost"]["configurations"]) == CONFIGURATIONS
    for configuration in results["caller_cost"]["configurations"].values():
        assert {"median_us", "p99_us", "added_median_us", "added_p99_us"} <= set(configuration)
    assert set(results["caller_cost"]["b_vs_a50"]) == {"0ms", "50ms", "outage"}
    for variant in ("serve", "serve-2p"):
        assert {"generation", "mixed", "rss_mb", "delivered"} <= set(results["serve_ingest"][variant])
        for traffic in ("generation", "mixed"):
            measured = results["serve_ingest"][variant][traffic]
            assert measured["floor_spans_per_s"] > 0
            assert measured["cpu_us_per_generation_span"] > 0
    for traffic in ("generation", "mixed"):
        assert results["serve_ingest"]["floor"][traffic]["spans_per_s"] > 0
    serve_beside_phoenix = results["peer"]["serve"]
    assert serve_beside_phoenix["accepted_per_s"] > 0
    # SIGINT under load: every span serve answered 2xx is delivered or still in its spool
    assert serve_beside_phoenix["sigint"]["accepted"] > 0 and serve_beside_phoenix["sigint"]["lost"] <= 0
    assert results["peer"]["phoenix"] == {"skipped": "phoenix=0"}
    assert set(results["replicas"]["by_replicas"]) == {"1", "2", "3"}
    for run in results["replicas"]["by_replicas"].values():  # every accepted record reached Arthur
        assert run["all_drained"] and run["stored_in_arthur"] == run["accepted"] > 0
    assert results["throughput"]["arthur"]["delivered"] == results["throughput"]["spans"]
    assert results["throughput"]["otlp"]["received"] == results["throughput"]["spans"]
    assert Path(results["outage"]["png"]).stat().st_size > 0
    assert results["table"] and {"measurement", "result", "baseline", "ratio", "target", "met"} == set(
        results["table"][0])
    assert "measurement" in completed.stdout  # the table was printed
