"""``serve``'s OTLP/gRPC receiver with the real gRPC ``OTLPSpanExporter`` and raw grpcio calls: exact records,
each status of the OTLP spec's mapping, the token, gzip (gRPC message compression), TLS and mutual TLS on both
receivers, metrics, readiness, the flags, and SIGTERM.

In-process servers for the status paths (fakes only where a spool must be full on cue); ``otel-arthur
serve`` as a process for TLS, metrics and shutdown. Behaviour is asserted, never timing.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from arthurmodel import create_model_over_http
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families
from servehelpers import arthur_settings, grpc_serving, serving, wait_for
from spanfixtures import generation_spans, reidentified
from test_serve_e2e import BIN, ServeProcess, clean_env

from otel_arthur import cli, exit_codes
from otel_arthur import config as c
from otel_arthur.config import ReceiverSettings
from otel_arthur.fields import COMPLETION
from otel_arthur.mapping import InferenceRecord, map_span
from otel_arthur.pipeline import Accepted, Refusal
from otel_arthur.privacy import CONTENT_NOT_CAPTURED
from otel_arthur.serve import app as serve_app
from otel_arthur.serve.grpc_receiver import EXPORT_METHOD, GrpcReceiver
from otel_arthur.serve.receiver import DEFAULT_RETRY_AFTER, Receiver

TOKEN = "grpc-test-token"
BEARER = (("authorization", f"Bearer {TOKEN}"),)
MAX_SPANS = 40
MAX_BODY_BYTES = 512 * 1024


def spans(first: int, count: int) -> list[ReadableSpan]:
    """``count`` recorded generation spans under new ids, ``first`` on."""
    templates = generation_spans()
    return [reidentified(templates[n % len(templates)], 0x6A9C_0000 + n, n + 1) for n in range(first, first + count)]


def records_by_id(sent: Sequence[ReadableSpan]) -> dict[str, InferenceRecord]:
    return {r.partner_inference_id: r for r in map(map_span, sent) if r is not None}


def export_raw(target: str, body: bytes, *, metadata: Sequence[tuple[str, str]] = BEARER,
               compression: grpc.Compression | None = None,
               credentials: grpc.ChannelCredentials | None = None) -> tuple[bytes | None, grpc.RpcError | None]:
    """One ``TraceService/Export`` with grpcio itself, bytes in and out: (response, None) or (None, error)."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        export = channel.unary_unary(EXPORT_METHOD)
        try:
            return export(body, metadata=metadata, compression=compression, timeout=30), None
        except grpc.RpcError as error:
            return None, error


def status_details(error: grpc.RpcError) -> tuple[Status, RetryInfo | None, RetryInfo | None]:
    """The google.rpc.Status in ``grpc-status-details-bin``, its RetryInfo, and the one alone in
    ``google.rpc.retryinfo-bin`` (the trailer the Python exporter reads)."""
    trailers = dict(error.trailing_metadata())
    status = Status.FromString(trailers["grpc-status-details-bin"])
    packed = [d for d in status.details if d.Is(RetryInfo.DESCRIPTOR)]
    in_status = None
    if packed:
        in_status = RetryInfo()
        packed[0].Unpack(in_status)
    alone = trailers.get("google.rpc.retryinfo-bin")
    return status, in_status, RetryInfo.FromString(alone) if alone is not None else None


def grpc_exporter(target: str, headers: dict[str, str] | None = None, **kwargs) -> OTLPSpanExporter:
    """The SDK's gRPC exporter in plain text, sending the token unless ``headers`` say otherwise."""
    return OTLPSpanExporter(endpoint=target, insecure=True, timeout=30, **kwargs,
                            headers={"authorization": f"Bearer {TOKEN}"} if headers is None else headers)


@pytest.fixture(scope="module")
def served(local_arthur, tmp_path_factory) -> Iterator[tuple[str, Receiver, GrpcReceiver, str]]:
    """One in-process serve for the module: (gRPC target, its Receiver, the GrpcReceiver, the model id)."""
    model_id = create_model_over_http(local_arthur)
    settings = ReceiverSettings(port=0, grpc_port=0, auth_token=TOKEN, shutdown_timeout=5,
                                max_spans_per_request=MAX_SPANS, max_body_bytes=MAX_BODY_BYTES)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path_factory.mktemp("spool")), settings) as server:
        with grpc_serving(server.receiver, settings) as grpc_server:
            yield f"127.0.0.1:{grpc_server.port}", server.receiver, grpc_server, model_id


