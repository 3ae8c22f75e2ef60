"""``serve --decode-processes``: bodies decoded and mapped in worker processes answer exactly as in the
serving process, and a decode process that dies costs a 503 (retried by the client), never a wrong answer.

Real spawned processes; the killed one is killed with SIGKILL.
"""

from __future__ import annotations

import gzip
import os
import signal

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from servehelpers import wait_for
from test_serve_receiver import PROTOBUF, FakeIntake, spans

from otel_arthur.config import ArthurSettings
from otel_arthur.destinations import OtlpExtraction, destination_for
from otel_arthur.fields import PROMPT
from otel_arthur.privacy import CONTENT_WITHHELD
from otel_arthur.serve.processes import DecodeProcesses
from otel_arthur.serve.receiver import Receiver

LIMIT = 1024 * 1024


def v3_extraction(**privacy) -> OtlpExtraction:
    settings = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="key", model_id="model", allow_insecure=True,
                                      **privacy)
    return OtlpExtraction.of([destination_for(settings)])


@pytest.fixture(scope="module")
def processes():
    decoders = DecodeProcesses(2, v3_extraction())
    try:
        yield decoders
    finally:
        decoders.close()


BODIES = {  # name: (body, headers)
    "generation and other spans": (lambda: encode_spans(spans()).SerializeToString(), PROTOBUF),
    "gzip": (lambda: gzip.compress(encode_spans(spans()).SerializeToString()),
             PROTOBUF | {"Content-Encoding": "gzip"}),
    "truncated protobuf": (lambda: encode_spans(spans()).SerializeToString()[:-9], PROTOBUF),
    "gzip bomb": (lambda: gzip.compress(b"\0" * (LIMIT + 1)), PROTOBUF | {"Content-Encoding": "gzip"}),
    "invalid JSON": (lambda: b'{"resourceSpans": [', {"Content-Type": "application/json"}),
}


@pytest.mark.parametrize("case", list(BODIES))
def test_the_same_answer_and_records_as_decoding_in_the_serving_process(case, processes):
    body, headers = BODIES[case][0](), BODIES[case][1]
    here, there = FakeIntake(), FakeIntake()
    expected = Receiver(here, max_body_bytes=LIMIT).handle(body, headers)
    reply = Receiver(there, max_body_bytes=LIMIT, decoder=processes.decode).handle(body, headers)
    assert (reply.status, reply.headers, reply.body) == (expected.status, expected.headers, expected.body)
    assert there.records == here.records and there.received == here.received
    assert expected.status != 200 or here.records  # the generation spans did become records


def test_decode_processes_hand_back_records_with_the_privacy_serve_spools_them_with():
    """Records come back as their spool rows hold them: here, content withheld as serve's own process would."""
    body = encode_spans(spans()).SerializeToString()
    extraction = v3_extraction(send_content=False)
    here, there = FakeIntake(), FakeIntake()
    decoders = DecodeProcesses(1, extraction)
    try:
        assert Receiver(there, decoder=decoders.decode).handle(body, PROTOBUF).status == 200
    finally:
        decoders.close()
    assert Receiver(here).handle(body, PROTOBUF).status == 200
    prepare = destination_for(extraction.v3).prepare  # what the pipeline does to serve's own records
    assert there.records == [prepare(record) for record in here.records]
    assert there.records and all(record.fields[PROMPT] == CONTENT_WITHHELD for record in there.records)


def test_the_span_limit_holds_in_decode_processes(processes):
    body = encode_spans(spans()).SerializeToString()
    limited = Receiver(FakeIntake(), max_spans_per_request=len(spans()) - 1, decoder=processes.decode)
    assert limited.handle(body, PROTOBUF).status == 413
    enough = Receiver(FakeIntake(), max_spans_per_request=len(spans()), decoder=processes.decode)
    assert enough.handle(body, PROTOBUF).status == 200


def test_a_killed_decode_process_costs_a_503_then_new_processes_decode():
    decoders = DecodeProcesses(1, v3_extraction())
    try:
        receiver = Receiver(FakeIntake(), decoder=decoders.decode)
        body = encode_spans(spans()).SerializeToString()
        assert receiver.handle(body, PROTOBUF).status == 200
        [killed] = decoders.pids
        os.kill(killed, signal.SIGKILL)
        statuses = []
        reply = wait_for(lambda: (lambda r: statuses.append(r.status) or (r if r.status != 200 else None))(
            receiver.handle(body, PROTOBUF)))
        assert reply.status == 503 and reply.headers["Retry-After"]  # the client keeps the spans and retries
        assert receiver.handle(body, PROTOBUF).status == 200
        assert decoders.pids and killed not in decoders.pids
        assert set(statuses) <= {200, 503}
    finally:
        decoders.close()
    decoders.close()  # idempotent
