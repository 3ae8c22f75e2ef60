"""Helpers shared by the ``serve`` test modules: an in-process serve (HTTP and gRPC), OTLP bodies, figures."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from otel_arthur.config import ArthurSettings, EngineSettings, ReceiverSettings
from otel_arthur.destinations import destination_for
from otel_arthur.local import arthur
from otel_arthur.local.runner import BackgroundServer
from otel_arthur.pipeline import Pipeline, shutdown_side_by_side
from otel_arthur.retry import RetryPolicy
from otel_arthur.serve.app import KEEP_ALIVE_SECONDS, TRACES_PATH, create_app
from otel_arthur.serve.grpc_receiver import GrpcReceiver
from otel_arthur.serve.receiver import Receiver

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
QUICK = RetryPolicy(initial_interval=0.05, max_interval=0.5, max_elapsed=30)


def arthur_settings(url: str, model_id: str, spool_dir: Path, **overrides: Any) -> ArthurSettings:
    return ArthurSettings(url=url, model_id=model_id, api_key=arthur.DEFAULT_API_KEY, allow_insecure=True,
                          spool_dir=str(spool_dir), **overrides)


@dataclass
class Served:
    url: str
    pipelines: list[Pipeline]
    receiver: Receiver

    @property
    def pipeline(self) -> Pipeline:
        return self.pipelines[0]

    @property
    def traces(self) -> str:
        return self.url + TRACES_PATH


@contextmanager
def serving(settings: ArthurSettings | EngineSettings | Sequence[ArthurSettings | EngineSettings],
            receiver: ReceiverSettings | None = None, retry_policy: RetryPolicy = QUICK) -> Iterator[Served]:
    """``serve`` in this process on 127.0.0.1 at ``receiver.port`` (0: a free one), to one destination or
    several; stopped, and its pipelines shut down, whatever happens."""
    each = settings if isinstance(settings, Sequence) else [settings]
    pipelines = [Pipeline(to=destination_for(s), retry_policy=retry_policy) for s in each]
    receiver = receiver or ReceiverSettings(port=0, shutdown_timeout=5)
    lifecycle = None
    try:
        app = create_app(pipelines, receiver)
        lifecycle = app.state.lifecycle
        with BackgroundServer(app, port=receiver.port, timeout_keep_alive=KEEP_ALIVE_SECONDS) as server:
            yield Served(server.url, pipelines, app.state.receiver)
    finally:
        if lifecycle is not None:
            lifecycle.shutdown()  # a no-op once the server's lifespan has done it
        else:
            shutdown_side_by_side(pipelines, 0)


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """``condition()``'s first truthy value, polled until ``timeout``; fails the test otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {condition}")
        time.sleep(interval)


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON per the spec: hex ids, enums as integers (protobuf's own JSON mapping has base64 ids)."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document).encode()




@contextmanager
def grpc_serving(receiver: Receiver, settings: ReceiverSettings | None = None) -> Iterator[GrpcReceiver]:
    """serve's OTLP/gRPC receiver over ``receiver`` on a free 127.0.0.1 port (``.port``); stopped whatever happens."""
    server = GrpcReceiver(receiver, settings or ReceiverSettings(grpc_port=0))
    server.start()
    try:
        yield server
    finally:
        server.stop(0).wait(10)