# -- exact records ----------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_grpc_exporter_delivers_exactly_the_records_the_exporter_maps(compression, served, local_arthur, figures):
    target, receiver, _, model_id = served
    sent = spans(1000 if compression == "gzip" else 2000, 12)
    expected = records_by_id(sent)
    before = {r["partner_inference_id"] for r in local_arthur.inferences(model_id)}
    exporter = grpc_exporter(target, compression=grpc.Compression.Gzip if compression == "gzip"
                             else grpc.Compression.NoCompression)
    try:
        assert exporter.export(sent) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    def arrived() -> list[dict]:
        rows = [r for r in local_arthur.inferences(model_id) if r["partner_inference_id"] not in before]
        return rows if len(rows) >= len(expected) else []

    rows = wait_for(arrived)
    assert sorted(r["partner_inference_id"] for r in rows) == sorted(expected)
    for row in rows:  # a failed call has no completion: binding to the model says so, as for the in-app exporter
        fields = expected[row["partner_inference_id"]].fields
        assert row["inference_data"] == {COMPLETION: CONTENT_NOT_CAPTURED} | fields
    figures[f"OTLPSpanExporter gRPC ({compression}) -> serve"] = {"spans": len(sent), "records": len(rows)}


# -- the status mapping -----------------------------------------------------------------------------

def test_undecodable_is_invalid_argument(served):
    target = served[0]
    _, error = export_raw(target, b"\x0a\xff\xff\xff\xff\x0f")  # a length far past the end
    assert error is not None and error.code() is grpc.StatusCode.INVALID_ARGUMENT
    status, retry_info, _ = status_details(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and retry_info is None


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)],
                         ids=["none", "wrong", "not-bearer"])
def test_a_missing_or_wrong_token_is_unauthenticated(metadata, served):
    body = encode_spans(spans(3000, 1)).SerializeToString()
    _, error = export_raw(served[0], body, metadata=metadata)
    assert error is not None and error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert export_raw(served[0], body)[1] is None  # the right one passes


def test_over_the_limits_is_resource_exhausted_without_retry_info(served):
    target = served[0]
    _, error = export_raw(target, encode_spans(spans(4000, MAX_SPANS + 1)).SerializeToString())
    assert error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    status, in_status, alone = status_details(error)
    assert "spans" in status.message and in_status is None and alone is None  # the Collector drops it, as a 413
    # A message over --max-body-bytes once inflated: gRPC refuses it itself, before the receiver sees it.
    request = encode_spans(spans(4100, 1))
    request.resource_spans[0].scope_spans[0].spans[0].name = "x" * MAX_BODY_BYTES
    _, error = export_raw(target, request.SerializeToString(), compression=grpc.Compression.Gzip)
    assert error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_partial_success_counts_the_generation_spans_that_cannot_be_recorded(served):
    request = encode_spans(spans(5000, 2))
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b"\1"  # not 8 bytes: the mapper rejects it
    response, error = export_raw(served[0], request.SerializeToString(), compression=grpc.Compression.Gzip)
    assert error is None and response is not None
    partial = ExportTraceServiceResponse.FromString(response).partial_success
    assert partial.rejected_spans == 1 and "span" in partial.error_message


class RefusingFirst:
    """An intake that refuses the first ``refusals`` batches as the full spool would, then takes them for real."""

    def __init__(self, intake, refusals: int) -> None:
        self._intake = intake
        self.refusals = refusals

    def accept(self, records):
        if self.refusals:
            self.refusals -= 1
            return Refusal.SPOOL_FULL
        return self._intake.accept(records)

    def count_received(self, spans: int, generations: int) -> None:
        self._intake.count_received(spans, generations)

    def drop_unmappable(self, count: int, reason: str) -> None:
        self._intake.drop_unmappable(count, reason)


