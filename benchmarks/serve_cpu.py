"""CPU per generation span of ``serve``'s work, ingest and delivery together, without its HTTP server.

    uv run --frozen python benchmarks/serve_cpu.py [--requests 40]

``Receiver.handle`` takes the load client's 512-span bodies (fresh ids per request) into a pipeline
that delivers to a local Arthur (its CPU not counted), as ``serve`` does; the figure is this process's
CPU (``time.process_time``: every thread) from the first request until Arthur holds every record, per
generation span. ``serve_bench.py`` measures the whole server; this leaves out the HTTP stack (~2 µs)
and the load on a shared machine, so a change of a few µs shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from load_client import BATCH, bodies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="512-span requests (default: %(default)s)")
    args = parser.parse_args()

    from otel_arthur.config import ArthurSettings
    from otel_arthur.pipeline import Pipeline
    from otel_arthur.serve.receiver import Receiver

    requests = [body for body, _ in bodies("generation", args.requests)]
    headers = {"content-type": "application/x-protobuf"}
    with tempfile.TemporaryDirectory(prefix="otel-arthur-serve-cpu-") as work, \
            c.local_arthur(Path(work), Path(work) / "arthur.sqlite3") as arthur:
        settings = ArthurSettings.resolve(url=arthur.url, api_key=c.API_KEY, model_id=c.create_model(arthur.url),
                                          allow_insecure=True, spool_dir=str(Path(work) / "spool"))
        pipeline = Pipeline(settings)
        try:
            receiver = Receiver(pipeline)
            deadline = time.monotonic() + 60
            while not pipeline.readiness().model_fetched:  # the model is fetched before the clock starts
                assert time.monotonic() < deadline, "the model was not fetched"
                time.sleep(0.05)
            cpu = time.process_time()
            for body in requests:
                assert receiver.handle(body, headers).status == 200
            handled = time.process_time() - cpu
            assert pipeline.force_flush(600), "not every record was delivered"
            cpu = time.process_time() - cpu
        finally:
            pipeline.shutdown()
        spans = args.requests * BATCH
        print(f"serve without HTTP: {cpu / spans * 1e6:.1f} µs CPU per generation span, ingest and delivery"
              f" ({handled / spans * 1e6:.1f} of it while handling requests; {spans} spans)")


if __name__ == "__main__":
    main()
