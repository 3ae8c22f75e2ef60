"""Measurement 7: capacity of 1, 2 and 3 independent ``otel-arthur serve`` replicas (docs/scaling.md).

Each replica is its own process with its own spool, as behind the Collector's ``loadbalancing``
exporter; all deliver to the one local Arthur. The load is spread evenly: the same number of load
clients (``load_client.py``, 512-span protobuf batches of generation spans, as fast as answered)
posts to each replica, all starting together. Per replica count:

- accepted: generation spans answered 2xx (durably spooled) / the load's seconds;
- delivered: records Arthur stored / the seconds from the load's start until every spool is empty;
- CPU per span: CPU of every replica (process tree) from the load's start to the last drain / spans.

Everything shares this machine's cores (the replicas, the clients and the local Arthur), so the
total stops growing once they are busy: the per-span CPU is what carries over to a real cluster.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import _common as c
import serve_bench

REPLICA_COUNTS = (1, 2, 3)


def measure(bench: Any) -> dict[str, Any]:
    missing = serve_bench.serve_available()
    if missing:
        return {"skipped": f"otel-arthur serve is not available: {missing}"}
    s = bench.sizes
    out: dict[str, Any] = {"seconds": s["replicas_seconds"], "clients_per_replica": s["replicas_clients"],
                           "batch": 512, "cores": c.machine()["nproc"], "by_replicas": {}}
    for count in REPLICA_COUNTS:
        out["by_replicas"][str(count)] = _run(bench, count)
    return out


def _run(bench: Any, count: int) -> dict[str, Any]:
    s = bench.sizes
    model_id = c.create_model(bench.arthur.url)  # a model per run: Arthur's count for it is this run's
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(serve_bench.serve_service(bench, model_id)) for _ in range(count)]
        cpu_before = [c.tree_cpu_seconds(replica.pid) for replica in replicas]
        start_at = time.time() + s["client_start_delay"]
        clients = [{"phases": [{"url": replica.url, "traffic": "generation", "seconds": s["replicas_seconds"],
                                "start_at": start_at}], "bodies": s["client_bodies"]}
                   for replica in replicas for _ in range(s["replicas_clients"])]
        results = [r["phases"][0] for r in c.run_workers_at_once(
            "load_client.py", clients, timeout=s["client_start_delay"] + s["replicas_seconds"] + 120)]
        drained = [serve_bench._drain(replica.url, s["drain_timeout"]) for replica in replicas]
        all_delivered_at = time.time()
        cpu = sum(c.tree_cpu_seconds(replica.pid) - before for replica, before in zip(replicas, cpu_before))
    clients_each = s["replicas_clients"]
    accepted = sum(r["generation_spans"] for r in results)
    load_seconds = max(r["seconds"] for r in results)
    stored = c.arthur_stats(bench.arthur.url)["by_model"].get(model_id, {}).get("inferences", 0)
    busy_seconds = all_delivered_at - start_at
    return {
        "replicas": count, "accepted": accepted, "stored_in_arthur": stored,
        "failed_requests": sum(r["failed_requests"] for r in results),
        "accepted_per_s": accepted / load_seconds,
        "delivered_per_s": stored / busy_seconds,
        "seconds_to_last_delivery": busy_seconds,
        "all_drained": all(d is not None for d in drained),
        "serve_cpu_us_per_span": cpu / accepted * 1e6 if accepted else None,
        "serve_cores": cpu / busy_seconds,
        "per_replica_accepted": [sum(r["generation_spans"] for r in results[i * clients_each:(i + 1) * clients_each])
                                 for i in range(count)],
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measurement, result, baseline) per replica count, for run.py's table."""
    out = []
    for count, x in result["by_replicas"].items():
        cpu = f"{x['serve_cpu_us_per_span']:.0f} µs CPU/span" if x["serve_cpu_us_per_span"] else "no spans"
        out.append((f"7 {count} serve replica{'s' if count != '1' else ''}, "
                    f"{result['clients_per_replica']} clients each",
                    f"{x['accepted_per_s']:,.0f} accepted/s, {x['delivered_per_s']:,.0f} delivered/s, {cpu}",
                    f"{x['serve_cores']:.2f} cores of {result['cores']}; "
                    f"{x['stored_in_arthur']:,} of {x['accepted']:,} stored"))
    return out
