"""``otel-arthur serve`` over HTTP, in this process: bad input, OTLP/JSON, 10k spans, Arthur down and back,
/readyz, /metrics, the flags, and the Collector configs that point at it.

Behaviour is asserted, never timing; each test's figures are printed when the module is done.
"""

from __future__ import annotations

import gzip
import re
import socket
import sqlite3
import time
from collections import Counter
from pathlib import Path
from unittest.mock import Mock
from urllib.parse import urlsplit

import pytest
import requests
from arthurmodel import create_model_over_http
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind
from prometheus_client.parser import text_string_to_metric_families
from servehelpers import (  # noqa: F401
    JSON,
    PROTOBUF,
    arthur_settings,
    otlp_json,
    serving,
    wait_for,
)
from spanfixtures import generation_spans, load_spans, reidentified

from otel_arthur import __version__, cli, exit_codes
from otel_arthur import config as c
from otel_arthur.config import EngineSettings, ReceiverSettings
from otel_arthur.conventions import CONVENTIONS
from otel_arthur.destinations.engine import EngineDestination
from otel_arthur.local import arthur, engine
from otel_arthur.pipeline import Pipeline
from otel_arthur.serve import cli as serve_cli
from otel_arthur.serve import metrics
from otel_arthur.serve.app import TRACES_PATH

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024


def post(url: str, body: bytes, headers: dict[str, str], **kwargs) -> requests.Response:
    return requests.post(url, data=body, headers=headers, timeout=60, **kwargs)


def error_status(response: requests.Response) -> status_pb2.Status:
    status = status_pb2.Status()
    if response.headers["content-type"] == JSON["Content-Type"]:
        json_format.Parse(response.content, status)
    else:
        status.ParseFromString(response.content)
    return status


def real_spans() -> list[ReadableSpan]:
    """Spans recorded from real instrumented ChatOpenAI calls: generations and the chain around them."""
    return load_spans("openllmetry_chain") + load_spans("openllmetry_chat")


def fresh(span: ReadableSpan, n: int) -> ReadableSpan:
    """The span under a new identity, so each request's records are new ones."""
    return reidentified(span, 0x5E_0000_0000 + n, n + 1)


def partner_id(n: int) -> str:
    """The record id of ``fresh(span, n)``."""
    return f"{0x5E_0000_0000 + n:032x}-{n + 1:016x}"


def non_llm_span(n: int) -> ReadableSpan:
    return ReadableSpan(name="GET /orders", context=SpanContext(0x7E_0000_0000 + n, n + 1, is_remote=False),
                        kind=SpanKind.SERVER, attributes={"http.route": "/orders"},
                        start_time=1_700_000_000_000_000_000, end_time=1_700_000_000_100_000_000)


# -- one server for the bad-input tests -------------------------------------------------------------

@pytest.fixture(scope="module")
def served(local_arthur, tmp_path_factory):
    model_id = create_model_over_http(local_arthur)
    settings = arthur_settings(local_arthur.url, model_id, tmp_path_factory.mktemp("spool"))
    with serving(settings, ReceiverSettings(port=0, auth_token=TOKEN, shutdown_timeout=5)) as server:
        wait_for(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200)
        server.model_id = model_id
        yield server


def _bomb() -> bytes:
    return gzip.compress(b"\0" * (50 * MiB), compresslevel=9)


def _non_utf8() -> bytes:
    request = encode_spans([fresh(real_spans()[3], 900)])
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="bad").value.string_value = "MARK"
    return request.SerializeToString().replace(b"MARK", b"\xff\xfe\xc3(")


