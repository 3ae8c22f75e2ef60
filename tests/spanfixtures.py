"""Span fixtures as JSON: the one home of the format that ``fixtures/record_spans.py`` writes.

A file is a JSON list of spans, each::

    {"name", "kind": "CLIENT", "trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>"|null,
     "start_time_unix_nano", "end_time_unix_nano", "status": {"code": "ERROR", "description": str|null},
     "attributes": {...}, "resource": {...}, "events": [{"name", "time_unix_nano", "attributes"}]}

JSON has no tuples, so sequence attribute values are lists on disk and tuples again once loaded, as
the SDK holds them. Loading rebuilds real ``ReadableSpan`` objects, so mapper tests feed the mapper
exactly what an exporter would receive.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel_arthur.conventions import Convention, Messages

SPANS_DIR = Path(__file__).parent / "fixtures" / "spans"


def _to_json(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in (attributes or {}).items()}


def _from_json(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}


def dump_span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None and span.start_time is not None and span.end_time is not None, "span not ended"
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "attributes": _to_json(span.attributes),
        "resource": _to_json(span.resource.attributes),
        "events": [
            {"name": e.name, "time_unix_nano": e.timestamp, "attributes": _to_json(e.attributes)} for e in span.events
        ],
    }


def dump_spans(spans: Iterable[ReadableSpan]) -> list[dict[str, Any]]:
    """Spans in start order, so a file reads top-down like the trace."""
    return [dump_span(s) for s in sorted(spans, key=lambda s: s.start_time or 0)]


def _context(trace_id: int, span_id: str) -> SpanContext:
    return SpanContext(trace_id, int(span_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def load_span(data: Mapping[str, Any]) -> ReadableSpan:
    trace_id = int(data["trace_id"], 16)
    parent = data["parent_span_id"]
    return ReadableSpan(
        name=data["name"],
        context=_context(trace_id, data["span_id"]),
        parent=_context(trace_id, parent) if parent else None,
        resource=Resource(_from_json(data["resource"])),
        attributes=_from_json(data["attributes"]),
        events=[Event(e["name"], _from_json(e["attributes"]), e["time_unix_nano"]) for e in data["events"]],
        kind=SpanKind[data["kind"]],
        status=Status(StatusCode[data["status"]["code"]], data["status"]["description"]),
        start_time=data["start_time_unix_nano"],
        end_time=data["end_time_unix_nano"],
    )


def load_spans(name: str) -> list[ReadableSpan]:
    """The spans of ``fixtures/spans/<name>.json`` (the ``.json`` may be given or left off)."""
    return [load_span(s) for s in read_json(name)]


def generation_spans() -> list[ReadableSpan]:
    """Every recorded generation span whose record Arthur accepts (one with a prompt), across all fixture files.

    Left out: generations recorded without content (GenAI semconv with capture off), whose records lack
    the prompt that the model's PIPELINE_INPUT attribute requires.
    """
    from otel_arthur.fields import PROMPT
    from otel_arthur.mapping import map_span

    spans = [span for path in sorted(SPANS_DIR.glob("*.json")) for span in load_spans(path.name)]
    return [span for span, record in zip(spans, map(map_span, spans)) if record is not None and PROMPT in record.fields]


def reidentified(span: ReadableSpan, trace_id: int, span_id: int) -> ReadableSpan:
    """The same span under another identity, as if its call had been made again."""
    return ReadableSpan(
        name=span.name,
        context=_context(trace_id, format(span_id, "016x")),
        resource=span.resource,
        attributes=span.attributes,
        events=span.events,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
    )


def read_json(name: str) -> list[dict[str, Any]]:
    path = SPANS_DIR / (name if name.endswith(".json") else f"{name}.json")
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def write_json(name: str, spans: Sequence[ReadableSpan]) -> Path:
    path = SPANS_DIR / (name if name.endswith(".json") else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dump_spans(spans), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def convention_attribute_keys(convention: Convention) -> set[str]:
    """Every attribute ``convention`` reads (indexed messages: the first two)."""
    keys = {convention.marker, *convention.json_sources, *(k for ks in convention.scalars.values() for k in ks)}
    if convention.system_instructions:
        keys.add(convention.system_instructions)
    if convention.message_layout == Messages.JSON:
        keys.update((convention.input_messages, convention.output_messages))
    else:
        for prefix in (convention.input_messages, convention.output_messages):
            for index in range(2):
                keys.update(f"{prefix}.{index}{convention.message_infix}.{part}" for part in ("role", "content"))
    return keys
