"""Shared by the benchmark scripts: local servers as subprocesses, spans, RSS, statistics.

Every server a benchmark talks to runs in its own process on 127.0.0.1, so the process being
measured shares the machine with them (as it would with a real network peer) but not its GIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
BIN = Path(sys.executable).parent
OTEL_ARTHUR = str(BIN / "otel-arthur")
API_KEY = "local-arthur-api-key"

sys.path.insert(0, str(ROOT / "tests"))  # spanfixtures, arthurmodel: the recorded spans and the model shape


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A server subprocess, started and awaited until ``url + ready`` answers; always stopped."""

    def __init__(self, name: str, argv: Sequence[str], url: str, ready: str, log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.url, self.ready = name, list(argv), url, ready
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        cwd=ROOT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            try:
                if requests.get(self.url + self.ready, timeout=2).status_code < 500:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer within {timeout:.0f}s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(services: Sequence[Service], timeout: float = 60.0) -> None:
    """Start services at once (each takes a second or two to import its stack), then wait for each."""
    threads, errors = [], []

    def start(service: Service) -> None:
        try:
            service.start(timeout)
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    for service in services:
        threads.append(threading.Thread(target=start, args=(service,)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def local_arthur(log_dir: Path, db: Path, port: int | None = None, name: str = "local-arthur") -> Service:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    return Service(name, [OTEL_ARTHUR, "local-arthur", "--port", str(port), "--db", str(db)],
                   url, "/_local/stats", log_dir)


def local_openai(log_dir: Path) -> Service:
    port = free_port()
    return Service("local-openai", [OTEL_ARTHUR, "local-openai", "--port", str(port)],
                   f"http://127.0.0.1:{port}", "/v1/models", log_dir)


def otlp_sink(log_dir: Path, name: str = "otlp-sink") -> Service:
    port = free_port()
    return Service(name, [sys.executable, str(BENCH / "sink.py"), "--port", str(port)],
                   f"http://127.0.0.1:{port}", "/stats", log_dir)


def set_faults(arthur_url: str, **faults: Any) -> None:
    requests.post(f"{arthur_url}/_local/faults", json=faults, timeout=10).raise_for_status()


def arthur_stats(arthur_url: str) -> dict[str, Any]:
    return requests.get(f"{arthur_url}/_local/stats", timeout=30).json()


def inference_requests(stats: dict[str, Any]) -> int:
    """How many inferences POSTs the local Arthur answered (any status)."""
    return sum(sum(by_status.values()) for path, by_status in stats["requests"].items()
               if path.startswith("POST") and path.endswith("/inferences"))


def create_model(arthur_url: str) -> str:
    """A model holding every field, as ``create-model`` onboards it (raw HTTP: no arthurai import)."""
    from otel_arthur.fields import FIELDS

    body = {
        "partner_model_id": f"bench-{uuid.uuid4().hex[:12]}",
        "input_type": "NLP",
        "output_type": "TOKEN_SEQUENCE",
        "attributes": [{"name": name, "value_type": f.value_type, "stage": f.stage} for name, f in FIELDS.items()],
    }
    response = requests.post(f"{arthur_url}/api/v3/models", json=body, headers={"Authorization": API_KEY}, timeout=30)
    response.raise_for_status()
    return str(response.json()["id"])


def arthur_exporter(arthur_url: str, model_id: str, spool_dir: str | Path, bind_with: Sequence[Any] = (),
                    delivery: str | None = None) -> Any:
    """An ``ArthurSpanExporter`` to a model of a local Arthur, spooling in ``spool_dir``. ``bind_with``: spans whose
    first is exported and flushed at once, so the model is fetched and bound before anything is measured.
    ``delivery``: ``"thread"`` for a profile that drives the worker in this process; else ``ARTHUR_DELIVERY``'s."""
    from otel_arthur import ArthurSpanExporter

    exporter = ArthurSpanExporter(url=arthur_url, api_key=API_KEY, model_id=model_id, allow_insecure=True,
                                  spool_dir=str(spool_dir), delivery=delivery)
    if bind_with:
        exporter.export(bind_with[:1])
        exporter.force_flush(60_000)
    return exporter


@contextlib.contextmanager
def exporter_on_local_arthur(work: Path, bind_with: Sequence[Any],
                             delivery: str | None = None) -> Iterator[tuple[Service, Any]]:
    """A local Arthur (its log and database in ``work``), a model on it, and an exporter to that model, bound
    (``arthur_exporter``) and spooling in ``work/spool``; the caller shuts the exporter down."""
    with local_arthur(work, work / "arthur.sqlite3") as arthur:
        yield arthur, arthur_exporter(arthur.url, create_model(arthur.url), work / "spool", bind_with, delivery)


def _raise_priority() -> None:
    with contextlib.suppress(OSError):  # only where allowed (root); a smoke run is just slower without it
        os.nice(-5)


def run_worker(script: str, args: dict[str, Any], timeout: float = 900.0,
               env: dict[str, str] | None = None, priority: bool = False) -> dict[str, Any]:
    """Run ``benchmarks/<script> '<json args>'`` in a fresh interpreter; its last stdout line is JSON.

    ``priority``: ahead of the other processes for the CPU (``--quick`` runs sections at once; the
    longest worker goes first so the run is short).
    """
    completed = subprocess.run([sys.executable, str(BENCH / script), json.dumps(args)], capture_output=True,
                               text=True, timeout=timeout, cwd=ROOT, env=env,
                               preexec_fn=_raise_priority if priority else None)  # noqa: PLW1509
    if completed.returncode != 0:
        raise RuntimeError(f"{script} {args.get('config', '')} failed ({completed.returncode}):\n"
                           f"{completed.stderr[-4000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{script} printed no result:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
    return json.loads(lines[-1])


def run_workers_at_once(script: str, args_list: Sequence[dict[str, Any]], timeout: float = 900.0,
                        priority: bool = False) -> list[dict[str, Any]]:
    """``run_worker`` for each of ``args_list``, all at once; their results in order."""
    results: list[Any] = [None] * len(args_list)

    def run(i: int) -> None:
        try:
            results[i] = run_worker(script, args_list[i], timeout, priority=priority)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args_list))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def emit(result: dict[str, Any]) -> None:
    """A worker's answer: one JSON line, last on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# -- memory ---------------------------------------------------------------------------------------


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size from /proc, MiB; 0 when the process is gone."""
    return _status_kb(pid, "VmRSS") / 1024


def _status_kb(pid: int | str, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc (clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve --decode-processes`` runs its decoders as children)."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                queue.extend(int(child) for child in task.read_text().split())
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of a process and its descendants; those gone meanwhile are left out."""
    total = 0.0
    for member in _process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def live_threads_cpu_seconds(pid: int) -> float:
    """CPU of a process's running threads, to the nanosecond (``/proc/<pid>/task/*/schedstat``): a
    delivery process's work for a few hundred records is below ``cpu_seconds``' 10 ms tick. Threads
    that ended are not counted (the delivery process keeps its threads)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[0])
    return total / 1e9


def children_cpu_seconds() -> dict[int, float]:
    """``live_threads_cpu_seconds`` of each process this one started (and theirs) that still runs, by pid:
    the exporter's delivery process (``ARTHUR_DELIVERY=process``)."""
    cpu = {}
    for pid in _process_tree(os.getpid())[1:]:
        with contextlib.suppress(OSError):
            cpu[pid] = live_threads_cpu_seconds(pid)
    return cpu


def own_and_children_cpu() -> float:
    """CPU seconds of this process (all its threads, ``time.process_time``) and of the processes it started."""
    return time.process_time() + sum(children_cpu_seconds().values())


def tree_rss_mb(pid: int) -> float:
    return sum(rss_mb(member) for member in _process_tree(pid))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# -- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values), "p99": percentile(values, 99),
            "mean": statistics.fmean(values), "min": min(values), "max": max(values)}


# -- spans ----------------------------------------------------------------------------------------


def generation_templates() -> list[Any]:
    """The recorded generation spans Arthur accepts (tests/fixtures/spans), as ReadableSpans."""
    from spanfixtures import generation_spans

    return generation_spans()


def sdk_spans(count: int, generation_share: float = 1.0) -> Iterator[Any]:
    """Spans built by the real SDK (attributes in ``BoundedAttributes``), as a BatchSpanProcessor hands
    them to an exporter: recorded generation attributes, and HTTP-server-like spans for the rest."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    templates = generation_templates()
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    every = round(1 / generation_share) if generation_share else 0
    for i in range(count):
        if every and i % every == 0:
            template = templates[i % len(templates)]
            with tracer.start_as_current_span(template.name, kind=template.kind, attributes=dict(template.attributes)):
                pass
        else:
            with tracer.start_as_current_span("GET /api/items/{id}", attributes=NON_LLM_ATTRIBUTES):
                pass
        if len(memory.get_finished_spans()) >= 512:
            yield from memory.get_finished_spans()
            memory.clear()
    yield from memory.get_finished_spans()
    provider.shutdown()


NON_LLM_ATTRIBUTES = {
    "http.request.method": "GET",
    "http.route": "/api/items/{id}",
    "url.path": "/api/items/42",
    "http.response.status_code": 200,
    "server.address": "api.internal",
    "server.port": 8080,
    "network.protocol.version": "1.1",
    "user_agent.original": "python-requests/2.32",
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except FileNotFoundError:
        pass
    memory_kb = _status_meminfo("MemTotal")
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gb": round(memory_kb / 1024 / 1024, 1),
            "python": sys.version.split()[0], "platform": sys.platform}


def _status_meminfo(key: str) -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except FileNotFoundError:
        pass
    return 0.0
