"""``serve`` with real processes around it: a LangChain app exporting with the stock ``OTLPSpanExporter``,
and ``otel-arthur serve`` itself taking SIGTERM while requests are in flight.

The app (tests/apps/otlp_chat.py) runs OpenLLMetry's LangChain instrumentor and ``ChatOpenAI`` against
the local OpenAI endpoint, in its own process, configured by ``OTEL_EXPORTER_OTLP_*`` only. No
Collector binary with a traces receiver installs from the registries reachable here; the stock
exporter's retry rules are the Collector's ``otlphttp`` ones. Behaviour is asserted, not timing.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from arthurmodel import create_model_over_http
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from servehelpers import PROTOBUF, arthur_settings, serving, wait_for  # noqa: F401
from spanfixtures import generation_spans, load_span, reidentified
from test_otlp import empty_spans_request

from otel_arthur.config import ReceiverSettings
from otel_arthur.local import openai
from otel_arthur.local.arthur_faults import Faults
from otel_arthur.mapping import map_span, render_messages
from otel_arthur.pipeline import Pipeline
from otel_arthur.spool import FILE_NAME

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
APP = ROOT / "tests" / "apps" / "otlp_chat.py"
QUESTIONS = ("What is a span?", "And a trace?", "Thanks, bye.")
TOKEN = "e2e-token"
_FOREIGN = ("OTEL_", "ARTHUR_", "OPENAI_", "TRACELOOP_", "OPENINFERENCE_", "VERIFY_SSL")


def clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)} | extra


def expected_turns() -> list[tuple[str, openai.Completion]]:
    """(prompt as the record renders it, the local OpenAI's answer) for each question."""
    history, turns = [], []
    for question in QUESTIONS:
        history.append({"role": "user", "content": question})
        completion = openai.complete(history)
        turns.append((render_messages([(m["role"], m["content"]) for m in history]), completion))
        history.append({"role": "assistant", "content": completion.content})
    return turns


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_otlp_exporter_from_a_langchain_app_one_record_per_llm_call(compression, openai_server, local_arthur,
                                                                    tmp_path, figures):
    model_id = create_model_over_http(local_arthur)
    receiver = ReceiverSettings(port=0, auth_token=TOKEN, shutdown_timeout=5)
    with serving(arthur_settings(local_arthur.url, model_id, tmp_path / "spool"), receiver) as server:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(APP), *QUESTIONS], capture_output=True, text=True, timeout=120,
            env=clean_env(OPENAI_BASE_URL=openai_server.url + "/v1", OPENAI_API_KEY="unused",
                          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=server.traces,
                          OTEL_EXPORTER_OTLP_COMPRESSION=compression,
                          OTEL_EXPORTER_OTLP_HEADERS=f"Authorization=Bearer%20{TOKEN}"))
        assert result.returncode == 0, result.stderr
        spans = [load_span(s) for s in json.loads(result.stdout)]
        records = {r.partner_inference_id: r for r in map(map_span, spans) if r is not None}
        assert len(records) == len(QUESTIONS)
        rows = wait_for(lambda: (lambda rows: rows if len(rows) >= len(QUESTIONS) else None)(
            local_arthur.inferences(model_id)))
        seconds = time.monotonic() - started
        time.sleep(0.3)  # nothing more may arrive
        rows = local_arthur.inferences(model_id)
        counters = {s.name: s.value for s in server.receiver.counters.samples()}
    assert sorted(r["partner_inference_id"] for r in rows) == sorted(records)  # one record per LLM call
    rows.sort(key=lambda r: r["inference_timestamp"])
    for row, (prompt, completion) in zip(rows, expected_turns()):
        data = row["inference_data"]
        record = records[row["partner_inference_id"]]
        assert data == record.fields  # exactly what the in-app exporter maps from the same spans
        assert data["prompt"] == prompt and data["completion"] == completion.content
        assert (data["prompt_tokens"], data["completion_tokens"]) == \
            (completion.prompt_tokens, completion.completion_tokens)
        assert data["service_name"] == "otlp-chat" and data["temperature"] == 0.1
    assert counters["otel_arthur_receiver_spans_ignored_total"] >= len(QUESTIONS)  # the handle-turn spans
    assert counters["otel_arthur_receiver_spans_rejected_total"] == 0
    figures[f"OTLPSpanExporter ({compression}) -> serve -> Arthur"] = {
        "llm_calls": len(QUESTIONS), "spans_exported": int(counters["otel_arthur_receiver_spans_received_total"]),
        "records": len(rows), "seconds_incl_app_start": round(seconds, 1)}