def test_spool_full_is_unavailable_with_retry_info_and_the_exporter_retries_then_delivers(local_arthur, tmp_path):
    model_id = create_model_over_http(local_arthur)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool")) as server:
        refusing = RefusingFirst(server.pipeline, refusals=1)
        receiver = Receiver(refusing, retry_after=1)
        with grpc_serving(receiver) as grpc_server:
            target = f"127.0.0.1:{grpc_server.port}"
            body = encode_spans(spans(6000, 1)).SerializeToString()
            refusing.refusals = 1
            _, error = export_raw(target, body, metadata=())
            assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
            status, in_status, alone = status_details(error)
            assert "spool is full" in status.message
            assert in_status is not None and in_status.retry_delay.seconds == 1 and alone == in_status

            refusing.refusals = 1
            sent = spans(6100, 3)
            exporter = grpc_exporter(target, headers={})
            try:
                assert exporter.export(sent) is SpanExportResult.SUCCESS  # after the one refusal
            finally:
                exporter.shutdown()
            assert refusing.refusals == 0
            codes = {s.labels["code"]: s.value for s in grpc_server.samples()}
            assert codes == {"UNAVAILABLE": 2, "OK": 1}
        expected = records_by_id(sent)
        rows = wait_for(lambda: (lambda rows: rows if len(rows) >= len(expected) else [])(
            [r for r in local_arthur.inferences(model_id) if r["partner_inference_id"] in expected]))
        assert sorted(r["partner_inference_id"] for r in rows) == sorted(expected)


def test_shutting_down_is_unavailable_with_the_default_retry_delay(local_arthur, tmp_path):
    class Intake:
        def accept(self, records):
            return Accepted()

        def count_received(self, spans: int, generations: int) -> None: ...

        def drop_unmappable(self, count: int, reason: str) -> None: ...

    receiver = Receiver(Intake())
    with grpc_serving(receiver) as grpc_server:
        receiver.stop_accepting()
        _, error = export_raw(f"127.0.0.1:{grpc_server.port}", encode_spans(spans(7000, 1)).SerializeToString())
    assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
    _, in_status, alone = status_details(error)
    assert in_status is not None and in_status.retry_delay.seconds == DEFAULT_RETRY_AFTER and alone == in_status


# -- TLS, metrics, readiness, shutdown: otel-arthur serve as a process ------------------------------

@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    """A throwaway CA, a server certificate for 127.0.0.1 and localhost, and a client certificate (openssl CLI)."""
    folder = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
             cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN=test {name}",
                 cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem", folder / "client.pem",
                        folder / "client-key.pem")


@pytest.fixture
def serve_env(local_arthur, tmp_path):
    """The environment of an ``otel-arthur serve`` process to a fresh model, with the token; and the model id."""
    model_id = create_model_over_http(local_arthur)
    return clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                     ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", ARTHUR_SPOOL_DIR=str(tmp_path / "spool"),
                     OTEL_ARTHUR_RECEIVER_TOKEN=TOKEN), model_id


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_on_both_receivers_and_mutual_tls_refuses_a_client_without_a_certificate(mutual, certificates, serve_env,
                                                                                      local_arthur, tmp_path):
    env, model_id = serve_env
    flags = ["--tls-cert-file", str(certificates.server), "--tls-key-file", str(certificates.server_key)]
    if mutual:
        env = env | {c.OTEL_ARTHUR_RECEIVER_TLS_CLIENT_CA_FILE: str(certificates.ca)}
    serve = ServeProcess(env, tmp_path / "serve.log", *flags)
    try:
        assert serve.url.startswith("https://")
        ca = certificates.ca.read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, certificates.client_key.read_bytes(),
                                                 certificates.client.read_bytes())
        without_cert = grpc.ssl_channel_credentials(ca)
        client_cert = (str(certificates.client), str(certificates.client_key))

        sent = spans(8000 if mutual else 8100, 2)
        exporter = OTLPSpanExporter(endpoint=serve.grpc_target, credentials=with_cert, timeout=30,
                                    headers={"authorization": f"Bearer {TOKEN}"})
        try:
            assert exporter.export(sent) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        http_sent = spans(8200 if mutual else 8300, 1)
        response = requests.post(serve.url + "/v1/traces", data=encode_spans(http_sent).SerializeToString(),
                                 headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"},
                                 verify=str(certificates.ca), cert=client_cert, timeout=30)
        assert response.status_code == 200

        body = encode_spans(spans(8400, 1)).SerializeToString()
        assert export_raw(serve.grpc_target, body)[1].code() is grpc.StatusCode.UNAVAILABLE  # plain text: no
        _, error = export_raw(serve.grpc_target, body, credentials=without_cert)
        with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to a TLS port
            requests.post(serve.url.replace("https://", "http://") + "/v1/traces", data=body, timeout=30)
        try:
            refused_http = requests.post(serve.url + "/v1/traces", data=body, verify=str(certificates.ca), timeout=30,
                                         headers={"Content-Type": "application/x-protobuf",
                                                  "Authorization": f"Bearer {TOKEN}"}).status_code
        except requests.exceptions.ConnectionError:  # an SSLError is one
            refused_http = None
        if mutual:
            assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
            assert refused_http is None
        else:
            assert error is None and refused_http == 200

        expected = records_by_id(sent + http_sent)
        rows = wait_for(lambda: (lambda rows: rows if len(rows) >= len(expected) else [])(
            [r for r in local_arthur.inferences(model_id) if r["partner_inference_id"] in expected]))
        assert sorted(r["partner_inference_id"] for r in rows) == sorted(expected)
        assert ("TLS mutual" if mutual else "TLS on") in serve.log.read_text()
    finally:
        serve.stop()


