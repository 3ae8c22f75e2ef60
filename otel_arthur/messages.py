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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from otel_arthur.conventions import ContentPartKeys, Convention, GenAI, Messages, ToolCallKeys


class ToolCall(NamedTuple):
    """One call a model asked for; ``arguments`` is JSON text as the model wrote it."""

    name: str | None
    arguments: str | None
    id: str | None


class Message(NamedTuple):
    role: str
    text: str
    """Its text parts, joined, and on a tool-role message the tool's result."""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    """On a tool-role message: the call it answers."""
    other_parts: tuple[str, ...] = ()
    """What each part that is neither text nor a tool call holds ("image", "audio", "file"…), in order."""


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
INT64_LIMIT = 2**63  # Arthur's INTEGER; a longer int is no count, and past 4300 digits json cannot even write it


def field_value(value: Any) -> Scalar | None:
    """An attribute value as one JSON-safe scalar, or None when it holds none.

    Text loses lone surrogates, bytes are decoded (invalid UTF-8 replaced), a sequence gives its first
    item (``finish_reasons`` has one per choice); mappings, NaN, infinities and integers beyond 64 bits
    are no value.
    """
    if type(value) is str:  # nearly every value: one test instead of three
        return value if value.isascii() else clean_text(value)
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -INT64_LIMIT <= value < INT64_LIMIT else None
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
    """The JSON value of a text attribute; None for any other value, malformed JSON or nesting too deep to parse.

    ``orjson`` reads the messages of every generation at a third of the standard library's cost; what
    it refuses (lone surrogates, NaN, integers past 64 bits, nesting past 1024) the standard library
    reads as it always did, so every value reads the same either way.
    """
    if not isinstance(raw, str):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
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
    text = _single_text(parts)
    return _read_parts(parts).text if text is None else text


def convention_messages(attributes: Mapping[str, Any],
                        convention: Convention) -> tuple[list[Message], list[Message]]:
    """(input messages, output messages) of a generation, the system instructions first among the inputs."""
    if convention.message_layout == Messages.JSON:
        inputs = _json_messages(attributes.get(convention.input_messages))
        outputs = _json_messages(attributes.get(convention.output_messages))
    else:
        inputs = _indexed_messages(attributes, convention.input_messages, convention)
        outputs = _indexed_messages(attributes, convention.output_messages, convention)
    if convention.system_instructions:
        system = parts_text(parse_json(attributes.get(convention.system_instructions)))
        if system:
            inputs.insert(0, Message("system", system))
    return inputs, outputs


class _Parts(NamedTuple):
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    answered: str | None = None
    other_parts: tuple[str, ...] = ()


# A content block's type -> what it holds, where the type does not say it plainly (OpenAI's and
# LangChain's block names as the legacy layout records them).
_BLOCK_KINDS = {"image_url": "image", "input_image": "image", "input_audio": "audio", "input_file": "file"}


def _part_kind(kind: Any, modality: Any = None) -> str:
    """What a non-text part holds: its modality (GenAI ``uri``/``blob``/``file`` parts), else its type."""
    for name in (modality, kind):
        if isinstance(name, str) and name:
            return _BLOCK_KINDS.get(name, name)
    return "part"


def _read_parts(parts: Any) -> _Parts:
    """Text, tool calls, answered call id and other parts of a GenAI parts list, in one pass."""
    if isinstance(parts, str):
        return _Parts(parts)
    if not isinstance(parts, list):
        return _Parts("")
    if len(parts) == 1:  # nearly every message: one text part, read without the general loop's lists
        part = parts[0]
        if isinstance(part, dict) and part.get("type", GenAI.PART_TEXT) == GenAI.PART_TEXT:
            return _Parts(json_text(part.get("content", "")))
    texts: list[str] = []
    calls: list[ToolCall] = []
    others: list[str] = []
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
        else:
            others.append(_part_kind(kind, part.get("modality")))
    return _Parts("".join(texts), tuple(calls), answered, tuple(others))


