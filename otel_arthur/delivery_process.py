"""``DeliveryProcess``: the in-app exporter's delivery, out of the application's interpreter.

::

    application's process                                  delivery process (python -I -c …delivery_process.main())
    export(): map ─▶ Spool.append ──── the same spool file ────▶ Pipeline's worker: bind, claim, send, settle, adopt
              └─ one byte per submit ── its stdin ───────────▶ w: records came   f: deliver now   r: report
                                                                s + seconds: drain that long, exit   end of file: the same
    reader thread ◀── frames on its stdout ─────────────────── counters after every settle and retry; log records

Delivery's CPU work (JSON, HTTP, SQLite) held the application's GIL: an application thread back from
its LLM call waited for it (``otel_arthur.pacing``). In a process of its own it waits for nothing.

- Started at the first submit (an exporter that never exports costs no process), as
  ``sys.executable -I -c <the application's sys.path; main()>``: isolated from the application's
  start-up hooks (``opentelemetry-instrument``'s ``sitecustomize`` would instrument it and export
  from it), with this very ``otel_arthur``. The settings, credentials included, go over its stdin as
  the first frame, never argv or the environment.
- It exits when its stdin reaches end of file (the application shut down or died), after draining
  for ``DEFAULT_SHUTDOWN_TIMEOUT`` at most; ``shutdown(timeout)`` asks it to drain that long instead.
  It ignores SIGINT: a Ctrl-C is the application's to handle, and the application then shuts it down.
- Supervised: when it dies, one WARNING line, and the next submit starts another, at once the first
  time, then after 1, 2, 4… s (at most ``RESTART_BACKOFF_MAX``) while it keeps dying within
  ``STABLE_AFTER``. Records wait in the spool meanwhile; the batch it had on the wire is adopted.
- Counters only delivery knows (delivered, retried, dead-lettered, dropped by the destination,
  request durations) come back over its stdout, cumulative, after every settle and retry and on
  request (``report``): the spool holds no counters, and one frame per settled batch costs less than
  a write to it. The parent adds them to its own and keeps those of children that exited; what a
  child killed with ``kill -9`` counted after its last frame is missing from the counters, never from the spool.
- Its log records (every logger's: urllib3's too) come back over the same pipe and are emitted by
  the application's loggers of the same names, so its logging configuration applies.
- A forked application child closes its copies of the pipes (else the delivery process would not
  see its parent go) and delivers on a thread of its own, started at its first submit, as with
  ``delivery="thread"``: a delivery process costs an interpreter's start (~0.3-0.4 s of CPU, ~29
  MB), which 50 children forked at once (a ``multiprocessing`` pool) could not afford on 2 cores.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from otel_arthur.config import ArthurSettings, EngineSettings
from otel_arthur.destinations import destination_for
from otel_arthur.pipeline import DEFAULT_SHUTDOWN_TIMEOUT, Pipeline
from otel_arthur.retry import RetryPolicy
from otel_arthur.stats import PipelineStats

_logger = logging.getLogger(__name__)

# Isolated (-I): none of the application's start-up hooks (opentelemetry-instrument's sitecustomize would
# instrument and export from the delivery process itself); its sys.path: this very otel_arthur and its packages.
_BOOTSTRAP = "import sys; sys.path[:0] = {path!r}; from otel_arthur.delivery_process import main; main()"
RESTART_BACKOFF_MAX = 60.0  # seconds between restarts of a delivery process that keeps dying
STABLE_AFTER = 60.0  # seconds a delivery process must live for its death to count as the first again
EXIT_GRACE = 1.0  # seconds past the shutdown timeout a delivery process has to exit before it is killed
PARENT_GONE_DRAIN = DEFAULT_SHUTDOWN_TIMEOUT  # seconds the child drains once its parent's pipe closes
START_FAILURES = 2  # children dead before their first frame (never started) before delivery goes to a thread
SEND_WAIT = 1.0  # seconds a command that must arrive (deliver now, shut down) waits for room in the pipe

RECORDS, DELIVER_NOW, REPORT, SHUT_DOWN = b"w", b"f", b"r", b"s"
_LENGTH = struct.Struct("!I")
_SECONDS = struct.Struct("!d")


def _frame(payload: Any) -> bytes:
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def _read_exact(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``, or None at end of file."""
    chunks, missing = [], size
    while missing:
        chunk = os.read(fd, missing)
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> Any:
    header = _read_exact(fd, _LENGTH.size)
    if header is None:
        return None
    body = _read_exact(fd, _LENGTH.unpack(header)[0])
    return None if body is None else pickle.loads(body)  # noqa: S301 - our own child, over our own pipe


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class DeliveryProcess:
    """The parent's side: starts, wakes, supervises and shuts down one destination's delivery process."""

    def __init__(self, settings: ArthurSettings | EngineSettings, retry_policy: RetryPolicy,
                 on_progress: Callable[[], None]) -> None:
        """``pickle.PicklingError`` (or ``TypeError``, ``AttributeError``) when the settings cannot be handed over.

        ``on_progress``: called on the reader thread after every report and when the process exits.
        """
        # Pickled now: settings that cannot be handed over fail at construction, not at the first export.
        self._handover = pickle.dumps({"settings": settings, "retry_policy": retry_policy},
                                      protocol=pickle.HIGHEST_PROTOCOL)
        self._title = "Arthur Engine" if isinstance(settings, EngineSettings) else "Arthur"
        self._spool_dir = settings.spool_dir
        self._on_progress = on_progress
        self._exited = PipelineStats()  # the counters of children that exited
        self._deaths = 0  # consecutive deaths, each within STABLE_AFTER of its start
        self._restart_at = 0.0
        self._lock = threading.Lock()  # starting and stopping
        self._pipe_lock = threading.Lock()  # writing to and closing our ends of the pipes: never a reused fd
        self._reports = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._to_child: int | None = None
        self._from_child: int | None = None
        self._running = False
        self._stopping = False
        self._started_at = 0.0
        self._current = PipelineStats()  # the running child's last report
        self._asked = self._answered = 0
        self._ever_started = False  # a child sent its first frame: this interpreter can run one
        self._start_failures = 0
        self.unusable = False  # children cannot be started here (sys.executable is no Python…): deliver on a thread

    def let_go_in_forked_child(self) -> None:
        """In a forked child: close its copies of the pipes, which would keep the parent's delivery process
        from seeing its parent go, or from writing once the parent is gone (a full pipe nobody reads)."""
        for fd in (self._to_child, self._from_child):
            if fd is not None:
                os.close(fd)
        self._to_child = self._from_child = None
        self._process = None  # the parent's child, not ours: never waited for nor killed here

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and self._running else None

    def ensure_running(self) -> bool:
        """Start the delivery process unless it runs, is shutting down or waits out its backoff; True if started now."""
        if self._running or self._stopping or time.monotonic() < self._restart_at:
            return False
        with self._lock:
            if self._running or self._stopping:
                return False
            return self._start()

    def _start(self) -> bool:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._started_at = time.monotonic()
        try:
            process = subprocess.Popen([sys.executable, "-I", "-c", _BOOTSTRAP.format(path=sys.path)],
                                       stdin=to_child_r, stdout=from_child_w, close_fds=True)
        except OSError as exc:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            self._died(f"could not be started ({exc})")
            self._failed_to_start(str(exc))
            return False
        os.close(to_child_r)
        os.close(from_child_w)
        # The levels as configured now (the application may have set its logging up after constructing us).
        # A few hundred bytes: the empty pipe takes them at once.
        try:
            _write_all(to_child_w, _frame({"handover": self._handover, "levels": {
                name: logging.getLogger(name).getEffectiveLevel() for name in ("", "otel_arthur")}}))
        except OSError as exc:  # it exited before reading (EPIPE): never into the application
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            process.kill()
            code = process.wait()
            self._died(f"exited with code {code} before it took its settings")
            self._failed_to_start(str(exc))
            return False
        os.set_blocking(to_child_w, False)  # a wake-up must never block the application
        with self._pipe_lock:
            self._process, self._to_child, self._from_child = process, to_child_w, from_child_r
        self._running = True
        threading.Thread(target=self._read, args=(process, from_child_r), name="otel-arthur-delivery-reader",
                         daemon=True).start()
        _logger.debug("%s delivery process %d started", self._title, process.pid)
        return True

    def wake(self, now: bool) -> None:
        """Records were submitted; ``now``: deliver without lingering (a batch's worth waits, or a flush asks)."""
        self._send(DELIVER_NOW if now else RECORDS, SEND_WAIT if now else 0.0)

    def _send(self, command: bytes, wait: float) -> bool:
        with self._pipe_lock:
            fd = self._to_child
            if fd is None:
                return False
            try:
                os.write(fd, command)
            except BlockingIOError:  # 64 KiB of wake-ups not yet read: this one adds nothing, unless it must arrive
                if not wait or not select.select([], [fd], [], wait)[1]:
                    return False
                try:
                    os.write(fd, command)
                except OSError:
                    return False
            except OSError:  # it died: the reader sees the end of its pipe and says so
                return False
            return True

    def _close_to_child(self) -> None:
        with self._pipe_lock:
            if self._to_child is not None:
                os.close(self._to_child)
                self._to_child = None

    def report(self, timeout: float) -> bool:
        """Ask for the child's counters and wait for them: True once they arrived, counting every settle so far."""
        with self._reports:
            self._asked += 1
            asked = self._asked
        if not self._send(REPORT, SEND_WAIT):
            return False
        with self._reports:
            return self._reports.wait_for(lambda: self._answered >= asked or not self._running, timeout) \
                and self._answered >= asked

    def stats(self) -> PipelineStats:
        """What the delivery processes counted: those that exited and the running one's last report."""
        with self._reports:
            return self._exited.plus(self._current)

    def shutdown(self, timeout: float) -> bool:
        """Let the child drain for up to ``timeout`` seconds and exit; True when it did (it said what remains)."""
        with self._lock:
            self._stopping = True
            process = self._process
        if process is None or not self._running:
            return False
        exited = self._send(SHUT_DOWN + _SECONDS.pack(timeout), SEND_WAIT)
        try:
            process.wait(timeout + EXIT_GRACE)
        except subprocess.TimeoutExpired:  # it must not outlive the drain: its claimed batch is adopted later
            _logger.warning("%s delivery process %d still running %.1f s after the shutdown timeout: killed; the"
                            " records it held wait in %s", self._title, process.pid, EXIT_GRACE, self._spool_dir)
            process.kill()
            process.wait()
            exited = False
        self._close_to_child()
        with self._reports:  # the reader folds the last report in at the end of the pipe
            self._reports.wait_for(lambda: not self._running, EXIT_GRACE)
        return exited and process.returncode == 0

    def _read(self, process: subprocess.Popen[bytes], fd: int) -> None:
        """The reader thread: the child's frames until its pipe ends, then what its end means."""
        try:
            while (frame := _read_frame(fd)) is not None:
                self._ever_started = True
                if frame[0] == "report":
                    with self._reports:
                        self._current = frame[2]
                        self._answered = max(self._answered, frame[1])
                        self._reports.notify_all()
                    self._on_progress()
                else:
                    _emit(*frame[1:])
        except Exception:  # a frame that cannot be read: the pipe is no use any more
            _logger.exception("Cannot read from the %s delivery process %d", self._title, process.pid)
        finally:
            with self._pipe_lock:
                self._from_child = None
                os.close(fd)
        code = process.wait()
        if not self._stopping:
            self._close_to_child()
            self._died(f"exited with code {code}")  # its backoff set before a submit may see it gone
            if not self._ever_started:
                self._failed_to_start(f"exit code {code}")
        with self._reports:
            self._exited = self._exited.plus(self._current)
            self._current = PipelineStats()
            self._running = False
            self._reports.notify_all()
        self._on_progress()

    def _died(self, how: str) -> None:
        """One line per death; the next submit restarts it once the backoff has passed."""
        now = time.monotonic()
        self._deaths = 1 if now - self._started_at >= STABLE_AFTER else self._deaths + 1
        backoff = 0.0 if self._deaths == 1 else min(2.0 ** (self._deaths - 2), RESTART_BACKOFF_MAX)
        self._restart_at = now + backoff
        _logger.warning("%s delivery process %s; records wait in %s and a new one starts at the next export%s",
                        self._title, how, self._spool_dir, f" after {backoff:.0f} s" if backoff else "")


    def _failed_to_start(self, why: str) -> None:
        """A child died before its first frame: after ``START_FAILURES`` of them, none is started again here."""
        self._start_failures += 1
        if self._start_failures >= START_FAILURES and not self.unusable:
            _logger.warning("%s delivery cannot run in a process of its own with %s (%s): it runs on a thread of"
                            " the application's instead", self._title, sys.executable or "no interpreter", why)
            self.unusable = True


