"""Pure pieces of delivery: 207 parsing, Retry-After, JWT expiry, batch splitting, binding."""

import base64
import json
import time
from email.utils import formatdate

import pytest

from otel_arthur.binding import BindingError, bind
from otel_arthur.clients.http import RetryableError, parse_retry_after
from otel_arthur.clients.v3 import (
    ArthurModel,
    ModelAttribute,
    jwt_expiry,
    parse_model,
    parse_multistatus,
)
from otel_arthur.delivery import split_batches
from otel_arthur.fields import FIELDS
from otel_arthur.mapping import InferenceRecord


class FakeResponse:
    def __init__(self, body):
        self._body = body

    def json(self):
        if isinstance(self._body, Exception):
            raise self._body
        return self._body


def test_multistatus_parsed_in_order():
    body = {"counts": {"success": 1, "failure": 1, "total": 2},
            "results": [{"status": 200, "message": "success"}, {"status": 400, "message": "bad"}]}
    results = parse_multistatus(FakeResponse(body))
    assert [(r.status, r.message, r.ok) for r in results] == [(200, "success", True), (400, "bad", False)]


@pytest.mark.parametrize("body", [
    ValueError("not json"),
    [],
    {"results": []},
    {"counts": {"success": 0, "failure": 0}, "results": []},
    {"counts": {"success": 0, "failure": 0, "total": 0, "extra": 1}, "results": []},
    {"counts": {"success": 1, "failure": 0, "total": 1}, "results": [{"message": "no status"}]},
    {"counts": {"success": 1, "failure": 0, "total": 1}, "results": [{"status": 500, "message": "x"}]},
])
def test_multistatus_strictness_matches_the_sdk(body):
    with pytest.raises(RetryableError):
        parse_multistatus(FakeResponse(body))


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    now = time.time()
    assert 25 <= parse_retry_after(formatdate(now + 30, usegmt=True), now=now) <= 31
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def _jwt(claims):
    encode = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{encode({'alg': 'HS256'})}.{encode(claims)}.sig"


def test_jwt_expiry_read_without_verification():
    assert jwt_expiry(_jwt({"exp": 1700000000})) == 1700000000.0
    assert jwt_expiry(_jwt({"sub": "x"})) is None
    assert jwt_expiry("garbage") is None


def test_batches_respect_count_and_bytes():
    sizes = [10] * 7
    assert [list(r) for r in split_batches(sizes, 3, 10_000)] == [[0, 1, 2], [3, 4, 5], [6]]
    # [ + 10 + , + 10 + ] = 23 bytes for two rows; a 30-byte limit holds two, not three
    assert [len(r) for r in split_batches(sizes, 100, 30)] == [2, 2, 2, 1]
    # a row bigger than the limit still travels, alone
    assert [list(r) for r in split_batches([100, 1], 100, 30)] == [[0], [1]]
    assert list(split_batches([], 10, 10)) == []


def _model(*attributes):
    return ArthurModel("model-uuid", "partner", tuple(ModelAttribute(*a) for a in attributes))


TEXT_MODEL = (("input_text", "UNSTRUCTURED_TEXT", "PIPELINE_INPUT"),
              ("output_text", "UNSTRUCTURED_TEXT", "PREDICTED_VALUE"))


def test_binding_follows_the_seed_handlers_rules():
    model = _model(("first", "STRING", "PIPELINE_INPUT"), *TEXT_MODEL,
                   ("prompt_tokens", "INTEGER", "NON_INPUT_DATA"), ("duration", "FLOAT", "NON_INPUT_DATA"),
                   ("latency_s", "FLOAT", "NON_INPUT_DATA"))
    binding = bind(model, {"duration": "latency_s"})
    record = InferenceRecord("t-s", "2026-01-01T00:00:00+00:00",
                             {"prompt": "Human: hi", "completion": "hello", "prompt_tokens": 3.0,
                              "duration": 1, "model": "gpt"})
    row = binding.to_row(record)
    assert row == {"partner_inference_id": "t-s", "inference_timestamp": "2026-01-01T00:00:00+00:00",
                   "inference_data": {"input_text": "Human: hi", "output_text": "hello",
                                      "prompt_tokens": 3, "latency_s": 1.0}}
    assert "model" in binding.skipped and "prompt_tokens" not in binding.skipped


@pytest.mark.parametrize("inputs, outputs", [
    (("question", "context"), ("answer", "rationale")),
    (("context", "question"), ("rationale", "answer")),  # the same names, the other order: order decides, not name
])
def test_the_first_text_input_and_output_in_the_models_order_win(inputs, outputs):
    """Two UNSTRUCTURED_TEXT inputs and two predicted values: the first of each, in the order Arthur lists them."""
    def text(name, stage):
        return {"name": name, "value_type": "UNSTRUCTURED_TEXT", "stage": stage}

    body = {"id": "model-uuid", "partner_model_id": "partner", "attributes": [
        text(inputs[0], "PIPELINE_INPUT"), text(outputs[0], "PREDICTED_VALUE"),
        text(inputs[1], "PIPELINE_INPUT"), text(outputs[1], "PREDICTED_VALUE")]}
    binding = bind(parse_model(body))
    row = binding.to_row(InferenceRecord("i", "t", {"prompt": "Human: hi", "completion": "hello"}))
    assert row["inference_data"] == {inputs[0]: "Human: hi", outputs[0]: "hello"}


