"""The local Arthur Engine stand-in, driven by the real OTLP/HTTP span exporter and by raw HTTP."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur.cli import build_parser
from otel_arthur.local import arthur_faults, engine
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.local.engine_store import UNMAPPED_TASK_ID

PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def faulty_engine() -> Iterator[engine.RunningLocalEngine]:
    """A stand-in of its own, for tests that switch faults on."""
    with engine.running() as server:
        yield server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(server: engine.RunningLocalEngine) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def finished_spans(resource: Resource) -> list[ReadableSpan]:
    """An agent span and its LLM child, as the SDK finishes them under ``resource``."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test_local_engine")
    with tracer.start_as_current_span("agent"):
        attributes = {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o", "llm.token_count.total": 7}
        with tracer.start_as_current_span("chat gpt-4o", attributes=attributes):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def exporter(server: engine.RunningLocalEngine, **options: Any) -> OTLPSpanExporter:
    """The OTLP/HTTP exporter as Arthur's own SDK sets it up: Bearer key, protobuf, no compression by default."""
    return OTLPSpanExporter(endpoint=server.traces_url, headers=bearer(server), timeout=5, **options)


def body_of(*resources: Sequence[ReadableSpan]) -> bytes:
    request = ExportTraceServiceRequest()
    for spans in resources:
        request.resource_spans.extend(encode_spans(spans).resource_spans)
    return request.SerializeToString()


def post_traces(server: engine.RunningLocalEngine, body: bytes, path: str = engine.TRACES_PATH,
                headers: dict[str, str] | None = None) -> requests.Response:
    sent = bearer(server) | PROTOBUF if headers is None else headers
    return requests.post(f"{server.url}{path}", data=body, headers=sent, timeout=10)


def new_task(server: engine.RunningLocalEngine, name: str) -> dict[str, Any]:
    response = requests.post(f"{server.url}/api/v2/tasks", json={"name": name}, headers=bearer(server), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def traces_counts(server: engine.RunningLocalEngine) -> dict[str, int]:
    return server.stats()["requests"].get(f"POST {engine.TRACES_PATH}", {})


# --- the real exporter ------------------------------------------------------------------------------


def test_the_otlp_exporter_uncompressed_is_stored_under_a_task_auto_created_for_its_service(local_engine):
    service = unique("chat-app")
    spans = finished_spans(Resource.create({"service.name": service}))

    assert exporter(local_engine).export(spans) == SpanExportResult.SUCCESS

    [task] = [t for t in local_engine.store.tasks() if t["name"] == service]
    assert task["is_autocreated"] and task["is_agentic"] and task["service_names"] == [service]
    stored = local_engine.spans(task_id=task["id"])
    assert [s["name"] for s in stored] == ["chat gpt-4o", "agent"]  # the child ends first
    chat, agent = stored
    assert chat["trace_id"] == agent["trace_id"] == format(spans[0].context.trace_id, "032x")
    assert chat["parent_span_id"] == agent["span_id"] == format(spans[1].context.span_id, "016x")
    assert agent["parent_span_id"] is None
    assert chat["attributes"] == {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o",
                                  "llm.token_count.total": 7}
    assert chat["resource_attributes"]["service.name"] == service
    assert chat["kind"] == "SPAN_KIND_INTERNAL" and chat["status_code"] == "Unset"
    assert chat["end_time_unix_nano"] >= chat["start_time_unix_nano"] > 0

    # The service is mapped now: its next traces go to the same task, no second task appears.
    assert exporter(local_engine).export(finished_spans(Resource.create({"service.name": service}))) == \
        SpanExportResult.SUCCESS
    assert len(local_engine.spans(task_id=task["id"])) == 4
    assert [t["name"] for t in local_engine.store.tasks()].count(service) == 1


def test_the_otlp_exporter_with_gzip_is_refused_400_as_the_engine_does_and_nothing_is_stored(local_engine):
    service = unique("gzip-app")
    before = traces_counts(local_engine).get("400", 0)

    result = exporter(local_engine, compression=Compression.Gzip).export(
        finished_spans(Resource.create({"service.name": service})))

    assert result == SpanExportResult.FAILURE
    assert traces_counts(local_engine)["400"] == before + 1
    raw = post_traces(local_engine, gzip.compress(body_of(finished_spans(Resource.create({"service.name": service})))),
                      headers=bearer(local_engine) | PROTOBUF | {"Content-Encoding": "gzip"})
    assert (raw.status_code, raw.json()) == (400, {"detail": "Invalid protobuf message format"})
    assert not [s for s in local_engine.spans() if s["resource_attributes"].get("service.name") == service]


@pytest.mark.parametrize("content_type", ["application/json", None], ids=["json", "no-content-type"])
def test_an_otlp_json_body_is_refused_400(local_engine, content_type):
    headers = bearer(local_engine) | ({"Content-Type": content_type} if content_type else {})
    response = post_traces(local_engine, b'{"resourceSpans": []}', headers=headers)
    assert response.status_code == 400 and "valid bytes" in response.json()["detail"]
    assert post_traces(local_engine, b"", headers=bearer(local_engine) | PROTOBUF).status_code == 400


def test_a_request_without_spans_is_a_success(local_engine):
    request = ExportTraceServiceRequest()
    request.resource_spans.add().resource.attributes.add(key="deployment.environment").value.string_value = "test"
    response = post_traces(local_engine, request.SerializeToString())  # an empty request would be an empty body
    assert (response.status_code, response.json()) == (200, {
        "total_spans": 0, "accepted_spans": 0, "rejected_spans": 0, "rejection_reasons": [], "status": "success"})


# --- authentication ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("authorization", "detail"), [
    (None, "Requires authentication"),
    ("Bearer wrong-key", "Bad credentials"),
    ("local-engine-api-key", "Bad credentials"),  # the key without its scheme
    ("Basic local-engine-api-key", "Bad credentials"),
], ids=["missing", "wrong-key", "no-scheme", "basic"])
def test_traces_and_tasks_need_the_bearer_key(local_engine, authorization, detail):
    headers = PROTOBUF | ({"Authorization": authorization} if authorization else {})
    # a body that would be a 400: authentication is answered first
    refused = post_traces(local_engine, b"not protobuf", headers=headers)
    assert (refused.status_code, refused.json()) == (401, {"detail": detail})
    task = requests.get(f"{local_engine.url}/api/v2/tasks/{UNMAPPED_TASK_ID}", headers=headers, timeout=10)
    assert task.status_code == 401


