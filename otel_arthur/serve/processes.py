"""``DecodeProcesses``: request bodies decoded and mapped in worker processes, so ``serve`` uses every core.

Inflating, parsing protobuf and mapping spans is CPU work under the GIL: in one process ``serve``
tops out at one core. With ``--decode-processes N`` the receiver hands each body to one of N
processes (the standard library's process pool) and gets the records back as their spool rows will
hold them (privacy applied, encoded: ``OtlpExtraction.encoded``), so pickling them costs a tenth of
what records cost and the serving process only stores them. Spooling, one record per LLM call
(``dedupe``), delivery, counters, ``/metrics`` and shutdown stay in the serving process.

The processes are spawned, never forked: the serving process already runs threads and holds
SQLite connections, which a fork would copy in whatever state they were. All of them start before
the server listens, so the first requests do not wait for a process to import its modules. One
that dies (killed, out of memory) breaks the pool: the requests it held are answered 503 (their
clients retry) and a new pool takes over. The processes ignore SIGINT and SIGTERM, which a
terminal or systemd sends the whole process group: the serving process stops them once drained,
and should it be killed outright they notice within a second and exit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.synchronize import Barrier

from otel_arthur.destinations import OtlpExtraction
from otel_arthur.serve.receiver import Decoded, DecoderUnavailable, decode_request
from otel_arthur.serve.warmup import ready_to_serve

__all__ = ["DecodeProcesses"]

_logger = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # seconds for a process to start and import what it needs (about 0.5 s here)
PARENT_CHECK_INTERVAL = 1.0  # seconds between an orphaned decode process's looks at its parent


# In a decode process: passed by the pool that started it.
_all_started: Barrier | None = None
_extraction: OtlpExtraction | None = None  # kept for the process's life, with the destinations it makes


def _start_decoder(parent: int, all_started: Barrier, extraction: OtlpExtraction) -> None:
    """Set up a decode process: it stops when the serving process says so, or is gone."""
    global _all_started, _extraction
    _all_started, _extraction = all_started, extraction
    # A SIGINT or SIGTERM sent to the whole process group (Ctrl-C, systemd) must not kill the
    # decoders under the requests the serving process is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="otel-arthur-parent-watch", daemon=True).start()
    ready_to_serve(maps=True)


def _exit_with(parent: int) -> None:
    """A serving process killed with -9 cannot stop its pool: its orphans notice and exit."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_INTERVAL)
    os._exit(0)


def _decode(body: bytes, encoding: str | None, media: str, max_body_bytes: int, max_spans: int) -> Decoded:
    assert _extraction is not None
    return decode_request(body, encoding, media, max_body_bytes, max_spans, _extraction, encoded=True)


def _started() -> int:
    """Returns once every process of the pool runs one: so each of them has started, and answers once."""
    assert _all_started is not None
    _all_started.wait(START_TIMEOUT)
    return os.getpid()


class DecodeProcesses:
    """``decode`` is ``receiver.decode_request``, run in one of ``processes`` worker processes."""

    def __init__(self, processes: int, extraction: OtlpExtraction) -> None:
        """``extraction``: what each destination takes from a request (``receiver.decode_request``), with the
        settings of each (``OtlpExtraction.of``)."""
        if processes < 1:
            raise ValueError(f"decode processes must be at least 1, got {processes!r}")
        self.processes = processes
        self._extraction = extraction
        self._lock = threading.Lock()
        self._closed = False
        self.pids: list[int] = []
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_start_decoder,
                                   initargs=(os.getpid(), context.Barrier(self.processes), self._extraction))
        # The pool starts a process per submission while none is idle: one task each starts them all now.
        futures = [pool.submit(_started) for _ in range(self.processes)]
        self.pids = sorted({future.result(timeout=START_TIMEOUT) for future in futures})
        _logger.info("Decoding requests in %d processes (pids %s)", len(self.pids), ", ".join(map(str, self.pids)))
        return pool

    def decode(self, body: bytes, encoding: str | None, media: str, max_body_bytes: int, max_spans: int) -> Decoded:
        pool = self._pool
        try:
            return pool.submit(_decode, body, encoding, media, max_body_bytes, max_spans).result()
        except BrokenProcessPool:
            self._replace(pool)
            raise DecoderUnavailable("a decode process died; a new one was started") from None
        except RuntimeError:  # submit() after shutdown: the server is stopping
            if self._closed:
                raise DecoderUnavailable("shutting down") from None
            raise

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken or self._closed:
                return  # another request's thread already replaced it, or we are stopping
            _logger.error("A decode process died; starting %d new ones", self.processes)
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()

    def close(self) -> None:
        """Wait for the bodies being decoded, then stop the processes. Idempotent."""
        with self._lock:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)