def test_binding_skips_are_logged_once(caplog):
    caplog.set_level("INFO", logger="otel_arthur.binding")
    binding = bind(_model(*TEXT_MODEL))
    for _ in range(3):
        binding.to_row(InferenceRecord("i", "t", {"prompt": "p", "completion": "c", "duration": 1.0}))
    lines = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "duration" in lines[0].getMessage()
    assert set(binding.skipped) == set(FIELDS) - {"prompt", "completion"}


def test_value_that_does_not_fit_its_type_is_left_out():
    model = _model(*TEXT_MODEL, ("prompt_tokens", "INTEGER", "NON_INPUT_DATA"))
    row = bind(model).to_row(InferenceRecord("i", "t", {"prompt": "p", "completion": "c", "prompt_tokens": 2.5}))
    assert row["inference_data"] == {"input_text": "p", "output_text": "c"}


@pytest.mark.parametrize("attributes, overrides, message", [
    ((TEXT_MODEL[1],), None, "PIPELINE_INPUT"),
    ((TEXT_MODEL[0],), None, "PREDICTED_VALUE"),
    (TEXT_MODEL, {"nonsense": "input_text"}, "unknown fields"),
    (TEXT_MODEL, {"duration": "missing_attr"}, "lacks"),
])
def test_unusable_model_is_a_binding_error(attributes, overrides, message):
    with pytest.raises(BindingError, match=message):
        bind(_model(*attributes), overrides)


def test_a_split_batch_failing_half_way_reports_what_was_delivered():
    from otel_arthur.clients.http import NOT_SENT, RecordResult
    from otel_arthur.config import ArthurSettings
    from otel_arthur.destinations.v3 import ArthurSender

    class HalfWay:
        calls = 0

        def get_model(self, model_id):
            return _model(*TEXT_MODEL)

        def send_inferences(self, model_id, rows, body, read_timeout=None):
            self.calls += 1
            if self.calls > 1:
                raise RetryableError("cannot connect")
            return [RecordResult(200, "success")] * len(rows)

    settings = ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m", batch_max_records=2)
    records = [InferenceRecord(f"i{n}", "t", {"prompt": "p", "completion": "c"}) for n in range(5)]
    results = ArthurSender(settings, client=HalfWay()).send(records)
    assert [r.status for r in results] == [200, 200, NOT_SENT, NOT_SENT, NOT_SENT]
    assert all(r.retryable for r in results[2:]) and "cannot connect" in results[2].message


def test_rows_spooled_in_arthurs_shape_are_sent_as_stored_and_every_row_is_what_the_binding_makes(tmp_path):
    """A record whose fields are already their own types is spooled as Arthur's row and sent as stored, without
    decoding, when the model's attributes are the fields; any other record or model is bound as ever."""
    from otel_arthur.clients.http import RecordResult
    from otel_arthur.clients.v3 import encode_row
    from otel_arthur.config import ArthurSettings
    from otel_arthur.destinations.v3 import ArthurSender
    from otel_arthur.spool import Spool

    every_field = _model(*((name, spec.value_type, spec.stage) for name, spec in FIELDS.items()))
    renaming = _model(*TEXT_MODEL, ("prompt_tokens", "INTEGER", "NON_INPUT_DATA"))
    records = [
        InferenceRecord("as-is", "t", {"prompt": "p ✓", "completion": "c", "prompt_tokens": 3, "duration": 0.5}),
        InferenceRecord("coerced", "t", {"prompt": "p", "completion": "c", "prompt_tokens": "3", "duration": 1}),
        InferenceRecord("no-completion", "t", {"prompt": "p", "prompt_tokens": 3}),
    ]
    spool = Spool(tmp_path, "d", 1 << 20)
    spool.append(records)
    claimed = [c.record for c in spool.claim(10)]
    assert [c.row is not None for c in claimed] == [True, False, False]
    assert claimed == records

    for model in (every_field, renaming):
        class Capture:
            def get_model(self, model_id):
                return model

            def send_inferences(self, model_id, rows, body, read_timeout=None):
                self.body = body
                return [RecordResult(200, "success")] * len(rows)

        client = Capture()
        sender = ArthurSender(ArthurSettings.resolve(url="https://a.example", api_key="k", model_id="m"), client=client)
        sender.send(claimed)
        binding = bind(model)
        assert binding.as_is is (model is every_field)
        assert client.body == b"[" + b",".join(encode_row(binding.to_row(r)) for r in records) + b"]"
    spool.close()
