"""One odd span costs only itself: hostile attribute values through the in-app exporter into a local Arthur.

Spans are made by the real SDK, so every value is one it accepts and keeps: str (lone surrogates
included), bytes, bool, int of any size, float (NaN, infinities), None, and sequences and mappings
of those, nested; message attributes also get huge and deeply nested JSON. Good generations in the
same batch must all reach Arthur, and every generation span is either spooled or counted as dropped.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from arthurmodel import create_model_over_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanContext
from spanfixtures import convention_attribute_keys

from otel_arthur import ArthurSpanExporter
from otel_arthur.conventions import CONVENTIONS, GENAI, Convention, Messages
from otel_arthur.mapping import classify, span_attributes
from otel_arthur.retry import RetryPolicy
from otel_arthur.stats import DropReason, PipelineStats

QUICK = RetryPolicy(initial_interval=0.01, max_interval=0.05, max_elapsed=5)
TRACER = TracerProvider().get_tracer("hostile")  # no processor: the test hands the ended spans to the exporter


def good_attributes(convention: Convention, text: str) -> dict[str, str]:
    """A plain generation of ``convention`` whose prompt is ``Human: <text>``."""
    marker = {convention.marker: sorted(convention.generation_values)[0]}
    if convention.message_layout == Messages.JSON:
        return marker | {convention.input_messages: json.dumps([{"role": "user", "content": text}])}
    base = f"{convention.input_messages}.0{convention.message_infix}"
    return marker | {f"{base}.role": "user", f"{base}.content": text}


def attribute_keys(convention: Convention) -> list[str]:
    """Every attribute ``convention`` reads."""
    return sorted(convention_attribute_keys(convention))


def ended_span(attributes: dict) -> ReadableSpan:
    span = TRACER.start_span("chat", attributes=attributes)
    span.end()
    return span


def exported(exporter: ArthurSpanExporter, spans: list[ReadableSpan]) -> tuple[str, PipelineStats]:
    result = exporter.export(spans)
    exporter.force_flush(10_000)  # False when Arthur refused some hostile record: not this test's concern
    return result.name, exporter.stats()


@pytest.fixture(scope="module")
def model_id(local_arthur) -> str:
    return create_model_over_http(local_arthur)


@pytest.fixture(scope="module")
def exporter(local_arthur, model_id, tmp_path_factory):
    exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, model_id=model_id,
                                  allow_insecure=True, spool_dir=tmp_path_factory.mktemp("spool"), retry_policy=QUICK)
    yield exporter
    exporter.shutdown(1_000)


def arrived(local_arthur, model_id: str, spans: list[ReadableSpan]) -> dict[str, str]:
    """Partner inference id -> prompt in Arthur, for ``spans``."""
    wanted = {f"{s.context.trace_id:032x}-{s.context.span_id:016x}" for s in spans}
    return {row["partner_inference_id"]: row["inference_data"]["prompt"] for row in local_arthur.inferences(model_id)
            if row["partner_inference_id"] in wanted}


# -- one odd span among 100 ------------------------------------------------------------------------

def _unforeseen() -> ReadableSpan:
    """A span the mapper cannot handle: a start time past the year 9999 (a clock in the wrong unit)."""
    return ReadableSpan(name="odd", context=SpanContext(uuid.uuid4().int >> 64, 0x1234, is_remote=False),
                        attributes={"gen_ai.operation.name": "chat"}, start_time=2**90)


ODD_SPANS = {
    "bytes": lambda: ended_span(good_attributes(GENAI, "odd") | {"gen_ai.request.model": b"\xff\x00"}),
    "surrogate-in-sequence": lambda: ended_span(good_attributes(GENAI, "odd") | {"gen_ai.request.model": ("\ud800",)}),
    "deep-json": lambda: ended_span({"gen_ai.operation.name": "chat",
                                     "gen_ai.input.messages": "[" * 100_000 + "]" * 100_000}),
    "mapping-marker": lambda: ended_span({"gen_ai.operation.name": {"a": "chat"}}),
    "huge-int": lambda: ended_span(good_attributes(GENAI, "odd") | {"gen_ai.usage.input_tokens": 10**5000}),
    "unforeseen": _unforeseen,
}


@pytest.mark.parametrize("odd", ODD_SPANS.values(), ids=ODD_SPANS.keys())
def test_one_odd_span_among_100_costs_at_most_itself(odd, exporter, local_arthur, model_id):
    good = [ended_span(good_attributes(GENAI, f"good {index}")) for index in range(99)]
    before = exporter.stats()
    result, after = exported(exporter, [*good[:50], odd(), *good[50:]])
    assert result == "SUCCESS"
    assert arrived(local_arthur, model_id, good) == {
        f"{s.context.trace_id:032x}-{s.context.span_id:016x}": f"Human: good {index}" for index, s in enumerate(good)}
    spooled = after.spooled - before.spooled
    unmappable = after.dropped.get(DropReason.UNMAPPABLE, 0) - before.dropped.get(DropReason.UNMAPPABLE, 0)
    assert spooled + unmappable in (99, 100)  # 99 when the odd one is no generation (a mapping as its marker)
    assert sum(after.dropped.values()) - sum(before.dropped.values()) == unmappable


def test_an_unmappable_span_is_counted_and_said_once(local_arthur, model_id, tmp_path, caplog):
    exporter = ArthurSpanExporter(url=local_arthur.url, api_key=local_arthur.api_key, model_id=model_id,
                                  allow_insecure=True, spool_dir=tmp_path, retry_policy=QUICK)
    try:
        caplog.set_level(logging.WARNING, logger="otel_arthur")
        for _ in range(2):
            assert exporter.export([ended_span(good_attributes(GENAI, "fine")), _unforeseen()]).name == "SUCCESS"
        assert exporter.stats().dropped == {DropReason.UNMAPPABLE: 2}
        assert exporter.stats().spooled == 2
    finally:
        exporter.shutdown(1_000)
    [line] = [r.getMessage() for r in caplog.records if DropReason.UNMAPPABLE in r.getMessage()]
    assert line.startswith("1 generation spans could not be mapped or spooled: each was dropped alone")
    assert "span 'odd' cannot be mapped" in line


# -- the property ----------------------------------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(st.characters() | surrogates, max_size=30)
scalars = st.one_of(
    st.none(), st.booleans(), texts, st.binary(max_size=20), st.integers(), st.floats(),
    st.sampled_from([2**63, -(2**63) - 1, float("nan"), float("inf"), "m" * 300_000]),
    st.integers(4_300, 5_000).map(lambda digits: 10**digits),  # json cannot write it (nor repr: built, not listed)
)
sdk_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3).map(tuple) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "parts", "content", "type", "finish_reason", "model", "session_id"]), children,
        max_size=4),
    max_leaves=10,
).map(json.dumps)
json_texts = st.one_of(
    json_documents,
    st.integers(1, 100_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 5_000).map(lambda depth: '[{"role": "user", "parts": ' + "[" * depth + "]" * depth + "}]"),
    st.integers(1, 300_000).map(lambda size: json.dumps([{"role": "user", "parts": [{"content": "x" * size}]}])),
)


@st.composite
def hostile_attributes(draw, convention: Convention) -> dict:
    keys = attribute_keys(convention)
    attributes = draw(st.dictionaries(st.sampled_from(keys), sdk_values | json_texts, max_size=len(keys)))
    if draw(st.integers(0, 4)):  # mostly a generation, so the mapper sees it
        attributes[convention.marker] = draw(st.sampled_from(sorted(convention.generation_values)))
    return attributes


@st.composite
def batches(draw) -> tuple[list[dict], list[dict]]:
    convention = draw(st.sampled_from(CONVENTIONS))
    hostile = draw(st.lists(hostile_attributes(convention), min_size=1, max_size=3))
    good = [good_attributes(convention, f"good {index}") for index in range(draw(st.integers(1, 3)))]
    return good, hostile


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches(), data=st.data())
def test_good_spans_arrive_whatever_the_others_in_their_batch_carry(batch, data, exporter, local_arthur, model_id):
    good_attrs, hostile_attrs = batch
    good = [ended_span(attributes) for attributes in good_attrs]
    hostile = [ended_span(attributes) for attributes in hostile_attrs]
    spans = data.draw(st.permutations(good + hostile))
    generations = sum(classify(span_attributes(s)) is not None for s in spans)
    before = exporter.stats()
    result, after = exported(exporter, spans)
    assert result == "SUCCESS"
    assert arrived(local_arthur, model_id, good) == {
        f"{s.context.trace_id:032x}-{s.context.span_id:016x}": f"Human: good {index}" for index, s in enumerate(good)}
    spooled = after.spooled - before.spooled
    dropped = sum(after.dropped.values()) - sum(before.dropped.values())
    assert spooled + dropped == generations  # none lost silently
    assert set(after.dropped) <= {DropReason.UNMAPPABLE}