BAD_INPUT = {  # name: (body, headers, status)
    "truncated protobuf": (lambda: encode_spans(real_spans()).SerializeToString()[:-9], PROTOBUF | AUTH, 400),
    "wrong content type": (lambda: b"hello", {"Content-Type": "text/plain"} | AUTH, 415),
    "no content type": (lambda: b"", AUTH, 415),
    "unsupported encoding": (lambda: b"x", PROTOBUF | AUTH | {"Content-Encoding": "br"}, 415),
    "invalid JSON": (lambda: b'{"resourceSpans": [{"scopeSpans": [', JSON | AUTH, 400),
    "non-UTF-8 in attributes": (_non_utf8, PROTOBUF | AUTH, 400),
    "50 MiB gzip bomb": (_bomb, PROTOBUF | AUTH | {"Content-Encoding": "gzip"}, 413),
    "21 MiB as sent": (lambda: b"\0" * (21 * MiB), PROTOBUF | AUTH, 413),
    "empty protobuf body": (lambda: b"", PROTOBUF | AUTH, 200),
    "empty JSON body": (lambda: b"", JSON | AUTH, 400),
    "wrong bearer token": (lambda: b"", PROTOBUF | {"Authorization": "Bearer nope"}, 401),
    "no bearer token": (lambda: b"", PROTOBUF, 401),
    "JSON array": (lambda: b"[]", JSON | AUTH, 400),
    "JSON string": (lambda: b'"x"', JSON | AUTH, 400),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_its_documented_status_and_the_server_keeps_serving(case, served, figures):
    make_body, headers, status = BAD_INPUT[case]
    body = make_body()
    started = time.monotonic()
    response = post(served.traces, body, headers)
    seconds = time.monotonic() - started
    assert response.status_code == status, response.content
    if status != 200:
        assert error_status(response).message  # a google.rpc.Status body, in the request's content type
    assert requests.get(served.url + "/healthz", timeout=5).status_code == 200
    # A fixed id per case: hash() of a str changes per process and could repeat another test's span.
    span = fresh(real_spans()[3], 1_000 + list(BAD_INPUT).index(case))
    good = post(served.traces, encode_spans([span]).SerializeToString(), PROTOBUF | AUTH)
    assert good.status_code == 200
    figures[f"bad input: {case}"] = {"status": response.status_code, "body_bytes": len(body),
                                     "seconds": round(seconds, 3)}


def test_a_wrong_token_is_answered_401_before_the_body_is_read(served):
    """A client without the token is answered while its body is still coming; none of it is buffered."""
    address = urlsplit(served.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: serve\r\nContent-Type: application/x-protobuf\r\n"
                     b"Authorization: Bearer nope\r\nContent-Length: %d\r\n\r\n" % (20 * MiB) + b"\0" * 1024)
        assert sock.recv(4096).startswith(b"HTTP/1.1 401 ")  # with 20 MiB - 1 KiB of the body still to come
    whole = post(served.traces, b"\0" * (5 * MiB), PROTOBUF | {"Authorization": "Bearer nope"})
    assert whole.status_code == 401  # a client that sends it all anyway still reads its answer


def test_chunked_body_without_a_length_is_read_and_bounded(served):
    body = encode_spans([fresh(real_spans()[3], 77)]).SerializeToString()
    assert post(served.traces, iter([body[:100], body[100:]]), PROTOBUF | AUTH).status_code == 200
    too_big = iter([b"\0" * MiB] * 21)
    assert post(served.traces, too_big, PROTOBUF | AUTH).status_code == 413


def test_ten_thousand_spans_in_one_request(served, local_arthur, figures):
    templates = generation_spans()
    spans = [fresh(templates[n % len(templates)], 100_000 + n) if n % 2 else non_llm_span(n) for n in range(10_000)]
    body = gzip.compress(encode_spans(spans).SerializeToString())
    before = len(local_arthur.inferences(served.model_id))
    started = time.monotonic()
    response = post(served.traces, body, PROTOBUF | AUTH | {"Content-Encoding": "gzip"})
    accepted = time.monotonic() - started
    assert response.status_code == 200
    assert not ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")
    wait_for(lambda: len(local_arthur.inferences(served.model_id)) >= before + 5_000, timeout=60)
    delivered = time.monotonic() - started
    rows = local_arthur.inferences(served.model_id)
    ids = [r["partner_inference_id"] for r in rows]
    assert len(ids) == len(set(ids)) == before + 5_000
    figures["10k spans in one request"] = {
        "spans": 10_000, "generation_spans": 5_000, "gzip_bytes": len(body),
        "accepted_seconds": round(accepted, 2), "spans_per_second_accepted": int(10_000 / accepted),
        "all_delivered_seconds": round(delivered, 2)}


def test_otlp_json_and_protobuf_give_the_same_record(local_arthur, tmp_path, figures):
    span = real_spans()[3]  # ChatOpenAI.chat, recorded from a real instrumented call
    request = encode_spans([span])
    rows = {}
    for name, body, headers in (("protobuf", request.SerializeToString(), PROTOBUF),
                                ("json", otlp_json(request), JSON)):
        model_id = create_model_over_http(local_arthur)
        with serving(arthur_settings(local_arthur.url, model_id, tmp_path / name)) as server:
            response = post(server.traces, body, headers)
            assert response.status_code == 200 and response.headers["content-type"] == headers["Content-Type"]
            [rows[name]] = wait_for(lambda model_id=model_id: local_arthur.inferences(model_id))
    compared = ("partner_inference_id", "inference_timestamp", "inference_data")
    assert [rows["json"][k] for k in compared] == [rows["protobuf"][k] for k in compared]
    assert rows["json"]["inference_data"]["completion"] and rows["json"]["inference_data"]["prompt"]
    figures["OTLP/JSON vs protobuf"] = {"fields_compared": len(rows["json"]["inference_data"]), "equal": True}


# -- Arthur down and back, /readyz ------------------------------------------------------------------

def test_arthur_down_then_back_503_when_the_spool_is_full_and_everything_delivered(tmp_path, figures):
    db = tmp_path / "arthur.sqlite3"
    with arthur.running(db) as plain:
        model_id = create_model_over_http(plain)
    arthur_server = arthur.RestartableLocalArthur(db)
    arthur_server.start()
    url = arthur_server.url
    arthur_server.stop()  # down before serve starts: the model cannot be fetched
    template = real_spans()[3]
    settings = arthur_settings(url, model_id, tmp_path / "spool", spool_max_bytes=24 * 1024)
    try:
        with serving(settings) as server:
            def readyz():
                response = requests.get(server.url + "/readyz", timeout=5)
                return response.status_code, response.json()

            assert readyz()[0] == 503 and readyz()[1]["model_fetched"] is False
            arthur_server.start()
            wait_for(lambda: readyz()[0] == 200)
            arthur_server.stop()

            sent, accepted, refused = 0, [], None
            while refused is None and sent < 500:
                body = encode_spans([fresh(template, 50_000 + sent)]).SerializeToString()
                response = post(server.traces, body, PROTOBUF)
                assert response.status_code in (200, 503), response.content
                if response.status_code == 503:
                    refused = (sent, body, response)
                else:
                    accepted.append(sent)
                sent += 1
            assert refused is not None, "the spool never filled"
            n, body, response = refused
            assert int(response.headers["Retry-After"]) > 0
            assert "spool is full" in error_status(response).message
            ready_while_down = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(readyz()))
            assert ready_while_down[1]["arthur_reachable"] is False

            arthur_server.start()
            retries = 0
            while post(server.traces, body, PROTOBUF).status_code != 200:  # the client retries, as otlphttp would
                retries += 1
                time.sleep(0.1)
            expected = {partner_id(50_000 + i) for i in [*accepted, n]}
            wait_for(lambda: {r["partner_inference_id"] for r in arthur_server.current.inferences(model_id)}
                     >= expected)
            rows = arthur_server.current.inferences(model_id)
            assert sorted(r["partner_inference_id"] for r in rows) == sorted(expected)  # all, once each
            wait_for(lambda: readyz()[0] == 200)
            server.receiver.stop_accepting()
            status, report = readyz()
            assert status == 503 and report["accepting"] is False and report["model_fetched"] is True
            figures["Arthur down, then back"] = {
                "accepted_while_down": len(accepted), "first_503_at_request": n + 1,
                "retry_after": response.headers["Retry-After"], "client_retries_after_back": retries,
                "delivered": len(rows), "duplicates": len(rows) - len({r["partner_inference_id"] for r in rows})}
    finally:
        arthur_server.stop()


