"""Measurement 7: ``otel-arthur serve`` beside a real peer, Arize Phoenix (``phoenix serve``, OTLP/HTTP on SQLite).

Phoenix is installed on demand into its own environment under ``benchmarks/.cache/`` (git-ignored,
reused by later runs; never a dependency of otel-arthur) with ``uv venv`` + ``uv pip install``.
Each phase runs a fresh instance (serve: a new spool, the local Arthur up and delivering; Phoenix: a
new working directory, so a new SQLite database), driven by the same 2 load clients with the same
generation bodies (fresh ids per request) as measurement 4, serve and Phoenix interleaved
(serve, Phoenix, Phoenix, serve, … over ``peer_rounds``):

- ``peer_seconds`` flat out: spans answered 2xx per second (**accepted**), and what was kept by the
  end of that window (**stored**: Phoenix's rows in its ``spans`` table, read from its database;
  serve's records delivered to Arthur); the process's CPU over the window per span made durable
  (Phoenix: per stored span; serve, which spools every span before it answers: per accepted span,
  its delivery in the window included).
- then, the clients still sending, SIGINT; once the process has exited: what it kept of all it had
  accepted (serve: records left in its spool + delivered to Arthur; Phoenix: rows in ``spans``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common as c
import serve_bench

PHOENIX_VERSION = "20.26.1"
CACHE = c.BENCH / ".cache"
INSTALLED_MARK = "installed"  # written once the install has finished: a broken install is redone
CLIENT_TIMEOUT = 30.0  # load_client retries one request this long: a phase can run over by as much
SIGINT_AFTER = 1.0  # seconds into the stop phase: the clients are sending
FIRST_ANSWER_WAIT = 120.0  # serve is stopped once it has spooled something, at the latest this long after
EXIT_WAIT = 90.0  # serve drains for up to 20 s after SIGINT by default; Phoenix has no bound of its own


def install_phoenix() -> Path:
    """The environment holding ``arize-phoenix==PHOENIX_VERSION``, installed on first use."""
    venv = CACHE / f"arize-phoenix-{PHOENIX_VERSION}"
    if (venv / INSTALLED_MARK).exists():
        return venv
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is not on PATH: it installs Phoenix into its own environment")
    shutil.rmtree(venv, ignore_errors=True)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for argv in ([uv, "venv", "--quiet", "--python", python, str(venv)],
                 [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                  f"arize-phoenix=={PHOENIX_VERSION}"]):
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{completed.stderr[-3000:]}")
    (venv / INSTALLED_MARK).write_text(PHOENIX_VERSION + "\n", encoding="utf-8")
    return venv


class Phoenix(c.Service):
    """``phoenix serve`` on free ports, its SQLite database in a working directory of its own."""

    def __init__(self, venv: Path, working_dir: Path, log_dir: Path) -> None:
        port, grpc_port = c.free_port(), c.free_port()
        working_dir.mkdir(parents=True)
        self.database = working_dir / "phoenix.db"
        env = os.environ | {"PHOENIX_WORKING_DIR": str(working_dir), "PHOENIX_HOST": "127.0.0.1",
                            "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(grpc_port),
                            # offline and quiet: no usage telemetry, no downloads at start
                            "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false"}
        super().__init__("phoenix", [str(venv / "bin" / "phoenix"), "serve"], f"http://127.0.0.1:{port}",
                         "/healthz", log_dir, env=env)

    def stored(self) -> int:
        """Rows in Phoenix's ``spans`` table: spans it has written."""
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)) as db:
            return int(db.execute("SELECT count(*) FROM spans").fetchone()[0])


def serve_kept(spool_dir: Path) -> dict[str, int]:
    """What serve's spool holds once serve has exited: records waiting and dead letters."""
    kept = {"spooled": 0, "dead_letters": 0}
    for path in spool_dir.rglob("spool.sqlite3"):
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            kept["spooled"] += db.execute("SELECT count(*) FROM records").fetchone()[0]
            kept["dead_letters"] += db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return kept


