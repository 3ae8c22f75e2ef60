"""A busy app that forks, as Gunicorn, uWSGI, Celery prefork and ``multiprocessing`` do: for test_fork.py.

    python forking_app.py CHILDREN

Configured by environment only (``ARTHUR_*``). Threads export generation spans all along while the
main thread forks CHILDREN children, one every few milliseconds. Each child exports a few spans of its
own, flushes, shuts down and leaves with ``os._exit`` (0 when its export and flush succeeded). The
parent waits for each child until ``CHILD_TIMEOUT`` after its fork and kills the ones still running
(hung), then stops exporting, flushes, shuts down and prints one JSON line: how many children hung,
their exit codes, whether its own flush succeeded, and the partner id of every record it and its
children exported. It runs apart from the test, so the local Arthur's sockets are not forked too.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext

from otel_arthur import ArthurSpanExporter
from otel_arthur.mapping import partner_inference_id

SPANS_PER_CHILD = 3
SUBMITTERS = 4  # the parent's threads exporting while it forks
FORK_INTERVAL = 0.01  # seconds between forks
CHILD_TIMEOUT = 60.0  # seconds from its fork to its exit (flush and shutdown take 20 s each at most); longer hangs
CHILD_TRACE, PARENT_TRACE = 0xC0000, 0xA0000


def generation(trace_id: int, span_id: int) -> ReadableSpan:
    return ReadableSpan(name="chat", context=SpanContext(trace_id, span_id, False), start_time=1, end_time=2,
                        attributes={"gen_ai.operation.name": "chat",
                                    "gen_ai.input.messages": '[{"role": "user", "content": "hi"}]'})


def child_ids(index: int) -> list[str]:
    return [partner_inference_id(CHILD_TRACE + index, span_id) for span_id in range(1, SPANS_PER_CHILD + 1)]


def run_child(exporter: ArthurSpanExporter, index: int) -> int:
    spans = [generation(CHILD_TRACE + index, span_id) for span_id in range(1, SPANS_PER_CHILD + 1)]
    exported = exporter.export(spans) is SpanExportResult.SUCCESS
    flushed = exporter.force_flush(timeout_millis=20_000)
    exporter.shutdown(timeout_millis=20_000)
    return 0 if exported and flushed else 1


def fork_child(exporter: ArthurSpanExporter, index: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 2  # the child raised
    try:
        code = run_child(exporter, index)
    finally:
        os._exit(code)  # never back into the parent's code


def reap(children: dict[int, float]) -> tuple[list[int], int]:
    """Wait for each child until its deadline, killing the ones past it: (exit codes, how many hung)."""
    codes, hung = [], 0
    while children:
        for pid, deadline in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes.append(os.waitstatus_to_exitcode(status))
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung += 1
            else:
                continue
            del children[pid]
        time.sleep(0.02)
    return codes, hung


def main() -> int:
    count = int(sys.argv[1])
    exporter = ArthurSpanExporter()
    stop = threading.Event()
    exported: list[str] = []

    def submit(thread: int) -> None:
        for span_id in itertools.count(1):
            if stop.is_set():
                return
            if exporter.export([generation(PARENT_TRACE + thread, span_id)]) is SpanExportResult.SUCCESS:
                exported.append(partner_inference_id(PARENT_TRACE + thread, span_id))
            stop.wait(0.002)

    submitters = [threading.Thread(target=submit, args=(n,)) for n in range(SUBMITTERS)]
    for thread in submitters:
        thread.start()
    time.sleep(0.2)  # the worker is delivering
    children = {}
    for index in range(count):
        children[fork_child(exporter, index)] = time.monotonic() + CHILD_TIMEOUT
        time.sleep(FORK_INTERVAL)
    stop.set()
    for thread in submitters:
        thread.join()
    codes, hung = reap(children)
    flushed = exporter.force_flush(timeout_millis=60_000)
    exporter.shutdown()
    ids = exported + [pid for index in range(count) for pid in child_ids(index)]
    print(json.dumps({"hung": hung, "exit_codes": codes, "flushed": flushed, "parent_records": len(exported),
                      "ids": ids}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
