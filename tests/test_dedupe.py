"""``dedupe.CallMemory``: one record per LLM call traced by a framework's and a provider SDK's instrumentor.

Spans are built as the real pair looks (see dedupe's docstring): siblings under an application
span, or each the root of its own trace, the provider's time inside the framework's. The end-to-end
run with the real instrumentors is in test_exporter_e2e.py.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

from otel_arthur.config import ArthurSettings
from otel_arthur.dedupe import ONE_SOURCE_REMEMBERED, CallMemory
from otel_arthur.destinations import OtlpExtraction
from otel_arthur.mapping import map_span
from otel_arthur.pipeline import Pipeline
from otel_arthur.serve.processes import DecodeProcesses
from otel_arthur.serve.receiver import Receiver

FRAMEWORK = InstrumentationScope("openinference.instrumentation.langchain")
PROVIDER = InstrumentationScope("openinference.instrumentation.openai")
PROTOBUF = {"Content-Type": "application/x-protobuf"}
_ids = itertools.count(1)


def generation(scope: InstrumentationScope, start: int, end: int, *, trace_id: int | None = None,
               parent: int | None = None, question: str = "What is a span?", answer: str | None = "Echo: it",
               ) -> ReadableSpan:
    attributes = {"openinference.span.kind": "LLM", "llm.input_messages.0.message.role": "user",
                  "llm.input_messages.0.message.content": question}
    if answer is not None:
        attributes |= {"llm.output_messages.0.message.role": "assistant",
                       "llm.output_messages.0.message.content": answer}
    trace_id = trace_id or next(_ids)
    return ReadableSpan(name=scope.name, context=SpanContext(trace_id, next(_ids), is_remote=False),
                        parent=SpanContext(trace_id, parent, is_remote=False) if parent else None,
                        attributes=attributes, resource=Resource({"service.name": "chat"}),
                        instrumentation_scope=scope, start_time=start, end_time=end)


def one_call(start: int = 1_000, *, under_app_span: bool = True, **content) -> tuple[ReadableSpan, ReadableSpan]:
    """(framework's span, provider's span) of one call: the provider's inside the framework's."""
    if under_app_span:
        trace_id, app_span = next(_ids), next(_ids)
        return (generation(FRAMEWORK, start, start + 100, trace_id=trace_id, parent=app_span, **content),
                generation(PROVIDER, start + 10, start + 90, trace_id=trace_id, parent=app_span, **content))
    return generation(FRAMEWORK, start, start + 100, **content), generation(PROVIDER, start + 10, start + 90, **content)


def stored(memory: CallMemory, batch: list[ReadableSpan]) -> list[str]:
    """What a front door spools of one export batch (or serve request): the kept records' span ids."""
    with memory.choosing([map_span(span) for span in batch]) as choice:
        choice.taken()
    return [record.fields["span_id"] for record in choice.records]


def span_id(span: ReadableSpan) -> str:
    return f"{span.context.span_id:016x}"


def test_provider_span_first_then_framework_span_in_a_later_batch():  # the in-app exporter's usual order
    framework, provider = one_call()
    memory = CallMemory()
    assert stored(memory, [provider]) == [span_id(provider)]
    assert stored(memory, [framework]) == []


def test_framework_span_first_out_of_order_keeps_it_and_leaves_out_the_provider_span():
    framework, provider = one_call()
    memory = CallMemory()
    assert stored(memory, [framework]) == [span_id(framework)]
    assert stored(memory, [provider]) == []


def test_both_in_one_batch_and_each_the_root_of_its_own_trace():
    framework, provider = one_call(under_app_span=False)
    assert stored(CallMemory(), [provider, framework]) == [span_id(provider)]


def test_a_record_stands_for_one_span_only_two_identical_calls_keep_two_records():
    first, second = one_call(1_000), one_call(1_020)  # same content, overlapping in time
    memory = CallMemory()
    kept = stored(memory, [first[1], second[1]]) + stored(memory, [first[0], second[0]])
    assert len(kept) == 2


def test_what_is_not_the_same_call_is_recorded():
    memory = CallMemory()
    framework, provider = one_call()
    other_answer = generation(PROVIDER, 1_010, 1_090, trace_id=framework.context.trace_id,
                              parent=framework.parent.span_id, answer="Echo: else")
    assert stored(memory, [framework, other_answer]) == [span_id(framework), span_id(other_answer)]
    same_scope = generation(FRAMEWORK, 1_010, 1_090, trace_id=framework.context.trace_id,
                            parent=framework.parent.span_id)  # two calls of one instrumentor never merge
    assert stored(memory, [same_scope]) == [span_id(same_scope)]
    later = one_call(5_000)[1]  # not inside the framework's time
    assert stored(memory, [later]) == [span_id(later)]
    framework, provider = one_call(answer=None)  # no completion (content not captured): no evidence
    assert stored(memory, [framework, provider]) == [span_id(framework), span_id(provider)]


def test_a_batch_not_stored_is_not_remembered_and_a_resent_span_gets_the_same_decision():
    framework, provider = one_call()
    memory = CallMemory()
    with memory.choosing([map_span(provider)]):
        pass  # refused (serve answered 503): the client sends it again
    assert stored(memory, [framework]) == [span_id(framework)]
    assert stored(memory, [provider]) == []
    assert stored(memory, [provider]) == []  # sent once more: still the same call
    assert stored(memory, [framework]) == [span_id(framework)]  # a re-sent record keeps its (stable) id