# -- SIGTERM ---------------------------------------------------------------------------------------

SHUTDOWN_TIMEOUT = 3.0
SPANS_PER_REQUEST = 20


class ServeProcess:
    """``otel-arthur serve`` as a subprocess on a free port, in its own process group; its log in a file.

    Started by the constructor: when the start line does not appear, the constructor stops the group
    before failing, since the caller has no object to stop yet."""

    def __init__(self, env: dict[str, str], log: Path, *flags: str, open_files: int | None = None,
                 start_timeout: float = 30.0) -> None:
        """``open_files``: the process's file-descriptor limit (ulimit -n), when not inherited."""
        self.log = log
        self._log_file = log.open("w")
        limit = None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2)
        self.process = subprocess.Popen([str(BIN / "otel-arthur"), "serve", "--port", "0", "--grpc-port", "0", *flags],
                                        env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=limit)
        try:
            scheme, port, grpc_port = wait_for(self._ports, timeout=start_timeout)
        except BaseException:  # pytest.fail raises a BaseException
            self.stop()
            raise
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"

    def _ports(self) -> tuple[str, str, str] | None:
        """The scheme and ports serve says it listens on (it was started with --port 0 --grpc-port 0)."""
        if self.process.poll() is not None:
            pytest.fail(f"serve exited {self.process.returncode}: {self.log.read_text()}")
        found = re.search(r"(https?)://127\.0\.0\.1:(\d+)/v1/traces and OTLP/gRPC on 127\.0\.0\.1:(\d+)",
                          self.log.read_text())
        return (found[1], found[2], found[3]) if found else None

    def stop(self) -> None:
        """SIGKILL to the whole group (serve and its decode processes), even when serve itself has exited."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty already
        self.process.wait()
        self._log_file.close()


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    members = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while listing
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat_path.parent.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_a_serve_process_that_never_says_it_listens_is_stopped_with_its_group(local_arthur, tmp_path, monkeypatch):
    model_id = create_model_over_http(local_arthur)
    env = clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                    ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", ARTHUR_SPOOL_DIR=str(tmp_path / "spool"))
    log = tmp_path / "serve.log"
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def recorded(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(popen(*args, **kwargs))
        return started[-1]

    def stop_the_decoder() -> None:
        # Stopped (SIGSTOP), it cannot notice serve's end and exit on its own: only a signal to the group ends it.
        found = wait_for(lambda: log.exists() and re.search(r"pids ([\d, ]+)\)", log.read_text()), timeout=30)
        for pid in re.findall(r"\d+", found[1]):
            os.kill(int(pid), signal.SIGSTOP)

    monkeypatch.setattr(subprocess, "Popen", recorded)
    stopper = threading.Thread(target=stop_the_decoder)
    try:
        stopper.start()
        # On "localhost" its start line never matches the 127.0.0.1 that ServeProcess waits for.
        with pytest.raises(pytest.fail.Exception, match="not within"):
            ServeProcess(env, log, "--host", "localhost", "--decode-processes", "1", start_timeout=10)
        stopper.join()
        [process] = started
        assert "Receiving OTLP" in log.read_text()  # it did start: the group had to be stopped
        assert process.poll() is not None
        wait_for(lambda: not group_members(process.pid), timeout=15)  # its stopped decode process too
    finally:
        stopper.join()
        for process in started:  # old code left them running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def request_body(first: int) -> tuple[bytes, list[str]]:
    """SPANS_PER_REQUEST generation spans with new ids, and their record ids."""
    templates = generation_spans()
    spans = [reidentified(templates[n % len(templates)], 0xC0FFEE_0000 + n, n + 1)
             for n in range(first, first + SPANS_PER_REQUEST)]
    return encode_spans(spans).SerializeToString(), [map_span(s).partner_inference_id for s in spans]


@pytest.mark.parametrize("decode_processes", [0, 2])
def test_sigterm_with_requests_in_flight_loses_no_accepted_record(decode_processes, local_arthur, tmp_path, figures):
    model_id = create_model_over_http(local_arthur)
    env = clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                    ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", ARTHUR_SPOOL_DIR=str(tmp_path / "spool"),
                    ARTHUR_BATCH_MAX_RECORDS="5")
    local_arthur.faults.set(Faults(rate_slow=1.0, slow_seconds=0.2))  # delivery lags: a remainder is left
    serve = ServeProcess(env, tmp_path / "serve.log", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
                         "--decode-processes", str(decode_processes))
    accepted: list[str] = []
    statuses: list[object] = []
    in_flight: list[object] = []
    lock = threading.Lock()
    try:
        wait_for(lambda: requests.get(serve.url + "/readyz", timeout=5).status_code == 200)

        def slow_upload(first: int) -> None:  # in flight when SIGTERM arrives: its body is still coming
            body, ids = request_body(first)
            size = len(body) // 4 + 1
            pieces = [body[i:i + size] for i in range(0, len(body), size)]

            def trickle():
                for piece in pieces:
                    yield piece
                    time.sleep(0.25)

            status = send(trickle(), ids)
            with lock:
                in_flight.append(status)

        def steady(first: int) -> None:  # one request after another until the server is gone
            n = first
            while True:
                body, ids = request_body(n)
                if send(body, ids) != 200:
                    return
                n += SPANS_PER_REQUEST

        def send(body, ids) -> object:
            try:
                response = requests.post(serve.url + "/v1/traces", data=body, headers=PROTOBUF, timeout=30)
            except requests.ConnectionError as exc:
                status: object = type(exc).__name__
            else:
                status = response.status_code
            with lock:
                statuses.append(status)
                if status == 200:
                    accepted.extend(ids)
            return status

        slow = [threading.Thread(target=slow_upload, args=(k * 1000,)) for k in range(3)]
        fast = [threading.Thread(target=steady, args=(100_000 + k * 100_000,)) for k in range(2)]
        for thread in slow + fast:
            thread.start()
        time.sleep(0.4)
        signalled = time.monotonic()
        # To the whole process group, as systemd does: decode processes must outlive the drain.
        os.killpg(serve.process.pid, signal.SIGTERM)
        for thread in slow + fast:
            thread.join(timeout=30)
        returncode = serve.process.wait(timeout=SHUTDOWN_TIMEOUT + 15)
        exit_seconds = time.monotonic() - signalled
        log = serve.log.read_text()
    finally:
        local_arthur.faults.set(Faults())
        serve.stop()
    assert returncode == 0, log
    assert "Traceback" not in log and "Shutting down" in log
    assert in_flight == [200] * len(slow)  # the uploads still arriving at SIGTERM were finished and accepted
    assert set(s for s in statuses if s != 200) <= {503, "ConnectionError"}, statuses  # never 500
    delivered_before_exit = {r["partner_inference_id"] for r in local_arthur.inferences(model_id)}

    # The remainder is safe in the spool: the next process over it delivers everything accepted.
    pipeline = Pipeline(arthur_settings(local_arthur.url, model_id, tmp_path / "spool"))
    try:
        assert pipeline.force_flush(60)
    finally:
        pipeline.shutdown(5)
    delivered = [r["partner_inference_id"] for r in local_arthur.inferences(model_id)]
    assert set(accepted) <= set(delivered)
    figures[f"SIGTERM with requests in flight, {decode_processes} decode processes"] = {
        "requests_200": statuses.count(200), "requests_503": statuses.count(503),
        "refused_connections": statuses.count("ConnectionError"), "records_accepted": len(accepted),
        "delivered_before_exit": len(delivered_before_exit & set(accepted)),
        "left_in_spool": len(set(accepted) - delivered_before_exit), "lost": len(set(accepted) - set(delivered)),
        "exit_code": returncode, "exit_seconds": round(exit_seconds, 1), "shutdown_timeout": SHUTDOWN_TIMEOUT}


def test_sigterm_exits_within_the_shutdown_timeout_while_a_request_is_stuck(local_arthur, tmp_path, figures):
    """A request held past --shutdown-timeout, its spool write waiting on another process's lock (as
    ``otel-arthur spool replay`` takes it), does not hold the exit: it stays unanswered, so it is retried."""
    model_id = create_model_over_http(local_arthur)
    env = clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                    ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", ARTHUR_SPOOL_DIR=str(tmp_path / "spool"))
    serve = ServeProcess(env, tmp_path / "serve.log", "--shutdown-timeout", "1")
    holder = sqlite3.connect(tmp_path / "spool" / FILE_NAME, timeout=5, isolation_level=None)
    answers: list[object] = []
    try:
        wait_for(lambda: requests.get(serve.url + "/readyz", timeout=5).status_code == 200)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, for longer than the spool's 10 s busy timeout

        def stuck() -> None:
            body, _ = request_body(700_000)
            try:
                answers.append(requests.post(serve.url + "/v1/traces", data=body, headers=PROTOBUF,
                                             timeout=30).status_code)
            except requests.ConnectionError as exc:
                answers.append(type(exc).__name__)

        request = threading.Thread(target=stuck)
        request.start()
        time.sleep(0.5)  # the request reaches the spool and waits on its lock
        signalled = time.monotonic()
        os.killpg(serve.process.pid, signal.SIGTERM)
        returncode = serve.process.wait(timeout=1 + 5)  # the stuck write alone would take 10 s
        exit_seconds = time.monotonic() - signalled
        request.join(timeout=30)
        log = serve.log.read_text()
    finally:
        holder.close()
        serve.stop()
    assert returncode == 0 and "exiting now" in log
    assert answers == [503]  # retried; never a 200 for records that were not spooled, nor a 500 (dropped)
    figures["SIGTERM with a request stuck on the spool lock"] = {"shutdown_timeout": 1.0,
                                                                "exit_seconds": round(exit_seconds, 1)}


def test_decode_processes_deliver_and_do_not_outlive_a_killed_serve(local_arthur, tmp_path):
    model_id = create_model_over_http(local_arthur)
    env = clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                    ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", ARTHUR_SPOOL_DIR=str(tmp_path / "spool"),
                    OTEL_ARTHUR_RECEIVER_DECODE_PROCESSES="2")
    serve = ServeProcess(env, tmp_path / "serve.log")
    try:
        decoders = [int(pid) for pid in re.findall(r"\d+", re.search(r"pids ([\d, ]+)\)", serve.log.read_text())[1])]
        assert len(decoders) == 2
        ids = []
        for first in (0, SPANS_PER_REQUEST):
            body, batch_ids = request_body(first)
            assert requests.post(serve.url + "/v1/traces", data=body, headers=PROTOBUF, timeout=30).status_code == 200
            ids += batch_ids
        wait_for(lambda: len(local_arthur.inferences(model_id)) >= len(ids))
        assert sorted(r["partner_inference_id"] for r in local_arthur.inferences(model_id)) == sorted(ids)
        serve.process.kill()  # -9: no chance to stop its pool
        serve.process.wait()
        wait_for(lambda: not any(_alive(pid) for pid in decoders), timeout=15)
    finally:
        serve.stop()


def _alive(pid: int) -> bool:
    """Not a zombie: a process that exited but was not reaped yet still has its /proc entry."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- what one request may cost -----------------------------------------------------------------------

