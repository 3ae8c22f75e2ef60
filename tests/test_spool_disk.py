"""The spool's files on disk: what the byte bound costs there, and a damaged file moved aside for a fresh one."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

from otel_arthur import cli, exit_codes
from otel_arthur.config import ArthurSettings
from otel_arthur.destinations.v3 import destination
from otel_arthur.mapping import InferenceRecord
from otel_arthur.pipeline import Pipeline
from otel_arthur.retry import RetryPolicy
from otel_arthur.spool import FILE_NAME, Spool, damaged_copies

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


# -- a damaged file -------------------------------------------------------------------------------

def damaged_spool(directory: Path, destination: str, count: int = 9000) -> None:
    """A spool of ``count`` records whose pages in the middle of the file were overwritten with garbage."""
    spool = Spool(directory, destination, max_bytes=10**9)
    for start in range(0, count, 1000):
        spool.append(records(1000, start=start, text="x" * 500))
    spool.close()  # the log is checkpointed into the file
    path = directory / FILE_NAME
    with path.open("r+b") as file:
        file.seek(path.stat().st_size // 2)
        file.write(os.urandom(20_000))


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.02)
    return value


def test_a_damaged_spool_is_kept_aside_once_and_the_pipeline_delivers_new_records(local_arthur, new_model, tmp_path,
                                                                                caplog, capsys):
    settings = ArthurSettings.resolve(url=local_arthur.url, api_key=local_arthur.api_key, allow_insecure=True,
                                      model_id=new_model(), spool_dir=tmp_path)
    damaged_spool(tmp_path, destination(settings))
    other = Spool(tmp_path, destination(settings), max_bytes=10**9)  # another process on the same file
    caplog.set_level(logging.INFO, logger="otel_arthur")
    pipeline = Pipeline(settings, retry_policy=RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=5))
    try:
        recovered = wait_for(lambda: pipeline.readiness().spool_recovered_from)
        [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert f"The spool {tmp_path / FILE_NAME} is damaged" in error and "9000 records" in error
        assert recovered in error and damaged_copies(str(tmp_path)) == [recovered]
        fresh = [InferenceRecord(f"new-{uuid.uuid4().hex}", "2024-05-01T12:00:00+00:00", {"prompt": "hi"})
                 for _ in range(3)]
        assert pipeline.submit(fresh) and pipeline.force_flush(30)
        assert {r["partner_inference_id"] for r in local_arthur.inferences(settings.model_id)} == \
            {r.partner_inference_id for r in fresh}
        other.check()  # the other handle finds the file sound: nothing more is copied or logged
        assert other.append(records(1, start=10**6)).stored == 1 and other.recovered_from is None
        assert damaged_copies(str(tmp_path)) == [recovered]
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        assert pipeline.readiness().ready
    finally:
        other.close()
        pipeline.shutdown(5)
    assert cli.main(["spool", "stats", "--spool-dir", str(tmp_path)]) == 0
    assert f"damaged       {recovered} (a copy of the spool found damaged" in capsys.readouterr().out
    assert cli.main(["spool", "stats", "--json", "--spool-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["damaged_copies"] == [recovered]


def test_damage_met_by_an_operation_replaces_the_file_and_the_operation_goes_on(tmp_path, caplog):
    spool = Spool(tmp_path, DESTINATION, max_bytes=10**9)
    try:
        spool.append(records(9000, text="x" * 500))
        spool.claim(9000)  # the log is checkpointed as it grows: the records' pages are in the file
        path = tmp_path / FILE_NAME
        with path.open("r+b") as file:
            file.seek(path.stat().st_size // 2)
            file.write(os.urandom(20_000))
        with caplog.at_level(logging.ERROR, logger="otel_arthur"):
            spool.settle(acked=list(range(1, 9001)))
            appended = spool.append(records(2, start=10**6))
        assert appended.stored == 2 and [c.record.partner_inference_id for c in spool.claim(10)] == \
            [r.partner_inference_id for r in records(2, start=10**6)]
        assert spool.recovered_from is not None and damaged_copies(str(tmp_path)) == [spool.recovered_from]
        assert len(caplog.records) == 1 and "is damaged" in caplog.records[0].getMessage()
        assert oct(os.stat(spool.recovered_from).st_mode & 0o777) == "0o600"  # it holds prompts
    finally:
        spool.close()


def test_a_file_that_is_no_database_is_replaced_at_open(tmp_path, caplog):
    damaged_spool(tmp_path, DESTINATION, count=1000)
    with (tmp_path / FILE_NAME).open("r+b") as file:
        file.write(os.urandom(100))  # over SQLite's header
    with caplog.at_level(logging.ERROR, logger="otel_arthur"):
        spool = Spool(tmp_path, DESTINATION, max_bytes=10**9)
    try:
        assert "file is not a database" in caplog.text and spool.recovered_from in caplog.text
        assert spool.append(records(1)).stored == 1 and len(spool.claim(10)) == 1
    finally:
        spool.close()


def test_the_inspecting_commands_say_the_spool_is_damaged_and_leave_it_alone(local_arthur, new_model, tmp_path,
                                                                             capsys):
    damaged_spool(tmp_path, DESTINATION)
    before = (tmp_path / FILE_NAME).read_bytes()
    assert cli.main(["spool", "stats", "--spool-dir", str(tmp_path)]) == exit_codes.SPOOL
    assert "damaged, quick_check says: " in capsys.readouterr().err
    code = cli.main(["doctor", "--client", "native", "--url", local_arthur.url, "--allow-insecure", "--api-key",
                     local_arthur.api_key, "--model-id", new_model(), "--spool-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == exit_codes.SPOOL and "damaged, quick_check says: " in err and "starts afresh" in err
    assert (tmp_path / FILE_NAME).read_bytes() == before and damaged_copies(str(tmp_path)) == []
