"""Forked children (Gunicorn, uWSGI, Celery prefork, ``multiprocessing``): each is a spool owner of its own,
with its own connection and worker, and leaves its parent's in-flight batch alone; 50 forked from a busy
app (a separate process, tests/apps/forking_app.py) never hang, and every record arrives exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from otel_arthur.clients.http import RecordResult
from otel_arthur.config import ArthurSettings
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import InferenceRecord
from otel_arthur.pipeline import Pipeline
from otel_arthur.retry import RetryPolicy
from otel_arthur.spool import OWNERS, Spool

APP = Path(__file__).resolve().parent / "apps" / "forking_app.py"
CHILDREN = 50
CHILD_TIMEOUT = 30.0  # seconds; a child still running then hangs
QUICK = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=5)


def records(count: int) -> list[InferenceRecord]:
    return [InferenceRecord(f"r-{uuid.uuid4().hex}", "2024-05-01T12:00:00+00:00",
                            {"prompt": "Human: hi", "completion": "hello"}) for _ in range(count)]


def in_child(check: Callable[[], bool]) -> int | None:
    """Run ``check`` in a forked child: its exit code (0 when it returned True), or None when it hung (killed)."""
    pid = os.fork()
    if pid == 0:
        code = 2  # it raised
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)  # never back into pytest
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def holds_posix_locks(pid: int) -> bool:
    """Whether the process holds fcntl() locks, as SQLite takes on a file it has open (Linux's /proc/locks)."""
    with open("/proc/locks") as locks:
        return any(line.split()[1:2] == ["POSIX"] and line.split()[4:5] == [str(pid)] for line in locks)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads Linux's /proc/locks")
def test_a_forked_child_is_a_spool_owner_of_its_own_and_leaves_the_parents_claim_alone(tmp_path):
    spool = Spool(tmp_path, "dest", 1_000_000)
    spool.append(records(3))
    in_flight = spool.claim(2)  # the parent's batch on the wire
    parent_owner = spool.owner

    def child() -> bool:
        mine = spool.claim(10)  # only the record nobody had claimed
        own_connection = holds_posix_locks(os.getpid())  # its own connection takes its own locks on the file
        spool.close()  # returns its own claim, never the parent's
        return len(mine) == 1 and spool.owner != parent_owner and own_connection

    assert in_child(child) == 0
    [inventory] = spool.inventory()
    assert (inventory.pending, inventory.in_flight) == (1, 2)
    assert f"{parent_owner}.lock" in os.listdir(tmp_path / OWNERS)  # still alive for anyone adopting
    spool.settle(acked=[c.seq for c in in_flight])
    assert spool.pending() == 1
    spool.close()


class Scripted:
    """A transport: ``answer(records)`` decides, per call."""

    def __init__(self, answer):
        self.answer = answer

    def send(self, records):
        return self.answer(records)

    def close(self):
        pass


def test_a_forked_child_delivers_with_a_worker_of_its_own_while_the_parents_is_stuck_in_a_request(tmp_path):
    parent, requested, release = os.getpid(), threading.Event(), threading.Event()

    def answer(batch):
        if os.getpid() == parent:  # the parent's worker hangs in its request until the child is done
            requested.set()
            release.wait(CHILD_TIMEOUT)
        return [RecordResult(200, "success")] * len(batch)

    config = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                    spool_dir=tmp_path)
    pipeline = Pipeline(config, transport=Scripted(answer), retry_policy=QUICK)
    try:
        pipeline.submit(records(1))
        assert requested.wait(10)

        def child() -> bool:
            pipeline.submit(records(2))
            deadline = time.monotonic() + 10
            while pipeline.stats().delivered < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            delivered = pipeline.stats().delivered  # the child's own count, from zero
            pipeline.shutdown(timeout=5)
            return delivered == 2

        assert in_child(child) == 0
        assert pipeline.stats().spool_depth == 1  # the parent's record is still its own, in flight
        release.set()
        assert pipeline.force_flush(timeout=10)
        assert pipeline.stats().delivered == 1  # the parent delivered its one; the child's were not sent again
    finally:
        release.set()
        pipeline.shutdown(timeout=1)


@pytest.fixture
def slow_arthur(local_arthur):
    """Every answer 20 ms late: the parent's worker is mid-request whenever it forks."""
    local_arthur.faults.set(Faults(rate_slow=1.0, slow_seconds=0.02))
    yield local_arthur
    local_arthur.faults.set(Faults())


def test_fifty_children_forked_from_a_busy_app_never_hang_and_every_record_arrives_once(
        slow_arthur, new_model, tmp_path, figures):
    model_id = new_model()
    env = os.environ | {"ARTHUR_ENDPOINT_URL": slow_arthur.url, "ARTHUR_API_KEY": slow_arthur.api_key,
                        "ARTHUR_MODEL_ID": model_id, "ARTHUR_ALLOW_INSECURE": "true",
                        "ARTHUR_BATCH_MAX_RECORDS": "20", "ARTHUR_SPOOL_DIR": str(tmp_path)}
    app = subprocess.run([sys.executable, str(APP), str(CHILDREN)], env=env, capture_output=True, text=True,
                         timeout=240)
    assert app.returncode == 0, app.stderr
    report = json.loads(app.stdout.strip().splitlines()[-1])
    figures["forked children"] = {"children": CHILDREN, "hung": report["hung"],
                                  "failed": sum(code != 0 for code in report["exit_codes"]),
                                  "parent_records": report["parent_records"]}
    assert report["hung"] == 0
    assert report["exit_codes"] == [0] * CHILDREN and report["flushed"]
    assert report["parent_records"] > 100  # the parent really was busy while it forked
    arrived = Counter(row["partner_inference_id"] for row in slow_arthur.inferences(model_id))
    assert sorted(arrived.elements()) == sorted(report["ids"])  # every record once: none lost, none twice
