"""CPU µs per span of ``serve``'s decode → map → privacy path, stage by stage, on the load client's bodies.

    uv run --frozen python benchmarks/profile_serve.py [--requests 40]

The bodies are ``load_client.bodies``: 512-span protobuf requests (~2 KB, 23 attributes per
generation span), fresh ids per request. Each stage runs over every body on its own and is
timed with ``time.process_time`` (CPU of this process, so other work on a busy machine counts
little), best of ``--rounds``; per generation span, and for mixed traffic (one generation in ten)
per ignored span. Spooling and delivery are not here (``benchmarks/serve_bench.py`` measures them).
Stages beside ``serve``'s own: the Engine translation of the same requests (it runs in ``serve``
when the Engine destination is on), both destinations' work (sharing the attributes converted), and the in-app exporter's mapping of the SDK spans the bodies
were encoded from.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import sdk_spans  # noqa: E402
from load_client import BATCH, bodies  # noqa: E402


def _cpu(run: Callable[[], Any], rounds: int) -> float:
    """Best CPU seconds of ``rounds`` runs."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="distinct bodies (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per stage, best kept (default: %(default)s)")
    args = parser.parse_args()

    from otel_arthur import otlp
    from otel_arthur.config import ArthurSettings, EngineSettings
    from otel_arthur.destinations import OtlpExtraction, destination_for
    from otel_arthur.destinations.v3 import V3Destination
    from otel_arthur.mapping import map_spans

    generation = bodies("generation", args.requests)
    mixed = bodies("mixed", args.requests)
    spans = len(generation) * BATCH
    parsed = [otlp.parse_request(body, otlp.PROTOBUF) for body, _ in generation]
    extracted = [list(otlp.generation_spans(request)) for request in parsed]
    records = [map_spans(s).records for s in extracted]
    settings = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                      spool_dir="/tmp/unused")
    destination = V3Destination(settings)
    redacting = V3Destination(ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m",
                                                     allow_insecure=True, spool_dir="/tmp/unused", redact_builtins="builtin"))
    extraction = OtlpExtraction()
    engine_settings = EngineSettings.resolve(engine_url="http://127.0.0.1:9", engine_api_key="k", task_id="t",
                                             allow_insecure=True, spool_dir="/tmp/unused")
    engine = destination_for(engine_settings)
    both = OtlpExtraction(engine=engine_settings)
    sdk_batch = list(sdk_spans(BATCH))

    stages: dict[str, Callable[[], Any]] = {
        "protobuf parse": lambda: [otlp.parse_request(body, otlp.PROTOBUF) for body, _ in generation],
        "to plain spans (markers, attributes, resource)": lambda: [list(otlp.generation_spans(r)) for r in parsed],
        "map (records from plain spans)": lambda: [map_spans(s) for s in extracted],
        "privacy filter, off": lambda: [[destination.prepare(r) for r in rs] for rs in records],
        "privacy filter, all redaction on": lambda: [[redacting.prepare(r) for r in rs] for rs in records],
        "decode_request total (parse + extract + map)": lambda: [extraction(otlp.parse_request(body, otlp.PROTOBUF))
                                                                 for body, _ in generation],
        "Engine translation (from_otlp, after parsing)": lambda: [engine.from_otlp(r) for r in parsed],
        "v3 and Engine both (extraction, after parsing)": lambda: [both(r) for r in parsed],
        "in-app: map SDK spans (v3 records)": lambda: [map_spans(sdk_batch) for _ in generation],
    }
    _cpu(stages["decode_request total (parse + extract + map)"], 1)  # price table loaded, caches warm
    print(f"{spans} generation spans in {len(generation)} requests; CPU µs per generation span, best of {args.rounds}")
    for name, run in stages.items():
        print(f"  {name:<48} {_cpu(run, args.rounds) / spans * 1e6:7.2f}")

    # The mixed bodies' other spans alone (generations taken out after parsing): what ignoring one costs.
    ignored_only = [otlp.parse_request(body, otlp.PROTOBUF) for body, _ in mixed]
    for request in ignored_only:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                kept = [span for span in scope_spans.spans if not list(otlp.generation_spans(_alone(span)))]
                del scope_spans.spans[:]
                scope_spans.spans.extend(kept)
    count = sum(otlp.count_spans(request) for request in ignored_only)
    cpu = _cpu(lambda: [extraction(request) for request in ignored_only], args.rounds)
    print(f"mixed traffic (1 in 10 a generation): CPU µs per ignored span, after parsing {cpu / count * 1e6:.2f}")


def _alone(span: Any) -> Any:
    """A request holding only ``span``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    return request

if __name__ == "__main__":
    main()
