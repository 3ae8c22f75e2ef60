"""Measurement 1: wall time of the same ChatOpenAI turn on the caller's thread, per configuration.

    python benchmarks/caller_cost.py '{"configs": [{"config": "otel_arthur", "phases": [...]}], ...}'

Configurations:

    none         no telemetry
    seed         langchain_community's ArthurCallbackHandler (one synchronous POST per call)
    otel_arthur  OpenLLMetry + BatchSpanProcessor(ArthurSpanExporter())
    otel_noop    OpenLLMetry + BatchSpanProcessor(an exporter that does nothing)
    otel_otlp    OpenLLMetry + BatchSpanProcessor(OTLPSpanExporter()) to a do-nothing sink (for reference)

OpenLLMetry cannot instrument again after ``uninstrument()``, so the harness gives each
configuration its own interpreter; ``--quick`` runs them all in one (``none`` and ``seed`` first,
before OpenLLMetry is switched on). A configuration may have phases, each against another Arthur
(``arthur_url``: one answering at once, one 50 ms late, one where nothing listens); a phase gets its
own exporter and span processor, flushed and shut down before the next phase starts.

Prints one JSON line: per configuration and phase, the wall time of each measured call (µs), the
CPU per call of the caller's thread, of all other threads together (span processor, exporter,
delivery on a thread) and of the processes it started (delivery processes), and what reached Arthur.
The threads' CPU counts until the measured calls' spans are exported, the processes' until they are
delivered (Arthur up): delivery lingers past the last call.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import API_KEY, arthur_exporter, children_cpu_seconds, emit  # noqa: E402

HISTORY = (
    ("system", "You are a helpful assistant. Answer in one short paragraph."),
    ("human", "What is a span in OpenTelemetry?"),
    ("ai", "A span is one timed operation inside a trace, with attributes and events."),
    ("human", "And how do spans become Arthur inference records?"),
)
BEFORE_INSTRUMENTATION = ("none", "seed")
# Arthur down: long enough for the delivery process to start and fail its first attempt.
OUTAGE_SETTLE_MS = 3_000


def thread_cpu_ns() -> dict[int, int]:
    """CPU time of each of this process's threads so far (ns, from /proc/self/task/*/schedstat)."""
    times = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat", encoding="ascii") as stat:
                times[thread.native_id] = int(stat.read().split()[0])
        except (FileNotFoundError, TypeError):
            pass
    return times