def test_readyz_recovers_after_a_spool_write_error_without_any_request(local_arthur, tmp_path, monkeypatch):
    """A readiness gate stops the requests once /readyz says 503: recovery cannot wait for one to succeed."""
    model_id = create_model_over_http(local_arthur)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool")) as server:
        def readyz() -> requests.Response:
            return requests.get(server.url + "/readyz", timeout=5)

        wait_for(lambda: readyz().status_code == 200)
        spool = server.pipeline._spool
        body = encode_spans([fresh(real_spans()[3], 400_000)]).SerializeToString()
        with monkeypatch.context() as disk_full:
            disk_full.setattr(spool, "append", Mock(side_effect=sqlite3.OperationalError("database or disk is full")))
            disk_full.setattr(spool, "can_write", lambda: False, raising=False)
            assert post(server.traces, body, PROTOBUF).status_code == 503
            assert readyz().status_code == 503 and readyz().json()["spool_writable"] is False
        wait_for(lambda: readyz().status_code == 200, timeout=10)  # room again: no request was needed
        assert readyz().json()["spool_writable"] is True
        assert post(server.traces, body, PROTOBUF).status_code == 200


# -- /metrics ---------------------------------------------------------------------------------------

FAMILIES = {
    "otel_arthur_receiver_spans_received": "counter", "otel_arthur_receiver_spans_ignored": "counter",
    "otel_arthur_receiver_spans_rejected": "counter", "otel_arthur_receiver_spans_refused": "counter",
    "otel_arthur_receiver_http_responses": "counter",
    "otel_arthur_spans_received": "counter", "otel_arthur_generation_spans": "counter",
    "otel_arthur_records_spooled": "counter", "otel_arthur_records_delivered": "counter",
    "otel_arthur_records_retried": "counter", "otel_arthur_records_dead_lettered": "counter",
    "otel_arthur_records_dropped": "counter",
    "otel_arthur_spool_depth_records": "gauge", "otel_arthur_spool_size_bytes": "gauge",
    "otel_arthur_spool_dead_letters": "gauge", "otel_arthur_oldest_undelivered_age_seconds": "gauge",
    "otel_arthur_arthur_request_duration_seconds": "histogram", "otel_arthur_ready": "gauge",
    "otel_arthur_build_info": "gauge",
}