def interrupt(service: c.Service, timeout: float = EXIT_WAIT) -> dict[str, Any]:
    """SIGINT, then wait for the process to exit (killed after ``timeout``): how long, and how it ended."""
    assert service.process is not None
    started = time.monotonic()
    service.process.send_signal(signal.SIGINT)
    try:
        returncode = service.process.wait(timeout)
        killed = False
    except subprocess.TimeoutExpired:
        service.process.kill()
        returncode = service.process.wait(10)
        killed = True
    return {"exit_seconds": time.monotonic() - started, "returncode": returncode, "killed": killed}


def _load(bench: Any, url: str, seconds: float) -> tuple[threading.Thread, list[Any], float, float]:
    """2 clients in the background: a measured phase of ``seconds``, then the stop phase.

    The thread, the list it fills with each client's phase results, when the phase starts and ends (epoch s).
    """
    s = bench.sizes
    start_at = time.time() + s["client_start_delay"]
    stop_at = start_at + seconds
    phases = [{"label": "measured", "url": url, "traffic": "generation", "seconds": seconds, "start_at": start_at},
              {"label": "stop", "url": url, "traffic": "generation", "seconds": s["peer_stop_seconds"],
               "start_at": stop_at}]
    results: list[Any] = []
    args = [{"phases": phases, "bodies": s["client_bodies"]}] * 2
    budget = s["client_start_delay"] + seconds + s["peer_stop_seconds"] + 4 * CLIENT_TIMEOUT + 120
    thread = threading.Thread(target=lambda: results.extend(
        r["phases"] for r in c.run_workers_at_once("load_client.py", args, timeout=budget)))
    thread.start()
    return thread, results, start_at, stop_at


def _sleep_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))


def _accepted(results: list[Any]) -> tuple[int, int, float]:
    """(spans accepted in the measured phase, in both phases, the measured phase's longest client seconds).

    A client's measured phase ends with its last answer: later than the window when a request waits out
    the exporter's retries (Phoenix's 503 when its queue is full), so accepted/s is over the clients' time,
    stored/s and CPU over the window.
    """
    measured = sum(client[0]["spans"] for client in results)
    return measured, measured + sum(client[1]["spans"] for client in results), max(
        client[0]["seconds"] for client in results)


def _delivered(bench: Any, model_id: str) -> int:
    """Records of ``model_id`` the local Arthur has stored."""
    return int(c.arthur_stats(bench.arthur.url)["by_model"].get(model_id, {}).get("inferences", 0))


def _serve_phase(bench: Any, model_id: str) -> dict[str, Any]:
    seconds = bench.sizes["peer_seconds"]
    serve = serve_bench.serve_service(bench, model_id)
    spool_dir = Path(serve.argv[serve.argv.index("--spool-dir") + 1])
    try:
        serve.start()
        delivered_before = _delivered(bench, model_id)
        thread, results, start_at, stop_at = _load(bench, serve.url, seconds)
        _sleep_until(start_at)
        cpu_start = c.tree_cpu_seconds(serve.pid)
        _sleep_until(stop_at)
        cpu = c.tree_cpu_seconds(serve.pid) - cpu_start
        delivered_in_window = _delivered(bench, model_id) - delivered_before
        _sleep_until(stop_at + SIGINT_AFTER)
        # Under load means after a first answer: on a busy machine (--quick) the clients can start late.
        deadline = time.monotonic() + FIRST_ANSWER_WAIT
        while not serve_bench.metric(serve.url, "otel_arthur_records_spooled_total") and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped = interrupt(serve)
        thread.join()
    finally:
        serve.stop()
    measured, accepted, busy = _accepted(results)
    kept = serve_kept(spool_dir)
    delivered = _delivered(bench, model_id) - delivered_before
    return {"accepted": measured, "client_seconds": busy, "stored": delivered_in_window, "window_seconds": seconds,
            "cpu_seconds": cpu, "durable": measured,  # spooled before the answer
            "sigint": stopped | kept | {"accepted": accepted, "delivered": delivered,
                                        "kept": kept["spooled"] + kept["dead_letters"] + delivered},
            "clients": results}