# --- routing ----------------------------------------------------------------------------------------


def test_arthur_task_wins_over_the_service_name(local_engine):
    task = new_task(local_engine, unique("named-task"))
    service = unique("svc")
    spans = finished_spans(Resource.create({"service.name": service, "arthur.task": task["id"]}))

    assert exporter(local_engine).export(spans) == SpanExportResult.SUCCESS

    assert len(local_engine.spans(task_id=task["id"])) == 2
    assert service not in [t["name"] for t in local_engine.store.tasks()]  # nothing auto-created


def test_an_unknown_arthur_task_is_a_500_and_nothing_of_the_request_is_stored(local_engine):
    unknown = str(uuid.uuid4())
    good_service = unique("good")
    body = body_of(finished_spans(Resource.create({"service.name": good_service})),
                   finished_spans(Resource.create({"service.name": unique("bad"), "arthur.task": unknown})))

    response = post_traces(local_engine, body)

    assert (response.status_code, response.json()) == (
        500, {"detail": "(sqlite3.IntegrityError) FOREIGN KEY constraint failed"})
    assert local_engine.spans(task_id=unknown) == []
    [good_task] = [t for t in local_engine.store.tasks() if t["name"] == good_service]  # created before the insert
    assert local_engine.spans(task_id=good_task["id"]) == []