def test_metrics_exposes_the_listed_families(served, local_arthur, figures):
    spans = [fresh(real_spans()[3], 300_000), non_llm_span(1)]
    request = encode_spans(spans)
    broken = request.resource_spans[0].scope_spans[0].spans.add()
    broken.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    broken.span_id = b"\1"
    assert post(served.traces, request.SerializeToString(), PROTOBUF | AUTH).status_code == 200
    assert post(served.traces, b"", PROTOBUF).status_code == 401
    wait_for(lambda: served.pipeline.stats().delivered > 0)
    response = requests.get(served.url + "/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {name: families[name].type for name in FAMILIES if name in families} == FAMILIES
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("otel_arthur_receiver_http_responses_total", (("code", "401"),))] >= 1
    assert value[("otel_arthur_receiver_spans_rejected_total", ())] >= 1
    assert value[("otel_arthur_receiver_spans_ignored_total", ())] >= 1
    v3 = (("destination", "v3"),)  # the pipeline's own series are labelled by destination
    assert value[("otel_arthur_arthur_request_duration_seconds_count", v3)] >= 1
    assert value[("otel_arthur_records_delivered_total", v3)] >= 1
    assert value[("otel_arthur_spool_depth_records", ())] >= 0  # the spool file's gauges: every destination's
    assert value[("otel_arthur_ready", ())] == 1
    assert value[("otel_arthur_build_info", (("version", __version__),))] == 1
    assert value[("otel_arthur_receiver_spans_received_total", ())] == \
        value[("otel_arthur_receiver_spans_ignored_total", ())] + \
        value[("otel_arthur_receiver_spans_rejected_total", ())] + value[("otel_arthur_generation_spans_total", v3)]
    codes = {labels[0][1] for (name, labels) in value if name == "otel_arthur_receiver_http_responses_total"}
    assert "500" not in codes
    figures["/metrics"] = {"families": len(FAMILIES), "response_codes_seen": ",".join(sorted(codes))}


