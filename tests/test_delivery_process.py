"""The in-app exporter's delivery process (``ARTHUR_DELIVERY=process``) against the local Arthur: records
delivered exactly through it, a child killed -9 restarted with nothing lost, a child that outlives
its parent only by the drain, counters right in the parent, a shutdown that leaves the rest on
disk, a forked application child delivering on a thread of its own, and none of the application's
start-up hooks run in it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter

import pytest
from servehelpers import wait_for
from spanfixtures import generation_spans

from otel_arthur import ArthurSpanExporter
from otel_arthur.clients.http import RecordResult
from otel_arthur.config import ARTHUR_DELIVERY, ArthurSettings
from otel_arthur.delivery_process import PARENT_GONE_DRAIN
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import InferenceRecord
from otel_arthur.pipeline import THREAD_NAME, Pipeline
from otel_arthur.retry import RetryPolicy
from otel_arthur.spool import Spool

QUICK = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=5)


def records(count: int, prefix: str = "r") -> list[InferenceRecord]:
    return [InferenceRecord(f"{prefix}-{uuid.uuid4().hex}", "2024-05-01T12:00:00+00:00",
                            {"prompt": "Human: hi", "completion": "hello"}) for _ in range(count)]


def ids(batch: list[InferenceRecord]) -> list[str]:
    return [r.partner_inference_id for r in batch]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def settings(local_arthur, new_model, tmp_path):
    def make(**overrides) -> ArthurSettings:
        options = {"url": local_arthur.url, "api_key": local_arthur.api_key, "allow_insecure": True,
                   "spool_dir": tmp_path / "spool"} | overrides
        return ArthurSettings.resolve(model_id=new_model(), **options)

    return make


@pytest.fixture
def pipelines():
    """``pipelines(settings, **kwargs)``: a Pipeline delivering from a process, shut down when the test ends."""
    started: list[Pipeline] = []

    def start(settings: ArthurSettings, **kwargs) -> Pipeline:
        started.append(Pipeline(settings, retry_policy=kwargs.pop("retry_policy", QUICK), delivery="process",
                                **kwargs))
        return started[-1]

    yield start
    for pipeline in started:
        pipeline.shutdown(timeout=1)
        # It never outlives its shutdown; a test that failed halfway leaves none behind either.
        assert pipeline.delivery_process_pid is None


@pytest.fixture
def faults(local_arthur):
    yield local_arthur.faults.set
    local_arthur.faults.set(Faults())


def stored(local_arthur, model_id: str) -> Counter[str]:
    return Counter(r["partner_inference_id"] for r in local_arthur.inferences(model_id))


def test_records_are_delivered_exactly_once_through_the_delivery_process(settings, pipelines, local_arthur):
    config = settings(batch_max_records=40)
    pipeline = pipelines(config)
    assert pipeline.delivery_process_pid is None  # nothing exported yet: no process
    sent = records(250)
    for start in range(0, len(sent), 25):
        assert pipeline.submit(sent[start:start + 25])
    pid = pipeline.delivery_process_pid
    assert pid is not None and pid != os.getpid() and alive(pid)
    assert pipeline.force_flush(timeout=30)
    assert stored(local_arthur, config.model_id) == Counter(ids(sent))
    assert THREAD_NAME not in {t.name for t in threading.enumerate()}  # nothing delivers in this interpreter
    stats = pipeline.stats()
    assert (stats.spooled, stats.delivered, stats.dead_lettered, stats.spool_depth) == (250, 250, 0, 0)
    assert stats.arthur_request_seconds.count >= 250 // 40


def test_a_killed_delivery_process_is_restarted_and_nothing_is_lost(settings, pipelines, faults, local_arthur, caplog):
    config = settings(batch_max_records=20)
    pipeline = pipelines(config)
    faults(Faults(rate_slow=1.0, slow_seconds=0.3))  # a batch is on the wire when the kill comes
    first = records(100, "first")
    pipeline.submit(first)
    killed = pipeline.delivery_process_pid
    assert killed is not None
    assert wait_for(lambda: pipeline.stats().delivered >= 20)
    os.kill(killed, signal.SIGKILL)
    assert wait_for(lambda: not alive(killed) and pipeline.delivery_process_pid is None)
    faults(Faults())
    second = records(30, "second")
    assert pipeline.submit(second)  # records wait on disk; this submit starts a new process
    assert pipeline.delivery_process_pid not in (None, killed)
    assert pipeline.force_flush(timeout=30)
    arrived = stored(local_arthur, config.model_id)
    assert set(arrived) == set(ids(first + second))  # the batch on the wire at the kill was adopted, not lost
    assert sum(arrived.values()) - len(arrived) <= 20  # only it may have been stored twice
    died = [r for r in caplog.records if "delivery process exited with code -9" in r.getMessage()]
    assert len(died) == 1 and died[0].levelno == logging.WARNING


def test_the_delivery_process_exits_once_its_parent_is_gone_having_drained(settings, local_arthur, tmp_path):
    config = settings()
    sent = records(30)
    parent_script = textwrap.dedent(f"""
        import os, sys, time
        from otel_arthur.config import ArthurSettings
        from otel_arthur.mapping import InferenceRecord
        from otel_arthur.pipeline import Pipeline

        settings = ArthurSettings(url={config.url!r}, api_key={config.api_key!r}, model_id={config.model_id!r},
                                  allow_insecure=True, spool_dir={str(config.spool_dir)!r}, delivery_linger=30.0)
        pipeline = Pipeline(settings, delivery="process")
        pipeline.submit([InferenceRecord(i, "2024-05-01T12:00:00+00:00", {{"prompt": "Human: hi",
                         "completion": "hello"}}) for i in {ids(sent)!r}])
        if os.fork() == 0:  # a forked child that outlives its parent holds no end of the delivery process's pipes
            time.sleep(120)
            os._exit(0)
        print(pipeline.delivery_process_pid, flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              start_new_session=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)  # its pipe closes with it
        parent.wait()
        # Lingering for 30 s, the child delivers nothing before its parent goes: its drain does.
        assert wait_for(lambda: not alive(child), timeout=PARENT_GONE_DRAIN + 10)
        assert stored(local_arthur, config.model_id) == Counter(ids(sent))
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # the forked child too
        except ProcessLookupError:
            pass
        parent.wait()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