def _json_messages(raw: Any) -> list[Message]:
    messages = parse_json(raw)
    if not isinstance(messages, list):
        return []
    read = []
    for message in messages:
        if isinstance(message, dict):
            role, parts = _role_and_parts(message)
            text = _single_text(parts)  # nearly every message: read in place, without the general reader's objects
            read.append(Message(role, text) if text is not None else _general_message(role, parts))
    return read


def json_message_texts(messages: Any) -> list[tuple[str, str]]:
    """(role, ``message_text``) of each message of a parsed JSON messages list, as ``convention_messages``
    reads them, without building a ``Message`` for a message that is one text part."""
    if not isinstance(messages, list):
        return []
    read = []
    for message in messages:
        if isinstance(message, dict):
            role, parts = _role_and_parts(message)
            text = _single_text(parts)
            read.append((role, text if text is not None else message_text(_general_message(role, parts))))
    return read


def _role_and_parts(message: dict[str, Any]) -> tuple[str, Any]:
    role = message.get("role")
    if type(role) is not str or not role:
        role = scalar_text(role) or "unknown"
    return role, message["parts"] if "parts" in message else message.get("content")


def _general_message(role: str, parts: Any) -> Message:
    read = _read_parts(parts)
    return Message(role, read.text, read.tool_calls, read.answered, read.other_parts)


def _single_text(parts: Any) -> str | None:
    """The text of a parts list that is one text part holding text; None for any other."""
    if type(parts) is list and len(parts) == 1 and type(part := parts[0]) is dict \
            and part.get("type", GenAI.PART_TEXT) == GenAI.PART_TEXT and type(text := part.get("content", "")) is str:
        return text
    return None


def message_text(message: Message) -> str:
    """What a record shows of a message: its text, ``[image]``-like placeholders for its other parts,
    then one ``name(arguments)`` line per tool call."""
    if not message.other_parts and not message.tool_calls:
        return message.text
    text = " ".join(piece for piece in (message.text, *(f"[{kind}]" for kind in message.other_parts)) if piece)
    calls = [f"{call.name or '?'}({_arguments_text(call.arguments)})" for call in message.tool_calls]
    return "\n".join([text, *calls] if text else calls)


def _arguments_text(arguments: str | None) -> str:
    """Arguments as one line of JSON in one form whatever the instrumentor wrote (``{"city": "Paris"}``,
    keys in the model's order); text that is not JSON as it is."""
    if arguments is None:
        return ""
    value = parse_json(arguments)
    if value is None:  # not JSON (or JSON null): show what the model wrote
        return arguments
    try:
        return json.dumps(value, ensure_ascii=False)
    except ValueError:  # an integer too long to write again
        return arguments


class _MessageKeys(NamedTuple):
    """The keys of one indexed message, written once per layout and index."""

    base: str
    role: str
    content: str
    tool_call_id: str
    tool_calls: str
    first_call_name: str
    first_call_arguments: str


_MAX_KEYED_MESSAGES = 256  # messages an index table holds; the rest of a longer history is keyed on the spot
_message_keys: dict[tuple[str, str, ToolCallKeys], list[_MessageKeys]] = {}


def _keys_of(prefix: str, infix: str, calls: ToolCallKeys, index: int) -> _MessageKeys:
    base = f"{prefix}.{index}{infix}"
    tool_calls = f"{base}.{Messages.TOOL_CALLS}"
    return _MessageKeys(base, f"{base}.role", f"{base}.content", f"{base}.{Messages.TOOL_CALL_ID}", tool_calls,
                        f"{tool_calls}.0.{calls.name}", f"{tool_calls}.0.{calls.arguments}")


def _indexed_messages(attributes: Mapping[str, Any], prefix: str, convention: Convention) -> list[Message]:
    get = attributes.get
    return [Message(role, text, tool_calls, scalar_text(get(keys.tool_call_id)), others)
            for keys, role, text, others, tool_calls in _indexed_items(attributes, prefix, convention)]