def test_a_mapped_service_name_routes_to_its_task_and_no_service_name_to_unmapped(local_engine):
    task = new_task(local_engine, unique("mapped"))
    service = unique("mapped-svc")
    local_engine.store.map_service_name(service, task["id"])
    before_unmapped = len(local_engine.spans(task_id=UNMAPPED_TASK_ID))

    response = post_traces(local_engine, body_of(finished_spans(Resource.create({"service.name": service})),
                                                 finished_spans(Resource({"deployment.environment": "test"}))))

    assert response.status_code == 200 and response.json()["accepted_spans"] == 4
    assert len(local_engine.spans(task_id=task["id"])) == 2
    assert len(local_engine.spans(task_id=UNMAPPED_TASK_ID)) == before_unmapped + 2


# --- partial success --------------------------------------------------------------------------------


def test_a_span_with_a_bad_id_is_rejected_inside_a_206_and_the_rest_stored(local_engine):
    service = unique("partial")
    request = ExportTraceServiceRequest.FromString(body_of(finished_spans(Resource.create({"service.name": service}))))
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b""

    response = post_traces(local_engine, request.SerializeToString())

    answer = response.json()
    assert response.status_code == 206 and answer["status"] == "partial_success"
    assert (answer["total_spans"], answer["accepted_spans"], answer["rejected_spans"]) == (2, 1, 1)
    assert answer["rejection_reasons"] == [
        "Invalid span data format: trace_id must be 16 bytes, not all zero; got 0 bytes ''"]
    [task] = [t for t in local_engine.store.tasks() if t["name"] == service]
    assert [s["name"] for s in local_engine.spans(task_id=task["id"])] == ["agent"]

    for span in request.resource_spans[0].scope_spans[0].spans:
        span.span_id = bytes(8)
    failure = post_traces(local_engine, request.SerializeToString())
    assert failure.status_code == 422 and failure.json()["status"] == "failure"
    assert failure.json()["accepted_spans"] == 0


# --- tasks ------------------------------------------------------------------------------------------


def test_tasks_are_created_and_read_back_as_the_engine_answers_them(local_engine):
    name = unique("doctor-task")
    created = new_task(local_engine, name)

    read = requests.get(f"{local_engine.url}/api/v2/tasks/{created['id']}", headers=bearer(local_engine), timeout=10)

    assert read.status_code == 200 and read.json() == created
    assert created["name"] == name and uuid.UUID(created["id"])
    assert isinstance(created["created_at"], int) and created["is_archived"] is False
    assert {"is_agentic", "is_autocreated", "is_system_task", "rules", "metrics"} <= set(created)
    unknown = str(uuid.uuid4())
    missing = requests.get(f"{local_engine.url}/api/v2/tasks/{unknown}", headers=bearer(local_engine), timeout=10)
    assert (missing.status_code, missing.json()) == (404, {"detail": f"Task {unknown} not found."})
    not_uuid = requests.get(f"{local_engine.url}/api/v2/tasks/not-a-uuid", headers=bearer(local_engine), timeout=10)
    assert not_uuid.status_code == 400
    blank = requests.post(f"{local_engine.url}/api/v2/tasks", json={"name": "  "}, headers=bearer(local_engine),
                          timeout=10)
    assert blank.status_code == 400


def test_the_unmapped_task_exists_from_the_start(local_engine):
    read = requests.get(f"{local_engine.url}/api/v2/tasks/{UNMAPPED_TASK_ID}", headers=bearer(local_engine), timeout=10)
    assert read.status_code == 200 and read.json()["name"] == "__unmapped__" and read.json()["is_system_task"]


# --- local reads ------------------------------------------------------------------------------------