def measure(llm: Any, messages: list[Any], warmup: int, calls: int,
            settle: Callable[[], None] = lambda: None, exported: Callable[[], None] = lambda: None,
            delivered: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Wall time of each call on this (the caller's) thread; CPU of this thread, of the others and of the
    processes this one started (the exporter's delivery process).

    ``settle`` runs after the warm-up: one-off start-up work (binding the model, importing the HTTP
    client, starting the delivery process) then lands before the measured calls, not inside them.
    After them, outside the calls' times, the work their spans cause counts in full, whenever it
    happens: the threads' CPU is read once ``exported`` has exported them, the processes' once
    ``delivered`` has delivered them (waiting for that is the harness's, not the application's, work).
    """
    for _ in range(warmup):
        llm.invoke(messages)
    settle()
    # Every configuration alike: a previous phase's garbage is collected here, not in this window. A full
    # collection of this process's heap (LangChain, OpenAI, the SDK) takes 50-90 ms on the caller's thread:
    # in the phase after the first, one fell inside the window, every run (a call of ~88 ms).
    gc.collect()
    times_us: list[float] = []
    clock = time.perf_counter_ns
    threads_start, children_start = thread_cpu_ns(), children_cpu_seconds()
    wall_start = time.perf_counter()
    for _ in range(calls):
        start = clock()
        llm.invoke(messages)
        times_us.append((clock() - start) / 1000)
    wall = time.perf_counter() - wall_start
    exported()
    threads_end = thread_cpu_ns()
    delivered()
    children_end = children_cpu_seconds()
    caller = threading.main_thread().native_id
    background = sum(end - threads_start.get(tid, 0) for tid, end in threads_end.items() if tid != caller)
    return {"times_us": times_us, "wall_s": wall,
            "caller_thread_cpu_per_call_us": (threads_end[caller] - threads_start[caller]) / calls / 1000,
            "background_cpu_per_call_us": background / calls / 1000,
            "child_processes_cpu_per_call_us": sum(end - children_start.get(pid, 0)
                                                   for pid, end in children_end.items()) / calls * 1e6}


def make_exporter(config: str, phase: dict[str, Any], args: dict[str, Any]) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    if config == "otel_arthur":
        return arthur_exporter(phase["arthur_url"], phase["model_id"], phase["spool_dir"])
    if config == "otel_otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        return OTLPSpanExporter(endpoint=args["sink_url"] + "/v1/traces")

    class NoopExporter(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    return NoopExporter()


def steady_state(config: str, processor: Any, exporter: Any, phase: dict[str, Any]) -> Callable[[], None]:
    """After the warm-up: the warm-up's spans exported and, Arthur being up, delivered (the model bound);
    Arthur being down, the delivery process started and failed its first attempt (backing off)."""

    def settle() -> None:
        if processor is not None:
            processor.force_flush()
        if config == "otel_arthur":
            exporter.force_flush(OUTAGE_SETTLE_MS if phase.get("outage") else 60_000)

    return settle


def exported(processor: Any) -> Callable[[], None]:
    """After the measured calls: their spans exported."""
    return (lambda: None) if processor is None else processor.force_flush


def delivered(config: str, exporter: Any, phase: dict[str, Any]) -> Callable[[], None]:
    """After the measured calls' spans are exported: Arthur being up, delivered."""

    def drain() -> None:
        if config == "otel_arthur" and not phase.get("outage"):
            exporter.force_flush(60_000)

    return drain


def main() -> None:
    args = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.ERROR)  # an outage phase logs Arthur's state changes: not our output

    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    kinds = {"system": SystemMessage, "human": HumanMessage, "ai": AIMessage}
    messages = [kinds[role](text) for role, text in HISTORY]
    provider = None
    results = []
    for unit in args["configs"]:
        config = unit["config"]
        if config in BEFORE_INSTRUMENTATION and provider is not None:
            raise SystemExit(f"{config} must run before any OpenLLMetry configuration in one process")
        phases = []
        for phase in unit.get("phases") or [{"label": config}]:
            callbacks, processor, exporter = [], None, None
            if config == "seed":
                from arthurai import ArthurAI
                from langchain_community.callbacks.arthur_callback import (
                    ArthurCallbackHandler,
                )

                client = ArthurAI(url=phase["arthur_url"], access_key=API_KEY, allow_insecure=True)
                callbacks = [ArthurCallbackHandler(client.get_model(phase["model_id"]))]
            elif config.startswith("otel_"):
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                if provider is None:
                    from opentelemetry.instrumentation.langchain import (
                        LangchainInstrumentor,
                    )
                    from opentelemetry.sdk.resources import Resource
                    from opentelemetry.sdk.trace import TracerProvider

                    provider = TracerProvider(resource=Resource.create({"service.name": "bench-chat"}))
                    LangchainInstrumentor().instrument(tracer_provider=provider)
                exporter = make_exporter(config, phase, args)
                processor = BatchSpanProcessor(exporter, schedule_delay_millis=args["schedule_delay_ms"])
                provider.add_span_processor(processor)
            elif config != "none":
                raise SystemExit(f"unknown configuration {config!r}")
            llm = ChatOpenAI(base_url=args["openai_url"] + "/v1", api_key="unused", model="gpt-4o-mini",
                             temperature=0.1, max_retries=0, callbacks=callbacks)
            result = measure(llm, messages, args["warmup"], phase.get("calls", args["calls"]),
                             settle=steady_state(config, processor, exporter, phase),
                             exported=exported(processor), delivered=delivered(config, exporter, phase))
            result["label"] = phase["label"]
            if processor is not None:  # this phase's spans leave, and its processor stops, before the next phase
                processor.force_flush()
                if config == "otel_arthur":
                    if not phase.get("outage"):
                        exporter.force_flush(60_000)
                    stats = exporter.stats()
                    result["exporter"] = {"generation_spans": stats.generation_spans, "delivered": stats.delivered,
                                          "spool_depth": stats.spool_depth, "retried": stats.retried}
                start = time.perf_counter()
                processor.shutdown()
                result["shutdown_s"] = time.perf_counter() - start
            phases.append(result)
        results.append({"config": config, "phases": phases})
    emit({"results": results, "threads": sorted(t.name for t in threading.enumerate())})


if __name__ == "__main__":
    main()
