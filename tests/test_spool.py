"""The spool alone: claim and settle, the byte bound, dead letters, sharing and adoption across processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from otel_arthur.mapping import InferenceRecord
from otel_arthur.spool import FILE_NAME, OWNERS, Refused, Spool

DESTINATION = "http://arthur.example model-1"


def records(count: int, start: int = 0, text: str = "x" * 100) -> list[InferenceRecord]:
    return [InferenceRecord(f"id-{i}", "2024-05-01T12:00:00+00:00", {"prompt": text, "n": i})
            for i in range(start, start + count)]


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    yield spool
    spool.close()


def ids(claimed) -> list[str]:
    return [c.record.partner_inference_id for c in claimed]


def test_records_come_back_as_they_went_in_oldest_first(spool):
    sent = records(5) + [InferenceRecord("odd", "2024-05-01T12:00:00+00:00",
                                         {"prompt": "ünïcode ✓", "tokens": 3, "t": 0.5, "ok": True})]
    assert spool.append(sent).stored == 6
    claimed = spool.claim(10)
    assert [c.record for c in claimed] == sent
    assert spool.claim(10) == []  # in flight: not handed out twice


def test_a_claim_with_a_minimum_takes_nothing_until_that_many_wait(spool):
    spool.append(records(3))
    assert spool.claim(4, minimum=4) == []
    assert spool.pending() == 3 and ids(spool.claim(4)) == ["id-0", "id-1", "id-2"]  # left pending, not claimed
    spool.append(records(5, start=3))
    assert ids(spool.claim(4, minimum=4)) == ["id-3", "id-4", "id-5", "id-6"]


def test_settle_acks_dead_letters_and_releases_in_one_go(spool):
    spool.append(records(4))
    a, b, c, d = spool.claim(4)
    spool.settle(acked=[a.seq], refused=[Refused(b.seq, "record_rejected", "400: unknown attribute 'x'")],
                 released=[c.seq])
    assert ids(spool.claim(10)) == ["id-2"]  # d is still ours, in flight; c came back
    assert spool.pending() == 2
    [dead] = spool.dead_letters()
    assert dead["record"].partner_inference_id == "id-1" and dead["message"] == "400: unknown attribute 'x'"
    assert spool.gauges().depth == 2 and spool.gauges().dead_letters == 1


def test_force_flush_mark_counts_only_what_came_before(spool):
    spool.append(records(3))
    mark = spool.last_seq()
    spool.append(records(2, start=3))
    for claimed in spool.claim(3):
        spool.settle(acked=[claimed.seq])
    assert spool.pending(upto=mark) == 0 and spool.pending() == 2


def test_destinations_share_the_file_but_not_the_records(tmp_path, spool):
    other = Spool(tmp_path, "http://arthur.example model-2", max_bytes=1_000_000)
    try:
        spool.append(records(2))
        other.append(records(3, start=10))
        assert ids(other.claim(10)) == ["id-10", "id-11", "id-12"]
        assert ids(spool.claim(10)) == ["id-0", "id-1"]
        assert spool.gauges().depth == 5  # the gauges describe the whole file
    finally:
        other.close()


def test_full_spool_drops_the_oldest_pending_and_stays_bounded(tmp_path):
    spool = Spool(tmp_path, DESTINATION, max_bytes=20_000)
    try:
        spool.append(records(10))
        in_flight = spool.claim(2)
        dropped = sum(spool.append(records(50, start=10 + 50 * i)).dropped for i in range(10))
        assert spool.gauges().bytes <= 20_000
        assert dropped == 510 - spool.gauges().depth
        kept = ids(spool.claim(1000))
        assert kept == [f"id-{i}" for i in range(510 - len(kept), 510)]  # the newest survive…
        assert ids(in_flight) == ["id-0", "id-1"]  # …and claimed records are never dropped under a sender
        assert spool.pending() == len(kept) + 2
    finally:
        spool.close()


def test_dead_letters_make_room_before_pending_records(tmp_path):
    spool = Spool(tmp_path, DESTINATION, max_bytes=3_000)
    try:
        spool.append(records(10))
        refused = spool.claim(10)
        spool.settle(refused=[Refused(c.seq, "batch_refused", "413") for c in refused])
        spool.append(records(10, start=10))
        assert spool.gauges().dead_letters < 10
        assert spool.pending() == 10  # nothing pending was dropped while dead letters could go
    finally:
        spool.close()


def test_a_record_alone_over_the_bound_is_dropped_without_touching_the_rest(tmp_path):
    spool = Spool(tmp_path, DESTINATION, max_bytes=2_000)
    try:
        spool.append(records(3))
        appended = spool.append(records(1, start=3, text="y" * 5_000))
        assert (appended.stored, appended.dropped) == (0, 1)
        assert spool.pending() == 3
    finally:
        spool.close()


def test_close_returns_what_was_in_flight(tmp_path):
    first = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    first.append(records(3))
    first.claim(2)
    first.close()
    first.close()  # idempotent
    second = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    try:
        assert ids(second.claim(10)) == ["id-0", "id-1", "id-2"]
        assert os.listdir(tmp_path / OWNERS) == [f"{second.owner}.lock"]
    finally:
        second.close()


def test_a_live_owners_claim_is_left_alone(tmp_path, spool):
    spool.append(records(2))
    spool.claim(1)
    other = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    try:
        assert other.adopt_orphans() == 0
        assert ids(other.claim(10)) == ["id-1"]
    finally:
        other.close()


def _program(code: str, directory) -> list[str]:
    """A Python process opening the spool in ``directory`` as ``spool``, then running ``code``."""
    opening = textwrap.dedent(f"""
        import os, signal
        from otel_arthur.mapping import InferenceRecord
        from otel_arthur.spool import Spool
        spool = Spool({str(directory)!r}, {DESTINATION!r}, max_bytes=10_000_000)
    """)
    return [sys.executable, "-c", opening + textwrap.dedent(code)]


def test_rows_in_flight_of_a_killed_process_are_adopted_at_open(tmp_path):
    spool = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    spool.append(records(5))
    spool.close()
    killed = subprocess.run(_program("spool.claim(3)\nos.kill(os.getpid(), signal.SIGKILL)\n", tmp_path), timeout=60)
    assert killed.returncode == -signal.SIGKILL
    reopened = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    try:
        assert ids(reopened.claim(10)) == [f"id-{i}" for i in range(5)]
        assert os.listdir(tmp_path / OWNERS) == [f"{reopened.owner}.lock"]  # the dead owner's lock file is swept
    finally:
        reopened.close()


def test_two_processes_writing_at_once_lose_nothing_and_corrupt_nothing(tmp_path):
    code = """
        which = os.environ["WHICH"]
        for i in range(200):
            spool.append([InferenceRecord(f"p{which}-{i}", "2024-05-01T12:00:00+00:00", {"prompt": "x"})])
            if i % 3 == 0:
                for claimed in spool.claim(2):
                    spool.settle(acked=[claimed.seq])
        spool.close()
    """
    writers = [subprocess.Popen(_program(code, tmp_path), env=os.environ | {"WHICH": str(n)},
                                stderr=subprocess.PIPE, text=True) for n in range(2)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    spool = Spool(tmp_path, DESTINATION, max_bytes=10_000_000)
    try:
        remaining = ids(spool.claim(1000))
        assert len(set(remaining)) == len(remaining) and 0 < len(remaining) < 400
        assert spool.gauges().depth == len(remaining)
    finally:
        spool.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_spool_files_are_private(tmp_path):
    Spool(tmp_path / "new", DESTINATION, max_bytes=1_000).close()
    modes = {path: oct(path.stat().st_mode & 0o777) for path in (tmp_path / "new", tmp_path / "new" / FILE_NAME)}
    assert list(modes.values()) == ["0o700", "0o600"]


def test_can_write_probes_the_directory_and_leaves_nothing_behind(tmp_path):
    spool = Spool(tmp_path / "spool", DESTINATION, max_bytes=1_000_000)
    try:
        before = sorted(os.listdir(spool.directory))
        assert spool.can_write()
        assert sorted(os.listdir(spool.directory)) == before
        os.rename(spool.directory, tmp_path / "moved")  # gone from where it was: nothing can be written there
        assert not spool.can_write()
    finally:
        spool.close()


# The file as spools were written before the totals were kept by transactions: per-row triggers kept them.
_SPOOL_WITH_TRIGGERS = """
CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL,
    partner_inference_id TEXT NOT NULL, body TEXT NOT NULL, size INTEGER NOT NULL, enqueued_at REAL NOT NULL, owner TEXT);
CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, destination TEXT NOT NULL, partner_inference_id TEXT NOT NULL,
    body TEXT NOT NULL, size INTEGER NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL, dead_at REAL NOT NULL);
CREATE TABLE totals (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO totals VALUES ('records', 0, 0), ('dead_letters', 0, 0);
""" + "".join(f"""
CREATE TRIGGER {table}_added AFTER INSERT ON {table} BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + NEW.size WHERE name = '{table}'; END;
CREATE TRIGGER {table}_removed AFTER DELETE ON {table} BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - OLD.size WHERE name = '{table}'; END;
""" for table in ("records", "dead_letters"))


def test_a_spool_of_the_trigger_format_opens_with_its_records_and_keeps_its_totals_right(tmp_path):
    from otel_arthur.spool import encode

    old = sqlite3.connect(tmp_path / FILE_NAME)
    old.executescript(_SPOOL_WITH_TRIGGERS)
    bodies = [encode(r) for r in records(3)]
    old.executemany("INSERT INTO records (destination, partner_inference_id, body, size, enqueued_at)"
                    " VALUES (?, ?, ?, ?, 0)", [(DESTINATION, f"id-{i}", b, len(b)) for i, b in enumerate(bodies)])
    old.execute("INSERT INTO dead_letters VALUES (100, ?, 'dead', ?, ?, 'record_rejected', '400', 0)",
                (DESTINATION, bodies[0], len(bodies[0])))
    old.commit()
    old.close()
    size = len(bodies[0])  # all three bodies are alike in length
    spool = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    try:
        assert (spool.gauges().depth, spool.gauges().bytes, spool.gauges().dead_letters) == (3, 4 * size, 1)
        a, b, c = spool.claim(10)
        assert [a.record, b.record, c.record] == records(3)
        spool.settle(acked=[a.seq], refused=[Refused(b.seq, "record_rejected", "400")])
        spool.append(records(1, start=3))
        # With the triggers left in place every change would count twice.
        gauges = spool.gauges()
        assert (gauges.depth, gauges.dead_letters) == (2, 2)
        assert gauges.bytes == sum(row[0] for row in sqlite3.connect(tmp_path / FILE_NAME).execute(
            "SELECT size FROM records UNION ALL SELECT size FROM dead_letters"))
    finally:
        spool.close()


def test_totals_follow_every_change_of_the_file(tmp_path):
    spool = Spool(tmp_path, DESTINATION, max_bytes=3_000)
    try:
        spool.append(records(20))  # over the bound: the oldest dropped
        claimed = spool.claim(5)
        spool.settle(acked=[claimed[0].seq], refused=[Refused(claimed[1].seq, "record_rejected", "400")],
                     released=[c.seq for c in claimed[2:]])
        assert spool.requeue_dead_letters() == 1
        [again] = [c for c in spool.claim(50) if c.record.partner_inference_id == claimed[1].record.partner_inference_id]
        spool.settle(refused=[Refused(again.seq, "record_rejected", "400")])
        spool.purge(dead_letters=True)
        with sqlite3.connect(tmp_path / FILE_NAME) as db:
            counted = db.execute("SELECT COUNT(*), SUM(size) FROM records").fetchone()
            assert db.execute("SELECT rows, bytes FROM totals WHERE name = 'records'").fetchone() == counted
            assert db.execute("SELECT rows, bytes FROM totals WHERE name = 'dead_letters'").fetchone() == (0, 0)
    finally:
        spool.close()


def test_settling_every_record_in_flight_deletes_those_and_no_other_row_in_their_seq_range(tmp_path, spool):
    """Acknowledging all of a handle's in-flight records deletes by seq range: rows in that range that are
    another process's in flight, still in flight or released stay."""
    other = Spool(tmp_path, DESTINATION, max_bytes=1_000_000)
    try:
        spool.append(records(8))
        first = spool.claim(2)  # id-0, id-1
        theirs = other.claim(2)  # id-2, id-3
        second = spool.claim(2)  # id-4, id-5
        spool.settle(acked=[first[0].seq, second[1].seq])  # id-1 and id-4 still in flight
        assert spool.pending() == 6
        spool.settle(acked=[first[1].seq, second[0].seq])
        assert spool.pending() == 4
        third = spool.claim(2)  # id-6, id-7
        spool.settle(acked=[third[0].seq], released=[third[1].seq])
        assert ids(spool.claim(10)) == ["id-7"]
        assert spool.pending() == 3 and ids(theirs) == ["id-2", "id-3"]
        other.settle(acked=[c.seq for c in theirs])
        assert spool.pending() == 1 and spool.gauges().depth == 1
    finally:
        other.close()