def test_local_reads_filter_spans_by_task_and_trace_and_count_requests(local_engine):
    task = new_task(local_engine, unique("reads"))
    first, second = (finished_spans(Resource.create({"arthur.task": task["id"]})) for _ in range(2))
    assert post_traces(local_engine, body_of(first, second)).status_code == 200
    trace_id = format(first[0].context.trace_id, "032x")

    by_trace = requests.get(f"{local_engine.url}/_local/spans", params={"trace_id": trace_id}, timeout=10).json()
    by_task = requests.get(f"{local_engine.url}/_local/spans", params={"task_id": task["id"]}, timeout=10).json()

    assert {s["trace_id"] for s in by_trace} == {trace_id} and len(by_trace) == 2
    assert len(by_task) == 4
    tasks = requests.get(f"{local_engine.url}/_local/tasks", timeout=10).json()
    assert task["id"] in [t["id"] for t in tasks]
    stats = requests.get(f"{local_engine.url}/_local/stats", timeout=10).json()
    assert stats["by_task"][task["id"]] == 4 and stats["requests"][f"POST {engine.TRACES_PATH}"]["200"] >= 1
    assert not [path for path in stats["requests"] if path.split()[1].startswith("/_local")]


def test_the_deprecated_route_takes_traces_too(local_engine):
    task = new_task(local_engine, unique("deprecated"))
    response = post_traces(local_engine, body_of(finished_spans(Resource.create({"arthur.task": task["id"]}))),
                           path=engine.DEPRECATED_TRACES_PATH)
    assert response.status_code == 200 and len(local_engine.spans(task_id=task["id"])) == 2


# --- faults -----------------------------------------------------------------------------------------


def test_request_faults_answer_as_the_engine_would_and_local_reads_are_never_faulted(faulty_engine):
    body = body_of(finished_spans(Resource.create({"service.name": "faulted"})))
    faulty_engine.faults.set(Faults(rate_429=1.0, retry_after=4))
    throttled = post_traces(faulty_engine, body)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "4")
    assert throttled.json() == {"detail": "fault injected: 429"}

    answer = requests.post(f"{faulty_engine.url}/_local/faults", json={"rate_503": 1.0}, timeout=10)
    assert answer.status_code == 200 and answer.json()["faults"]["rate_503"] == 1.0
    assert post_traces(faulty_engine, body).status_code == 503
    assert requests.get(f"{faulty_engine.url}/_local/spans", timeout=10).json() == []  # faulted: never stored
    faulty_engine.faults.set(Faults(rate_drop=1.0))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        post_traces(faulty_engine, body)
    assert requests.get(f"{faulty_engine.url}/_local/faults", timeout=10).json()["injected"] == {"drop": 1}
    assert faulty_engine.stats()["requests"]["POST <fault injected>"] == {"429": 1, "503": 1, "502": 1}


def test_per_span_faults_reject_inside_a_206_the_same_way_for_the_same_seed(faulty_engine):
    spans = [span for _ in range(5) for span in finished_spans(Resource.create({"service.name": "seeded"}))]
    body = body_of(spans)

    answers = []
    for _ in range(2):
        faulty_engine.faults.set(Faults(rate_record_400=0.3, rate_record_500=0.2, seed=3))
        answers.append(post_traces(faulty_engine, body))

    first, second = (a.json() for a in answers)
    assert answers[0].status_code == 206 and first == second
    assert 0 < first["rejected_spans"] < 10 and first["accepted_spans"] + first["rejected_spans"] == 10
    assert {r.rsplit(" ", 1)[0] for r in first["rejection_reasons"]} == {
        "Invalid span data format: fault injected: record"}
    assert len(faulty_engine.spans()) == 2 * first["accepted_spans"]


def test_cli_flags_set_the_engines_faults_and_key():
    args = build_parser().parse_args(["local-engine", "--port", "3031", "--api-key", "k", "--fault-rate-503", "0.5"])
    assert (args.port, args.api_key, args.host) == (3031, "k", "127.0.0.1")
    assert arthur_faults.from_arguments(args) == Faults(rate_503=0.5)