@pytest.mark.parametrize("decode_processes", [0, 2])  # 2: spawned workers, the gRPC server started after them
def test_metrics_and_readyz_cover_both_receivers_and_sigterm_stops_grpc(decode_processes, serve_env, local_arthur,
                                                                        tmp_path):
    env, model_id = serve_env
    serve = ServeProcess(env, tmp_path / "serve.log", "--shutdown-timeout", "5",
                         "--decode-processes", str(decode_processes))
    channel = grpc.insecure_channel(serve.grpc_target)  # an idle connection must not hold the shutdown
    try:
        wait_for(lambda: requests.get(serve.url + "/readyz", timeout=5).status_code == 200)
        assert requests.get(serve.url + "/readyz", timeout=5).json()["receivers"] == {"http": True, "grpc": True}
        body = encode_spans(spans(9000, 2)).SerializeToString()
        response = channel.unary_unary(EXPORT_METHOD)(body, metadata=BEARER, timeout=30)
        assert not ExportTraceServiceResponse.FromString(response).HasField("partial_success")
        assert export_raw(serve.grpc_target, body, metadata=())[1].code() is grpc.StatusCode.UNAUTHENTICATED
        assert requests.post(serve.url + "/v1/traces", data=body, timeout=30, headers={
            "Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"}).status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(
            requests.get(serve.url + "/metrics", timeout=5).text)}
        value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert value[("otel_arthur_receiver_requests_total", (("transport", "grpc"),))] == 2
        assert value[("otel_arthur_receiver_requests_total", (("transport", "http"),))] == 1
        assert value[("otel_arthur_receiver_grpc_responses_total", (("code", "OK"),))] == 1
        assert value[("otel_arthur_receiver_grpc_responses_total", (("code", "UNAUTHENTICATED"),))] == 1
        assert value[("otel_arthur_receiver_http_responses_total", (("code", "200"),))] == 1
        assert value[("otel_arthur_receiver_spans_received_total", ())] == 4
        expected = records_by_id(spans(9000, 2))
        wait_for(lambda: {r["partner_inference_id"] for r in local_arthur.inferences(model_id)} >= set(expected))

        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout=30) == 0
        _, error = export_raw(serve.grpc_target, body)
        assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE  # nobody listens any more
    finally:
        channel.close()
        serve.stop()
    log = serve.log.read_text()
    assert "Stopped" in log and "Traceback" not in log


def test_a_taken_grpc_port_fails_the_start_with_a_clear_line(serve_env, tmp_path):
    env, _ = serve_env
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(BIN / "otel-arthur"), "serve", "--port", "0", "--grpc-port", str(port)], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == exit_codes.ERROR
    assert f"cannot listen for OTLP/gRPC on 127.0.0.1:{port}" in done.stderr


# -- flags ------------------------------------------------------------------------------------------