def test_metrics_of_two_pipelines_are_labelled_by_destination_and_the_spool_counted_once(local_arthur, tmp_path):
    """One pipeline per destination: each one's series carry its name, the shared spool's gauges appear once."""
    spool_dir = tmp_path / "spool"
    with engine.running(tmp_path / "engine.sqlite3") as local_engine:
        v3 = Pipeline(arthur_settings(local_arthur.url, create_model_over_http(local_arthur), spool_dir))
        engine_settings = EngineSettings.resolve(engine_url=local_engine.url, engine_api_key=local_engine.api_key,
                                                 allow_insecure=True, spool_dir=spool_dir)
        to_engine = Pipeline(to=EngineDestination(engine_settings))
        try:
            spans = [fresh(span, 400_000 + n) for n, span in enumerate(real_spans())]
            records = v3.destination.items(spans).records
            engine_spans = to_engine.destination.items(spans).records
            assert v3.submit(records) and to_engine.submit(engine_spans)
            assert v3.force_flush(30) and to_engine.force_flush(30)
            collectors = metrics.registry(metrics.pipeline_samples([("v3", v3), ("engine", to_engine)]))
            families = {f.name: f for f in text_string_to_metric_families(metrics.exposition(collectors).decode())}
        finally:
            v3.shutdown(1)
            to_engine.shutdown(1)
    delivered = {s.labels["destination"]: s.value for s in families["otel_arthur_records_delivered"].samples}
    assert delivered == {"v3": len(records), "engine": len(engine_spans)} and len(engine_spans) > len(records)
    durations = [s for s in families["otel_arthur_arthur_request_duration_seconds"].samples
                 if s.name.endswith("_count")]
    assert {s.labels["destination"] for s in durations} == {"v3", "engine"} and all(s.value >= 1 for s in durations)
    for gauge in ("otel_arthur_spool_depth_records", "otel_arthur_spool_size_bytes",
                  "otel_arthur_spool_dead_letters", "otel_arthur_oldest_undelivered_age_seconds"):
        [sample] = families[gauge].samples  # the file both pipelines share: once, not once per destination
        assert sample.labels == {}


# -- flags and collector configs --------------------------------------------------------------------