def _phoenix_phase(bench: Any, venv: Path, number: int) -> dict[str, Any]:
    seconds = bench.sizes["peer_seconds"]
    phoenix = Phoenix(venv, bench.work / f"phoenix-{number}", bench.logs)
    try:
        phoenix.start(timeout=bench.sizes["phoenix_start_timeout"])
        thread, results, start_at, stop_at = _load(bench, phoenix.url, seconds)
        _sleep_until(start_at)
        cpu_start, stored_start = c.tree_cpu_seconds(phoenix.pid), phoenix.stored()
        _sleep_until(stop_at)
        cpu = c.tree_cpu_seconds(phoenix.pid) - cpu_start
        stored_in_window = phoenix.stored() - stored_start
        _sleep_until(stop_at + SIGINT_AFTER)
        stopped = interrupt(phoenix)
        thread.join()
    finally:
        phoenix.stop()
    measured, accepted, busy = _accepted(results)
    stored = phoenix.stored()
    return {"accepted": measured, "client_seconds": busy, "stored": stored_in_window, "window_seconds": seconds,
            "cpu_seconds": cpu, "durable": stored_in_window,
            "sigint": stopped | {"accepted": accepted, "kept": stored},
            "clients": results}


def _pooled(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' counts and seconds summed into rates, each round kept.

    ``stored``: serve's records delivered to Arthur, Phoenix's rows in ``spans``; ``durable``: what would
    outlive a crash (serve spools every span before it answers), what the CPU is counted per.
    """
    def total(key: str) -> float:
        return sum(p[key] for p in phases)

    counts = [key for key, value in phases[0]["sigint"].items() if type(value) is int and key != "returncode"]
    sigint: dict[str, Any] = {key: sum(p["sigint"][key] for p in phases) for key in counts}
    sigint["lost"] = sigint["accepted"] - sigint["kept"]
    sigint["killed"] = any(p["sigint"]["killed"] for p in phases)
    sigint["exit_seconds_max"] = max(p["sigint"]["exit_seconds"] for p in phases)
    return {"accepted_per_s": total("accepted") / total("client_seconds"),
            "stored_per_s": total("stored") / total("window_seconds"),
            "cpu_us_per_durable_span": total("cpu_seconds") / total("durable") * 1e6 if total("durable") else None,
            "cpu_us_per_accepted_span": total("cpu_seconds") / total("accepted") * 1e6 if total("accepted") else None,
            "sigint": sigint, "rounds": phases}


def compare(bench: Any) -> dict[str, Any]:
    missing = serve_bench.serve_available()
    if missing:
        return {"skipped": f"otel-arthur serve is not available: {missing}"}
    s = bench.sizes
    model_id = c.create_model(bench.arthur.url)
    venv = install_phoenix() if s["phoenix"] else None
    serve_rounds: list[dict[str, Any]] = []
    phoenix_rounds: list[dict[str, Any]] = []
    for round_number in range(s["peer_rounds"]):
        order = ("serve", "phoenix") if round_number % 2 == 0 else ("phoenix", "serve")
        for who in order:
            if who == "serve":
                serve_rounds.append(_serve_phase(bench, model_id))
            elif venv is not None:
                phoenix_rounds.append(_phoenix_phase(bench, venv, round_number))
    out: dict[str, Any] = {"clients": 2, "seconds": s["peer_seconds"], "batch": 512, "serve": _pooled(serve_rounds)}
    if venv is not None:
        out["phoenix"] = _pooled(phoenix_rounds) | {"version": PHOENIX_VERSION}
    else:
        out["phoenix"] = {"skipped": "phoenix=0"}
    return out