def test_grpc_port_and_tls_files_fall_back_to_the_environment(monkeypatch, certificates):
    monkeypatch.setenv(c.OTEL_ARTHUR_RECEIVER_GRPC_PORT, "0")
    monkeypatch.setenv(c.OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE, str(certificates.server))
    monkeypatch.setenv(c.OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE, str(certificates.server_key))
    settings = ReceiverSettings.resolve()
    assert (settings.grpc_port, settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) == \
        (0, str(certificates.server), str(certificates.server_key), None)
    assert ReceiverSettings.resolve(grpc_port=4444).grpc_port == 4444
    monkeypatch.delenv(c.OTEL_ARTHUR_RECEIVER_GRPC_PORT)
    assert ReceiverSettings.resolve().grpc_port == c.DEFAULT_RECEIVER_GRPC_PORT == 4320


@pytest.mark.parametrize("case", ["cert-without-key", "key-without-cert", "ca-without-cert", "missing-file"])
def test_unusable_tls_settings_are_one_line_and_the_configuration_exit_code(case, certificates, arthur_env, caplog,
                                                                           tmp_path):
    arthur_env.setenv(c.ARTHUR_ENDPOINT_URL, "http://127.0.0.1:9")
    arthur_env.setenv(c.ARTHUR_API_KEY, "k")
    arthur_env.setenv(c.ARTHUR_MODEL_ID, "m")
    arthur_env.setenv(c.ARTHUR_ALLOW_INSECURE, "true")
    flags = {"cert-without-key": ["--tls-cert-file", str(certificates.server)],
             "key-without-cert": ["--tls-key-file", str(certificates.server_key)],
             "ca-without-cert": ["--tls-client-ca-file", str(certificates.ca)],
             "missing-file": ["--tls-cert-file", str(tmp_path / "absent.pem"), "--tls-key-file",
                              str(certificates.server_key)]}[case]
    assert cli.main(["serve", "--port", "0", "--grpc-port", "0", "--spool-dir", str(tmp_path), *flags]) == \
        exit_codes.CONFIGURATION
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    expected = {"cert-without-key": "--tls-key-file", "key-without-cert": "--tls-cert-file",
                "ca-without-cert": "--tls-cert-file", "missing-file": "absent.pem"}[case]
    assert expected in line and "TLS" in line


@pytest.mark.parametrize(("host", "tls", "refused"), [("0.0.0.0", False, True), ("10.1.2.3", False, True),
                                                      ("127.0.0.1", False, False), ("localhost", False, False),
                                                      ("::1", False, False), ("0.0.0.0", True, False)])
def test_a_token_in_clear_beyond_the_host_is_refused_unless_allowed(host, tls, refused, certificates, caplog):
    tls_files = {"tls_cert_file": str(certificates.server), "tls_key_file": str(certificates.server_key)} if tls else {}
    settings = ReceiverSettings(host=host, auth_token="secret", **tls_files)
    if refused:
        with pytest.raises(c.ConfigurationError) as refusal:
            serve_app._refuse_token_in_clear(settings)
        assert "TLS is off" in str(refusal.value) and "--allow-plaintext-token" in str(refusal.value)
        assert "secret" not in str(refusal.value)
    else:
        serve_app._refuse_token_in_clear(settings)
    with caplog.at_level(logging.WARNING, logger=serve_app.__name__):
        serve_app._refuse_token_in_clear(dataclasses.replace(settings, allow_plaintext_token=True))
    assert any("TLS is off" in r.getMessage() for r in caplog.records) is refused
    assert all("secret" not in r.getMessage() for r in caplog.records)


def test_serve_refuses_to_start_with_a_token_in_clear_beyond_the_host(serve_env, monkeypatch):
    env, _ = serve_env  # with OTEL_ARTHUR_RECEIVER_TOKEN
    # Old code would listen on every interface here: the timeout ends that run as a failure.
    done = subprocess.run([str(BIN / "otel-arthur"), "serve", "--host", "0.0.0.0", "--port", "0", "--grpc-port", "0"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == exit_codes.CONFIGURATION
    assert "TLS is off" in done.stderr and "--allow-plaintext-token" in done.stderr and TOKEN not in done.stderr
    assert "Receiving OTLP" not in done.stderr
    monkeypatch.setenv(c.OTEL_ARTHUR_RECEIVER_ALLOW_PLAINTEXT_TOKEN, "true")
    assert ReceiverSettings.resolve().allow_plaintext_token is True
    assert ReceiverSettings.resolve(allow_plaintext_token=False).allow_plaintext_token is False
    args = cli.build_parser().parse_args(["serve", "--allow-plaintext-token"])
    assert args.allow_plaintext_token is True
