"""The in-app exporter's threads let the application's threads run between slices of their work (``pacing``)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from spanfixtures import generation_spans
from test_pipeline import records

from otel_arthur import ArthurSpanExporter
from otel_arthur.config import ArthurSettings
from otel_arthur.exporter import PACE_SPANS
from otel_arthur.pacing import Pacer
from otel_arthur.pipeline import Pipeline

NEVER_FORCED = 1000.0  # seconds: the GIL changes hands only when its holder lets go, as within a short slice


class CountingPacer(Pacer):
    """Pauses at every look (a slice of zero) and counts them."""

    def __init__(self) -> None:
        super().__init__(slice_seconds=0.0)
        self.pauses = 0

    def pause_if_due(self) -> None:
        self.pauses += 1
        super().pause_if_due()


@contextmanager
def ticking_thread() -> Iterator[Callable[[], int]]:
    """A thread that sleeps 0.5 ms and counts each time it got the GIL back; yields a reader of the count.

    The switch interval is raised meanwhile, so the thread runs only when another lets go of the GIL.
    """
    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            time.sleep(0.0005)
            ticks += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(NEVER_FORCED)
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield lambda: ticks
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()


def busy(seconds: float, pacer: Pacer | None) -> None:
    """Pure Python work (it never lets go of the GIL by itself), looking at the pacer between steps."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if pacer is not None:
            pacer.pause_if_due()


def test_a_thread_waiting_for_the_gil_runs_during_paced_work_and_not_during_unpaced_work():
    with ticking_thread() as ticks:
        time.sleep(0.01)  # the ticker is in its loop
        before = ticks()
        busy(0.05, None)
        unpaced = ticks() - before
        before = ticks()
        busy(0.05, Pacer())
        paced = ticks() - before
    assert unpaced <= 1  # at most the wake-up that was under way when the work began
    assert paced >= 5  # a 0.2 ms slice and a 0.5 ms sleep: dozens in 50 ms


def test_export_paces_between_slices_of_spans_and_records(tmp_path):
    spans = generation_spans()
    batch = (spans * (4 * PACE_SPANS // len(spans) + 1))[:4 * PACE_SPANS]
    exporter = ArthurSpanExporter(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                  spool_dir=str(tmp_path / "spool"))
    try:
        exporter._pacer = pacer = CountingPacer()
        exporter.export(batch)
        assert exporter.stats().spooled == len(batch)
        # after each slice of spans, and after each record prepared for the spool
        assert pacer.pauses >= len(batch) // PACE_SPANS + len(batch)
    finally:
        exporter.shutdown(timeout_millis=0)


def test_the_delivery_worker_paces_between_claim_send_and_settle(local_arthur, new_model, tmp_path):
    settings = ArthurSettings.resolve(url=local_arthur.url, api_key=local_arthur.api_key, model_id=new_model(),
                                      allow_insecure=True, spool_dir=tmp_path / "spool")
    pacer = CountingPacer()
    pipeline = Pipeline(settings, pacer=pacer)
    try:
        assert pipeline.submit(records(5))
        assert pipeline.force_flush(10)
        assert pipeline.stats().delivered == 5
        assert pacer.pauses >= 3  # after the claim, after Arthur's answer, after settling
    finally:
        pipeline.shutdown(1)