def test_counters_of_the_delivery_process_are_right_in_the_parent(settings, pipelines, faults, local_arthur):
    config = settings(batch_max_records=10)
    faults(Faults(rate_record_400=0.3, rate_500=0.2, seed=7))
    pipeline = pipelines(config)
    pipeline.submit(records(60))
    assert not pipeline.force_flush(timeout=30)  # some were refused for good
    injected = local_arthur.faults.describe()["injected"]
    stats = pipeline.stats()
    assert 0 < injected["record_400"] < 60 and injected["500"] > 0
    assert (stats.delivered, stats.dead_lettered) == (60 - injected["record_400"], injected["record_400"])
    assert stats.delivered == len(local_arthur.inferences(config.model_id))
    assert stats.dead_lettered == len(pipeline.dead_letters()) == stats.dead_letters
    assert stats.retried >= injected["500"]  # every record of a 500'd request was sent again


def test_shutdown_leaves_what_it_could_not_deliver_on_disk(settings, pipelines, faults, local_arthur, caplog):
    config = settings()
    pipeline = pipelines(config)
    faults(Faults(rate_stall=1.0, stall_seconds=30))
    sent = records(20)
    pipeline.submit(sent)
    child = pipeline.delivery_process_pid
    assert child is not None
    pipeline.shutdown(timeout=1)
    assert not alive(child)  # it never outlives the shutdown
    assert any("20 records not yet delivered remain" in r.getMessage() for r in caplog.records)
    spool = Spool(config.spool_dir, pipeline.destination.key, config.spool_max_bytes)
    try:
        assert spool.pending() == 20  # left on disk (a batch it had on the wire adopted as it exited)
    finally:
        spool.close()
    faults(Faults())
    later = pipelines(config)  # the next process using the spool delivers them
    assert later.force_flush(timeout=30)
    assert set(stored(local_arthur, config.model_id)) == set(ids(sent))