def test_forgotten_spans_make_a_duplicate_never_a_loss():
    now = [0.0]
    memory = CallMemory(window=60, clock=lambda: now[0])
    framework, provider = one_call()
    assert stored(memory, [provider]) == [span_id(provider)]
    now[0] = 61.0
    assert stored(memory, [framework]) == [span_id(framework)]
    small = CallMemory(max_remembered=1)
    framework, provider = one_call()
    stored(small, [provider])
    stored(small, [one_call(9_000)[0]])  # pushes the provider's span out
    assert stored(small, [framework]) == [span_id(framework)]


def shuffled_in_batches(calls, rng, batch_size: int) -> list[str]:
    spans = [span for call in calls for span in call]
    rng.shuffle(spans)
    memory = CallMemory()
    return [i for start in range(0, len(spans), batch_size) for i in stored(memory, spans[start:start + batch_size])]


ORDERS = (st.lists(st.booleans(), min_size=1, max_size=4), st.randoms(use_true_random=False),
          st.integers(min_value=1, max_value=4))


@settings(max_examples=60, deadline=None)
@given(*ORDERS)
def test_any_order_any_batches_exactly_one_record_per_call(under_app_span, rng, batch_size):
    calls = [one_call(1_000 + 5 * i, under_app_span=app, question=f"Question {i}?")
             for i, app in enumerate(under_app_span)]  # concurrent calls, each its own question
    assert len(shuffled_in_batches(calls, rng, batch_size)) == len(calls)


@settings(max_examples=60, deadline=None)
@given(*ORDERS)
def test_identical_concurrent_calls_are_never_lost(under_app_span, rng, batch_size):
    # Which record covers which span is decided greedily: with calls alike in everything, a duplicate may remain.
    calls = [one_call(1_000 + 5 * i, under_app_span=app) for i, app in enumerate(under_app_span)]
    assert len(calls) <= len(shuffled_in_batches(calls, rng, batch_size)) <= 2 * len(calls)


@pytest.mark.parametrize("decode_processes", [0, 1], ids=["in serve's process", "in a decode process"])
def test_across_serve_requests_in_either_order(tmp_path, decode_processes):
    class NeverSends:  # records stay in the spool: what was spooled is what is counted
        def send(self, records):
            raise AssertionError("not delivering in this test")

        def close(self):
            pass

    settings_ = ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m", allow_insecure=True,
                                       spool_dir=tmp_path)
    pipeline = Pipeline(settings_, transport=NeverSends())
    # A decode process hands back the records encoded, with what dedupe compares worked out before.
    decoders = DecodeProcesses(1, OtlpExtraction.of([pipeline.destination])) if decode_processes else None
    try:
        receiver = Receiver(pipeline, decoder=decoders.decode if decoders else None)
        calls = [one_call(1_000), one_call(2_000, under_app_span=False, question="Another?")]
        requests = [[calls[0][1]], [calls[1][0]], [calls[0][0], calls[1][1]]]  # provider first, framework first
        for request in requests:
            assert receiver.handle(encode_spans(request).SerializeToString(), PROTOBUF).status == 200
        stats = pipeline.stats()
        assert (stats.generation_spans, stats.spooled, stats.deduplicated) == (4, 2, 2)
    finally:
        if decoders is not None:
            decoders.close()
        pipeline.shutdown(timeout=0)


def test_an_app_traced_by_one_instrumentor_holds_few_spans_and_a_second_one_is_still_paired():
    memory = CallMemory()
    for start in range(0, 1_000 * 200, 200):  # one instrumentor: no span can cover another
        stored(memory, [generation(FRAMEWORK, start, start + 100, question=f"q{start}")])
    assert len(memory) == ONE_SOURCE_REMEMBERED
    # A second instrumentor appears: its first span still pairs with the recent one of the same call…
    framework, provider = one_call(10**9)
    assert stored(memory, [framework]) == [span_id(framework)] and stored(memory, [provider]) == []
    # …and from now on every span is remembered, up to the general bound.
    for start in range(2 * 10**9, 2 * 10**9 + 1_000 * 200, 200):
        stored(memory, [generation(FRAMEWORK, start, start + 100, question=f"q{start}")])
    assert len(memory) > ONE_SOURCE_REMEMBERED


@pytest.mark.parametrize("prompt", ["Human: hi", "Human: bad \ud800 text"])
def test_one_call_is_told_by_its_texts_whatever_they_hold(prompt):
    """A lone surrogate (which orjson refuses) digests too: the same texts alike, others apart."""
    from otel_arthur.dedupe import _call_digest
    from otel_arthur.mapping import InferenceRecord

    def record(**fields):
        return InferenceRecord("id", "2026-01-01T00:00:00+00:00", {"service_name": "svc", "prompt": prompt, **fields})

    assert _call_digest(record(completion="ok")) == _call_digest(record(completion="ok"))
    assert _call_digest(record(completion="ok")) != _call_digest(record(completion="ok."))
    assert _call_digest(record(completion="ok")) != _call_digest(record(completion="ok", service_name="other"))
    assert _call_digest(record()) is None
