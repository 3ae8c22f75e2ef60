"""Reading each convention's chat messages and tool calls out of span attributes: pure, shared.

The one home of message parsing: ``otel_arthur.mapping`` renders these messages into a v3 record's
prompt and completion, ``otel_arthur.openinference`` writes them again as OpenInference attributes.
A convention row (``otel_arthur.conventions``) says where its messages are. Nothing here raises on
what a span carries: malformed JSON, JSON nested past the interpreter's recursion limit and values
of the wrong type read as absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from otel_arthur.conventions import Convention, GenAI, Messages, ToolCallKeys


class ToolCall(NamedTuple):
    """One call a model asked for; ``arguments`` is JSON text as the model wrote it."""

    name: str | None
    arguments: str | None
    id: str | None


class Message(NamedTuple):
    role: str
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    """On a tool-role message: the call it answers."""


def clean_text(text: str) -> str:
    """Lone surrogates cannot be encoded as UTF-8; replace them rather than fail the batch later."""
    if text.isascii():  # no surrogate possible; spares encoding a copy of every prompt
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


Scalar = str | int | float | bool
_INT64 = 2**63  # Arthur's INTEGER; a longer int is no count, and past 4300 digits json cannot even write it


def field_value(value: Any) -> Scalar | None:
    """An attribute value as one JSON-safe scalar, or None when it holds none.

    Text loses lone surrogates, bytes are decoded (invalid UTF-8 replaced), a sequence gives its first
    item (``finish_reasons`` has one per choice); mappings, NaN, infinities and integers beyond 64 bits
    are no value.
    """
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return None


def attribute_text(value: Any) -> str:
    """An indexed message's role or content as text: "" when the attribute holds nothing usable."""
    if isinstance(value, str):
        return value
    scalar = field_value(value)
    return "" if scalar is None else str(scalar)


def parse_json(raw: Any) -> Any:
    """The JSON value of a text attribute; None for any other value, malformed JSON or nesting too deep to parse."""
    if not isinstance(raw, str):
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # "[[[[…" a few thousand deep exhausts the C parser's recursion limit
        return None


def first(attributes: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` that is set, else None."""
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


def scalar_text(value: Any) -> str | None:
    """A string, number or boolean as text; None for anything else (bytes, sequences, None)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def json_text(value: Any) -> str:
    """A string as is, any other JSON value as JSON text ("" when it cannot be written)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):  # circular or too deep: nothing worth carrying
        return ""


def parts_text(parts: Any) -> str:
    """Text of a GenAI ``parts`` list (or a bare string): text parts and tool results; other parts are left out."""
    return _read_parts(parts)[0]


def convention_messages(attributes: Mapping[str, Any], convention: Convention, *,
                        tool_calls: bool = True) -> tuple[list[Message], list[Message]]:
    """(input messages, output messages) of a generation, the system instructions first among the inputs.

    ``tool_calls=False`` spares an indexed layout the lookups that only tool calls and tool-call ids
    need (a third of a v3 record's mapping time, for a record that has no place for them).
    """
    if convention.message_layout == Messages.JSON:
        inputs = _json_messages(attributes.get(convention.input_messages))
        outputs = _json_messages(attributes.get(convention.output_messages))
    else:
        keys = convention.tool_call_keys if tool_calls else None
        inputs = _indexed_messages(attributes, convention.input_messages, convention.message_infix, keys)
        outputs = _indexed_messages(attributes, convention.output_messages, convention.message_infix, keys)
    if convention.system_instructions:
        system = parts_text(parse_json(attributes.get(convention.system_instructions)))
        if system:
            inputs.insert(0, Message("system", system))
    return inputs, outputs


def _read_parts(parts: Any) -> tuple[str, tuple[ToolCall, ...], str | None]:
    """(text, tool calls, answered call id) of a parts list, in one pass."""
    if isinstance(parts, str):
        return parts, (), None
    if not isinstance(parts, list):
        return "", (), None
    texts: list[str] = []
    calls: list[ToolCall] = []
    answered: str | None = None
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type", GenAI.PART_TEXT)
        if kind == GenAI.PART_TEXT:
            texts.append(json_text(part.get("content", "")))
        elif kind == GenAI.PART_TOOL_CALL:
            arguments = part.get("arguments")
            calls.append(ToolCall(scalar_text(part.get("name")), None if arguments is None else json_text(arguments),
                                  scalar_text(part.get("id"))))
        elif kind == GenAI.PART_TOOL_CALL_RESPONSE:
            texts.append(json_text(part.get("response", "")))
            answered = scalar_text(part.get("id"))
    return "".join(texts), tuple(calls), answered


def _json_messages(raw: Any) -> list[Message]:
    messages = parse_json(raw)
    if not isinstance(messages, list):
        return []
    read = []
    for message in messages:
        if isinstance(message, dict):
            text, calls, answered = _read_parts(message.get("parts", message.get("content")))
            read.append(Message(scalar_text(message.get("role")) or "unknown", text, calls, answered))
    return read


def _indexed_messages(attributes: Mapping[str, Any], prefix: str, infix: str,
                      keys: ToolCallKeys | None) -> list[Message]:
    # Ends at the first index with neither role nor content (every instrumentor sets the role), so
    # the attributes themselves bound the loop.
    messages: list[Message] = []
    index = 0
    while True:
        base = f"{prefix}.{index}{infix}"
        role, content = attributes.get(f"{base}.role"), attributes.get(f"{base}.content")
        if role is None and content is None:
            return messages
        text = attribute_text(content)
        if keys is None:
            messages.append(Message(attribute_text(role) or "unknown", text))
        else:
            messages.append(Message(attribute_text(role) or "unknown", text,
                                    _indexed_tool_calls(attributes, f"{base}.{Messages.TOOL_CALLS}", keys),
                                    scalar_text(attributes.get(f"{base}.{Messages.TOOL_CALL_ID}"))))
        index += 1


def _indexed_tool_calls(attributes: Mapping[str, Any], prefix: str, keys: ToolCallKeys) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    while True:
        base = f"{prefix}.{len(calls)}"
        name, arguments = attributes.get(f"{base}.{keys.name}"), attributes.get(f"{base}.{keys.arguments}")
        if name is None and arguments is None:
            return tuple(calls)
        call_id = attributes.get(f"{base}.{keys.id}")
        calls.append(ToolCall(scalar_text(name), scalar_text(arguments), scalar_text(call_id)))