def test_a_forked_child_delivers_on_a_thread_of_its_own(settings, pipelines, local_arthur):
    config = settings()
    pipeline = pipelines(config)
    before = records(10, "parent")
    pipeline.submit(before)
    parents = pipeline.delivery_process_pid
    in_child = records(10, "child")
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            shared_nothing = pipeline.delivery_process_pid is None  # the parent's process is not the child's
            pipeline.submit(in_child)
            on_a_thread = THREAD_NAME in {t.name for t in threading.enumerate()}
            flushed = pipeline.force_flush(timeout=30)
            pipeline.shutdown(timeout=5)
            code = 0 if shared_nothing and on_a_thread and pipeline.delivery_process_pid is None and flushed else 1
        finally:
            os._exit(code)  # never back into pytest
    assert wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, timeout=60), "the forked child hangs"
    assert pipeline.force_flush(timeout=30)
    assert pipeline.delivery_process_pid == parents  # the child's shutdown left the parent's process alone
    assert stored(local_arthur, config.model_id) == Counter(ids(before + in_child))


def test_a_test_transport_stays_on_the_thread(settings, pipelines):
    class Accepting:
        def send(self, batch):
            return [RecordResult(200, "success")] * len(batch)

        def close(self):
            pass

    pipeline = pipelines(settings(), transport=Accepting())
    pipeline.submit(records(3))
    assert pipeline.force_flush(timeout=10)
    assert pipeline.delivery_process_pid is None and pipeline.stats().delivered == 3


@pytest.mark.parametrize("chosen", ["process", "thread"])
def test_the_exporter_delivers_where_arthur_delivery_says(chosen, local_arthur, new_model, tmp_path, monkeypatch):
    monkeypatch.setenv(ARTHUR_DELIVERY, chosen)
    model_id = new_model()
    exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, model_id=model_id,
                                  allow_insecure=True, spool_dir=str(tmp_path / "spool"))
    try:
        exporter.export(generation_spans()[:1])
        assert exporter.force_flush(10_000)
        assert len(local_arthur.inferences(model_id)) == 1
        [pipeline] = exporter._pipelines
        assert (pipeline.delivery_process_pid is not None) == (chosen == "process")
    finally:
        exporter.shutdown(5_000)


def test_a_bad_delivery_argument_is_refused():
    with pytest.raises(ValueError, match="delivery must be"):
        ArthurSpanExporter(url="http://127.0.0.1:9", api_key="k", model_id="m", delivery="fiber")


def test_the_delivery_process_runs_none_of_the_applications_start_up_hooks(settings, pipelines, tmp_path,
                                                                           monkeypatch):
    # What opentelemetry-instrument does: a sitecustomize on PYTHONPATH, run by every interpreter started with it.
    hooks, ran = tmp_path / "hooks", tmp_path / "sitecustomize-ran"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert ran.exists()  # the hook does run in an interpreter started the usual way
    ran.unlink()
    pipeline = pipelines(settings())
    pipeline.submit(records(2))
    assert pipeline.force_flush(timeout=30)
    assert not ran.exists()


def test_where_no_delivery_process_can_start_delivery_goes_to_a_thread(settings, pipelines, local_arthur,
                                                                      monkeypatch, caplog):
    # An interpreter whose sys.executable is no Python (uWSGI, a frozen application): every child exits at once.
    monkeypatch.setattr(sys, "executable", "/bin/false")
    config = settings()
    pipeline = pipelines(config)
    sent = records(30)
    with caplog.at_level(logging.WARNING, logger="otel_arthur"):
        assert pipeline.submit(sent[:10])
        assert wait_for(lambda: pipeline.delivery_process_pid is None)
        for start in (10, 20):  # each submit may start the next child, until delivery gives up on processes
            wait_for(lambda: pipeline.delivery_process_pid is None)
            time.sleep(1.1)  # the second start waits out its backoff
            assert pipeline.submit(sent[start:start + 10])
        assert pipeline.force_flush(timeout=30)
    assert stored(local_arthur, config.model_id) == Counter(ids(sent))
    assert THREAD_NAME in {t.name for t in threading.enumerate()}
    assert sum("runs on a thread of the application's instead" in r.getMessage() for r in caplog.records) == 1
