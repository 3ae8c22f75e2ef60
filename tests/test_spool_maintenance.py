"""The spool's maintenance operations: listing dead letters, re-queueing them, purging, the inventory."""

from __future__ import annotations

import pytest

from otel_arthur.mapping import InferenceRecord
from otel_arthur.spool import Refused, Spool

HERE = "http://arthur.example model-1"
THERE = "http://arthur.example model-2"


def records(count: int, start: int = 0) -> list[InferenceRecord]:
    return [InferenceRecord(f"id-{i}", "2024-05-01T12:00:00+00:00", {"prompt": "x" * 50, "n": i})
            for i in range(start, start + count)]


@pytest.fixture
def spools(tmp_path):
    here, there = Spool(tmp_path, HERE, 1_000_000), Spool(tmp_path, THERE, 1_000_000)
    yield here, there
    here.close()
    there.close()


def kill(spool: Spool, count: int, reason: str, start: int = 0) -> None:
    """Append ``count`` records and dead-letter them with ``reason``."""
    spool.append(records(count, start))
    claimed = spool.claim(count)
    spool.settle(refused=[Refused(c.seq, reason, f"400: {reason} {c.record.partner_inference_id}") for c in claimed])


def test_dead_letters_filter_by_destination_reason_and_seq(spools):
    here, there = spools
    kill(here, 2, "record_rejected")
    kill(here, 1, "batch_refused", start=2)
    kill(there, 1, "record_rejected", start=10)
    assert [d["record"].partner_inference_id for d in here.dead_letters()] == ["id-0", "id-1", "id-2"]
    everywhere = here.dead_letters(everywhere=True)
    assert len(everywhere) == 4 and {d["destination"] for d in everywhere} == {HERE, THERE}
    assert [d["reason"] for d in here.dead_letters(reason="batch_refused")] == ["batch_refused"]
    first = everywhere[0]
    assert here.dead_letters(everywhere=True, seqs=[first["seq"]]) == [first]
    assert first["message"] == "400: record_rejected id-0" and first["size"] > 50
    assert here.dead_letters(seqs=[]) == []


def test_requeue_moves_them_back_to_pending_once_as_new_arrivals(spools):
    here, there = spools
    kill(here, 3, "record_rejected")
    kill(there, 2, "record_rejected", start=10)
    here.append(records(1, start=100))  # already waiting: replayed ones come after it
    before = here.gauges()
    assert here.requeue_dead_letters() == 3
    assert here.requeue_dead_letters() == 0  # moved, not copied
    assert [c.record.partner_inference_id for c in here.claim(10)] == ["id-100", "id-0", "id-1", "id-2"]
    after = here.gauges()
    assert (after.depth, after.dead_letters, after.bytes) == (before.depth + 3, before.dead_letters - 3, before.bytes)
    assert len(there.dead_letters()) == 2
    assert there.requeue_dead_letters(everywhere=True, reason="record_rejected") == 2
    assert [c.record.partner_inference_id for c in there.claim(10)] == ["id-10", "id-11"]


def test_requeue_by_seq(spools):
    here, _ = spools
    kill(here, 3, "record_rejected")
    middle = here.dead_letters()[1]["seq"]
    assert here.requeue_dead_letters(seqs=[middle]) == 1
    assert [c.record.partner_inference_id for c in here.claim(10)] == ["id-1"]
    assert [d["record"].partner_inference_id for d in here.dead_letters()] == ["id-0", "id-2"]


def test_purge_counts_first_and_never_touches_records_in_flight(spools):
    here, there = spools
    kill(here, 2, "record_rejected")
    kill(there, 1, "batch_refused", start=10)
    here.append(records(3, start=20))
    in_flight = here.claim(1)
    preview = here.purge(everywhere=True, dry_run=True)
    assert preview.rows == 3 and preview.bytes > 0
    assert here.gauges().dead_letters == 3  # nothing deleted by a dry run
    assert here.purge(everywhere=True, reason="batch_refused").rows == 1
    done = here.purge(everywhere=True, pending=True)
    assert done.rows == 2 + 2  # two dead letters, two pending; the claimed one is left alone
    assert here.gauges().dead_letters == 0 and here.pending() == 1
    here.settle(acked=[in_flight[0].seq])
    assert here.gauges().depth == 0 and here.gauges().bytes == 0


def test_inventory_by_destination(spools):
    here, there = spools
    kill(here, 2, "record_rejected")
    here.append(records(3, start=20))
    here.claim(1)
    kill(there, 1, "batch_refused", start=10)
    by_destination = {entry.destination: entry for entry in here.inventory()}
    assert set(by_destination) == {HERE, THERE}
    mine = by_destination[HERE]
    assert (mine.pending, mine.in_flight, mine.dead_letters) == (2, 1, {"record_rejected": 2})
    assert mine.oldest_enqueued_at is not None and mine.bytes > 0
    theirs = by_destination[THERE]
    assert (theirs.pending, theirs.in_flight, theirs.dead_letters, theirs.oldest_enqueued_at) == (
        0, 0, {"batch_refused": 1}, None)
    assert sum(entry.bytes for entry in here.inventory()) == here.gauges().bytes