def indexed_message_texts(attributes: Mapping[str, Any], prefix: str, convention: Convention,
                          limit: int | None = None) -> list[tuple[str, str]]:
    """(role, ``message_text``) of the first ``limit`` (default: every) messages of an indexed layout,
    as ``convention_messages`` reads them."""
    texts: list[tuple[str, str]] = []
    for _, role, text, others, tool_calls in _indexed_items(attributes, prefix, convention):
        texts.append((role, message_text(Message(role, text, tool_calls, None, others))
                      if others or tool_calls else text))
        if len(texts) == limit:
            break
    return texts


def _indexed_items(attributes: Mapping[str, Any], prefix: str,
                   convention: Convention) -> Iterator[tuple[_MessageKeys, str, str, tuple[str, ...], tuple[ToolCall, ...]]]:
    """(keys, role, text, other parts, tool calls) of each message of an indexed layout, in order."""
    # Ends at the first index with neither role nor content (every instrumentor sets the role), so
    # the attributes themselves bound the loop.
    calls = convention.tool_call_keys
    table = _message_keys.setdefault((prefix, convention.message_infix, calls), [])
    get = attributes.get
    index = 0
    while True:
        if index < len(table):
            keys = table[index]
        else:
            keys = _keys_of(prefix, convention.message_infix, calls, index)
            if index < _MAX_KEYED_MESSAGES:
                table.append(keys)
        role, content = get(keys.role), get(keys.content)
        if role is None and content is None:
            return
        others: tuple[str, ...] = ()
        if content is None and convention.content_parts:
            text, others = _indexed_content_parts(attributes, f"{keys.base}.{convention.content_parts}")
        elif convention.json_content_blocks and isinstance(content, str) and content.startswith("[{"):
            text, others = _content_blocks(content)
        else:
            text = attribute_text(content)
        tool_calls: tuple[ToolCall, ...] = ()
        if get(keys.first_call_name) is not None or get(keys.first_call_arguments) is not None:
            tool_calls = _indexed_tool_calls(attributes, keys.tool_calls, calls)
        yield keys, attribute_text(role) or "unknown", text, others, tool_calls
        index += 1


def _indexed_content_parts(attributes: Mapping[str, Any], prefix: str) -> tuple[str, tuple[str, ...]]:
    """(text, other parts) of a message kept as parts, {prefix}.{k}.<ContentPartKeys>, k = 0, 1, …"""
    texts: list[str] = []
    others: list[str] = []
    index = 0
    while True:
        base = f"{prefix}.{index}."
        kind, text = attributes.get(base + ContentPartKeys.TYPE), attributes.get(base + ContentPartKeys.TEXT)
        if kind is None and text is None:
            return "".join(texts), tuple(others)
        if kind is None or kind == ContentPartKeys.TEXT_TYPE:
            texts.append(attribute_text(text))
        else:
            others.append(_part_kind(scalar_text(kind)))
        index += 1


def _content_blocks(content: str) -> tuple[str, tuple[str, ...]]:
    """(text, other parts) of content the instrumentor wrote as JSON of OpenAI/LangChain content blocks
    (``[{"type": "text", "text": …}, {"type": "image_url", …}]``); any other text is itself."""
    blocks = parse_json(content)
    if not isinstance(blocks, list) or not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks):
        return content, ()
    texts = [json_text(b.get("text", "")) for b in blocks if b["type"] == GenAI.PART_TEXT]
    return "".join(texts), tuple(_part_kind(b["type"]) for b in blocks if b["type"] != GenAI.PART_TEXT)


def _indexed_tool_calls(attributes: Mapping[str, Any], prefix: str, keys: ToolCallKeys) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    while True:
        base = f"{prefix}.{len(calls)}"
        name, arguments = attributes.get(f"{base}.{keys.name}"), attributes.get(f"{base}.{keys.arguments}")
        if name is None and arguments is None:
            return tuple(calls)
        call_id = attributes.get(f"{base}.{keys.id}")
        calls.append(ToolCall(scalar_text(name), scalar_text(arguments), scalar_text(call_id)))