MB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set so far (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_ten_million_empty_spans_are_refused_in_bounded_memory_and_serve_keeps_serving(local_arthur, tmp_path,
                                                                                        figures):
    """20 MB of empty spans in a 19 KB gzip body: counted on the wire and refused, one and two at once."""
    model_id = create_model_over_http(local_arthur)
    env = clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                    ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", ARTHUR_SPOOL_DIR=str(tmp_path / "spool"))
    body = gzip.compress(empty_spans_request(10_000_000), 9)
    headers = PROTOBUF | {"Content-Encoding": "gzip"}
    serve = ServeProcess(env, tmp_path / "serve.log")
    try:
        started = peak_rss(serve.process.pid)

        def post() -> requests.Response:
            return requests.post(serve.url + "/v1/traces", data=body, headers=headers, timeout=120)

        first = post()
        after_one = peak_rss(serve.process.pid)
        answers: list[requests.Response] = []
        pair = [threading.Thread(target=lambda: answers.append(post())) for _ in range(2)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()
        after_two = peak_rss(serve.process.pid)
        good, ids = request_body(900_000)
        assert requests.post(serve.url + "/v1/traces", data=good, headers=PROTOBUF, timeout=30).status_code == 200
        wait_for(lambda: {r["partner_inference_id"] for r in local_arthur.inferences(model_id)} >= set(ids))
    finally:
        serve.stop()
    assert first.status_code == 413 and "--max-spans-per-request" in first.text
    assert [a.status_code for a in answers] == [413, 413]
    assert after_one <= 400 * MB and after_two <= 600 * MB
    figures["10 million empty spans in one gzip body"] = {
        "gzip_bytes": len(body), "status": first.status_code, "peak_rss_mb_at_start": started // MB,
        "peak_rss_mb_after_one": after_one // MB, "peak_rss_mb_after_two_at_once": after_two // MB}


# -- slow clients --------------------------------------------------------------------------------------

def closed_by_the_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection before the socket's timeout, without answering."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_clients_are_cut_off_at_their_deadlines_and_others_keep_being_served(local_arthur, tmp_path, figures):
    """Slowloris: 300 connections that stop mid-body, mid-headers or before a byte, against a serve whose
    file-descriptor limit (256) they would exhaust. The cap closes those past it at once, the deadlines
    close the rest, and a client that retries as a Collector does is served."""
    model_id = create_model_over_http(local_arthur)
    env = clean_env(ARTHUR_ENDPOINT_URL=local_arthur.url, ARTHUR_API_KEY=local_arthur.api_key,
                    ARTHUR_MODEL_ID=model_id, ARTHUR_ALLOW_INSECURE="true", ARTHUR_SPOOL_DIR=str(tmp_path / "spool"))
    serve = ServeProcess(env, tmp_path / "serve.log", "--header-timeout", "1", "--body-timeout", "1",
                         open_files=256)
    port = int(serve.url.rsplit(":", 1)[1])
    head = b"POST /v1/traces HTTP/1.1\r\nHost: serve\r\nContent-Type: application/x-protobuf\r\n"
    stalls = {"mid-body": head + b"Content-Length: 1000\r\n\r\n" + b"\0" * 10, "mid-headers": head, "idle": b""}
    slow: list[tuple[str, socket.socket]] = []
    try:
        for kind, sent in stalls.items():
            for _ in range(100):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                slow.append((kind, sock))
                if sent:
                    sock.sendall(sent)
        closed = Counter(kind for kind, sock in slow if closed_by_the_server(sock))
        body, ids = request_body(800_000)
        attempts, status = 0, None
        while status != 200 and attempts < 50:  # otlphttp retries a refused or closed connection
            attempts += 1
            try:
                status = requests.post(serve.url + "/v1/traces", data=body, headers=PROTOBUF, timeout=30).status_code
            except requests.ConnectionError:
                time.sleep(0.2)
        metrics = requests.get(serve.url + "/metrics", timeout=30).text
    finally:
        for _, sock in slow:
            sock.close()
        serve.stop()
    assert closed == {kind: 100 for kind in stalls}
    assert status == 200
    reasons = dict(re.findall(r'otel_arthur_receiver_connections_closed_total\{reason="(\w+)"\} (\S+)', metrics))
    assert set(reasons) == {"header_timeout", "body_timeout", "max_connections"}
    assert sum(float(count) for count in reasons.values()) == len(slow)
    figures["300 slow connections, 256 file descriptors"] = {
        "closed_by_reason": ", ".join(f"{k} {int(float(v))}" for k, v in sorted(reasons.items())),
        "attempts_until_200": attempts}
