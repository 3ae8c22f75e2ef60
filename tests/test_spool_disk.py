"""The spool's files on disk: what the byte bound costs there, and a damaged file moved aside for a fresh one."""

from __future__ import annotations

import os
from pathlib import Path

from otel_arthur.mapping import InferenceRecord
from otel_arthur.spool import Spool

DESTINATION = "http://arthur.example model-1"
MiB = 1024 * 1024


def records(count: int, start: int = 0, text: str = "x" * 1000) -> list[InferenceRecord]:
    return [InferenceRecord(f"{i:032x}-{i:016x}", "2024-05-01T12:00:00+00:00", {"prompt": text, "n": i})
            for i in range(start, start + count)]


def on_disk(directory: Path) -> int:
    """Bytes of the spool file, its write-ahead log and the log's index."""
    return sum(path.stat().st_size for path in directory.glob("spool.sqlite3*"))


def test_disk_use_stays_a_small_multiple_of_a_small_bound(tmp_path):
    spool = Spool(tmp_path, DESTINATION, max_bytes=MiB)
    peak = 0
    try:
        for batch in range(100):  # ~10 MB through a 1 MiB spool: full for the first half, then drained
            spool.append(records(100, start=100 * batch))
            claimed = spool.claim(50 if batch < 50 else 200)
            spool.settle(acked=[c.seq for c in claimed])
            assert spool.gauges().bytes <= MiB
            peak = max(peak, on_disk(tmp_path))
    finally:
        spool.close()
    assert peak <= 2 * MiB, f"{peak / MiB:.1f} MiB on disk for a 1 MiB bound"
    assert os.path.getsize(tmp_path / "spool.sqlite3") <= 1.5 * MiB