def _emit(name: str, level: int, message: str, process: int) -> None:
    """A log record of the delivery process, through the application's logger of the same name."""
    logger = logging.getLogger(name)
    if logger.isEnabledFor(level):
        logger.handle(logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                                             "msg": message, "process": process, "processName": "otel-arthur-delivery"}))


class _Channel:
    """The child's side of its stdout: frames from the worker thread and the command loop, one at a time."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._open = True

    def send(self, payload: Any) -> bool:
        """False once the parent is gone (its end of the pipe closed)."""
        data = _frame(payload)
        with self._lock:
            if self._open:
                try:
                    _write_all(self._fd, data)
                except OSError:
                    self._open = False
            return self._open


class _Forward(logging.Handler):
    """The child's log records, to the parent (message and traceback as text: they cross a pipe)."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
            if not self._channel.send(("log", record.name, record.levelno, message, os.getpid())):
                sys.stderr.write(f"{record.levelname} {record.name}: {message}\n")  # the parent is gone
        except Exception:
            self.handleError(record)


def main() -> None:
    """The delivery process: a ``Pipeline`` worker over the spool, commands on stdin, frames on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the application's Ctrl-C: it shuts us down through the pipe
    channel = _Channel(os.dup(1))
    os.dup2(2, 1)  # anything printed goes to stderr, never between the frames
    hello = _read_frame(0)
    if hello is None:
        return
    # Every logger's records (urllib3's too) at the levels of the parent, whose loggers filter them again.
    logging.getLogger().addHandler(_Forward(channel))
    for name, level in hello["levels"].items():
        logging.getLogger(name).setLevel(level)
    handover = pickle.loads(hello["handover"])  # noqa: S301 - our parent's, over its pipe
    asked = 0
    pipeline: Pipeline | None = None

    def report() -> None:
        assert pipeline is not None
        channel.send(("report", asked, pipeline.delivery_stats()))

    pipeline = Pipeline(to=destination_for(handover["settings"]), retry_policy=handover["retry_policy"],
                        on_counted=report)
    report()  # the first frame: the parent knows a delivery process can run here
    timeout, pending = PARENT_GONE_DRAIN, b""
    while True:
        data = os.read(0, 4096)
        if not data:  # the parent shut down or died
            break
        pending += data
        shut_down_at = pending.find(SHUT_DOWN)
        commands = pending if shut_down_at < 0 else pending[:shut_down_at]
        if RECORDS in commands or DELIVER_NOW in commands:
            pipeline.wake(now=DELIVER_NOW in commands)
        if REPORT in commands:
            asked += commands.count(REPORT)
            report()
        if shut_down_at < 0:
            pending = b""
        elif len(pending) >= shut_down_at + 1 + _SECONDS.size:
            timeout = _SECONDS.unpack_from(pending, shut_down_at + 1)[0]
            break
        else:
            pending = pending[shut_down_at:]  # the seconds are still on their way
    pipeline.shutdown(timeout)
    os._exit(0)  # a request still in flight (on a daemon thread) must not hold the exit: its batch is adopted