def test_help_lists_every_flag_with_its_env_var_and_default(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    parser = cli.build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 18
    for action in flags:
        assert "(env " in action.help and "default: " in action.help, action.option_strings
        assert action.option_strings[0] in text
    for env in (c.OTEL_ARTHUR_RECEIVER_HOST, c.OTEL_ARTHUR_RECEIVER_PORT, c.OTEL_ARTHUR_RECEIVER_TOKEN,
                c.OTEL_ARTHUR_RECEIVER_MAX_BODY_BYTES, c.OTEL_ARTHUR_RECEIVER_SHUTDOWN_TIMEOUT, c.ARTHUR_ENDPOINT_URL,
                c.ARTHUR_API_KEY, c.ARTHUR_MODEL_ID, c.ARTHUR_SPOOL_DIR, c.ARTHUR_SPOOL_MAX_BYTES):
        assert env in text
    assert serve_cli.__doc__


def test_flags_fall_back_to_the_environment(monkeypatch, arthur_env):
    monkeypatch.setenv(c.OTEL_ARTHUR_RECEIVER_PORT, "4400")
    monkeypatch.setenv(c.OTEL_ARTHUR_RECEIVER_TOKEN, "from-env")
    args = cli.build_parser().parse_args(["serve", "--host", "0.0.0.0"])
    settings = ReceiverSettings.resolve(host=args.host, port=args.port, auth_token=args.auth_token)
    assert (settings.host, settings.port, settings.auth_token) == ("0.0.0.0", 4400, "from-env")
    assert "from-env" not in repr(settings)
    assert ReceiverSettings.resolve(port=4500).port == 4500


def test_missing_arthur_settings_are_one_clear_line_and_the_configuration_exit_code(arthur_env, caplog):
    assert cli.main(["serve", "--port", "0"]) == exit_codes.CONFIGURATION
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert c.ARTHUR_ENDPOINT_URL in line and "--url" in line


# Checked on their own: the Kafka configs (no OTLP receiver or no serve exporter) in tests/test_kafka.py,
# the load-balancing one (gRPC to the replicas) below.
LOADBALANCING_CONFIG = ROOT / "collector-config" / "collector-loadbalancing.yaml"
COLLECTOR_CONFIGS = sorted(p for p in (ROOT / "collector-config").glob("*.yaml")
                           if not p.name.startswith("collector-kafka-") and p != LOADBALANCING_CONFIG)


def arthur_exporters(document: dict) -> dict[str, dict]:
    """A Collector config's ``otlphttp/…arthur`` exporters that a pipeline uses."""
    used = {e for p in document["service"]["pipelines"].values() for e in p["exporters"]}
    return {name: spec for name, spec in document["exporters"].items()
            if name.split("/")[0] == "otlphttp" and name.endswith("/arthur") and name in used}


def assert_sends_to_serves_defaults(exporter: dict) -> None:
    """An ``otlphttp`` exporter's settings agree with ``serve``'s defaults: address, path, encoding, token."""
    endpoint = urlsplit(exporter["endpoint"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", c.DEFAULT_RECEIVER_HOST,
                                                                   c.DEFAULT_RECEIVER_PORT)
    # otlphttp posts to traces_endpoint as given, else to endpoint with /v1/traces appended
    traces_url = urlsplit(exporter.get("traces_endpoint", exporter["endpoint"].rstrip("/") + "/v1/traces"))
    assert (traces_url.hostname, traces_url.port, traces_url.path) == (endpoint.hostname, endpoint.port, TRACES_PATH)
    assert (exporter.get("encoding"), exporter.get("compression")) == ("proto", "gzip")
    assert exporter["headers"]["Authorization"] == f"Bearer ${{env:{c.OTEL_ARTHUR_RECEIVER_TOKEN}}}"
    assert exporter["retry_on_failure"]["enabled"] is True


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS, ids=[p.name for p in COLLECTOR_CONFIGS])
def test_collector_config_points_at_serves_defaults(path):

    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load(path.read_text())
    [(name, exporter)] = arthur_exporters(document).items()
    assert_sends_to_serves_defaults(exporter)
    storage = exporter["sending_queue"]["storage"]  # a file_storage extension: the queue survives restarts
    assert storage.split("/")[0] == "file_storage" and storage in document["extensions"]
    assert storage in document["service"]["extensions"]  # defined but not enabled, the Collector refuses it
    pipelines = document["service"]["pipelines"]
    [(pipeline_name, pipeline)] = [(k, p) for k, p in pipelines.items() if name in p["exporters"]]
    assert pipeline_name.split("/")[0] == "traces" and pipeline["receivers"] == ["otlp"]
    [batch] = [document["processors"][p] for p in pipeline["processors"] if p.split("/")[0] == "batch"]
    max_spans = batch.get("send_batch_max_size", 0)  # the Collector's default, 0, is no cap at all
    assert 0 < max_spans <= c.DEFAULT_MAX_BODY_BYTES // (64 * 1024)  # 64 KiB a span: room for long prompts
    assert batch.get("send_batch_size", 8192) <= max_spans  # else the Collector refuses the config


def test_loadbalancing_config_routes_by_trace_id_over_grpc_to_serve_replicas():
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load(LOADBALANCING_CONFIG.read_text())
    exporter = document["exporters"]["loadbalancing/arthur"]
    assert exporter["routing_key"] == "traceID"
    hostnames = exporter["resolver"]["static"]["hostnames"]
    assert len(hostnames) == 3 and hostnames[0] == f"{c.DEFAULT_RECEIVER_HOST}:{c.DEFAULT_RECEIVER_GRPC_PORT}"
    otlp = exporter["protocol"]["otlp"]
    assert otlp["compression"] == "gzip" and otlp["retry_on_failure"]["enabled"] is True
    assert otlp["headers"]["authorization"] == f"Bearer ${{env:{c.OTEL_ARTHUR_RECEIVER_TOKEN}}}"
    assert otlp["sending_queue"]["enabled"] is False  # a batch leaves the persistent queue only once answered
    assert exporter["retry_on_failure"]["enabled"] is True
    storage = exporter["sending_queue"]["storage"]
    assert storage in document["extensions"] and storage in document["service"]["extensions"]
    [pipeline] = document["service"]["pipelines"].values()
    assert pipeline["exporters"] == ["loadbalancing/arthur"]
    [batch] = [document["processors"][p] for p in pipeline["processors"] if p.split("/")[0] == "batch"]
    assert 0 < batch["send_batch_max_size"] <= c.DEFAULT_MAX_BODY_BYTES // (64 * 1024)


def test_serve_doc_describes_every_collector_config_as_it_is():
    """docs/serve.md's table of collector-config/: one row per file, naming its receivers, exporters and ports."""
    yaml = pytest.importorskip("yaml")
    doc = (ROOT / "docs" / "serve.md").read_text()
    rows = {re.match(r"\| `(collector-[\w-]+\.yaml)`", line)[1]: line for line in doc.splitlines()
            if re.match(r"\| `collector-[\w-]+\.yaml`", line)}
    configs = sorted((ROOT / "collector-config").glob("*.yaml"))
    assert sorted(rows) == [p.name for p in configs]
    count = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}[len(configs)]
    assert f"`collector-config/` holds {count} commented, ready configs" in " ".join(doc.split())
    for path in configs:
        document = yaml.safe_load(path.read_text())
        [pipeline] = document["service"]["pipelines"].values()
        named = set(re.findall(r"`([\w-]+)`", rows[path.name]))
        kinds = {part.split("/")[0] for part in pipeline["receivers"] + pipeline["exporters"]}
        ports: set[int] = set()
        for name in pipeline["exporters"]:
            exporter = document["exporters"][name]
            kinds |= set(exporter.get("protocol", {}))  # loadbalancing: the protocol it speaks to each backend
            if "endpoint" in exporter and urlsplit(exporter["endpoint"]).hostname == c.DEFAULT_RECEIVER_HOST:
                ports.add(urlsplit(exporter["endpoint"]).port)
            replicas = exporter.get("resolver", {}).get("static", {}).get("hostnames", [])
            ports |= {int(hostname.rsplit(":", 1)[1]) for hostname in replicas}
        assert kinds <= named, (path.name, kinds - named)
        assert all(str(port) in rows[path.name] for port in ports), (path.name, ports)


def test_llm_only_filter_covers_exactly_the_conventions():
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load((ROOT / "collector-config" / "collector-llm-only.yaml").read_text())
    [condition] = document["processors"]["filter/llm-only"]["traces"]["span"]
    assert condition.strip().startswith("not (") and condition.strip().endswith(")")
    pairs = re.findall(r'attributes\["([^"]+)"\] == "([^"]+)"', condition)
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {(conv.marker, value) for conv in CONVENTIONS for value in conv.generation_values}
    assert condition.count(" or ") == len(pairs) - 1 and " and " not in condition
    [pipeline] = document["service"]["pipelines"].values()
    assert pipeline["processors"][0] == "filter/llm-only"


def test_metrics_families_as_samples_lack_nothing_counted(served):
    """Every counter the pipeline keeps has a HELP text (an unknown family would show its name as help)."""
    text = requests.get(served.url + "/metrics", timeout=5).text
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, flags=re.M))
    assert all(help_text not in (name, name.removesuffix("_total")) for name, help_text in helps.items())
    assert Counter(line.split()[3] for line in text.splitlines() if line.startswith("# TYPE"))["histogram"] == 1


def test_a_serving_process_that_maps_loads_the_price_table_before_its_first_request():
    """``ready_to_serve``: the price table's load falls on no request (in processes of their own, as serve's are)."""
    import subprocess
    import sys

    script = """
import sys
from otel_arthur.serve.warmup import ready_to_serve
ready_to_serve(maps=sys.argv[1] == "maps")
import genai_prices.data_snapshot as data  # noqa: E402
print(data._bundled_snapshot.cache_info().currsize)
"""
    loaded = {maps: subprocess.run([sys.executable, "-c", script, maps], capture_output=True, text=True, timeout=120)
              for maps in ("maps", "no")}
    assert [completed.returncode for completed in loaded.values()] == [0, 0], [c.stderr for c in loaded.values()]
    assert loaded["maps"].stdout.split() == ["1"] and loaded["no"].stdout.split() == ["0"]


def test_serving_keeps_start_up_out_of_collections_and_still_frees_cycles():
    """``settle_gc`` (run once serve has started; in a process of its own here, as serve is one)."""
    import subprocess
    import sys

    script = """
import gc, weakref
from otel_arthur.serve.warmup import GC_YOUNG_THRESHOLD, settle_gc
settle_gc()
assert gc.get_freeze_count() > 1000 and gc.get_threshold()[0] == GC_YOUNG_THRESHOLD and gc.isenabled()
class Node: pass
node = Node(); node.me = node; alive = weakref.ref(node); del node
kept = []
for _ in range(GC_YOUNG_THRESHOLD * 2):  # objects that stay, no explicit collect: a cycle is still freed in time
    kept.append([None])
    if alive() is None:
        break
assert alive() is None
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
