"""span attributes -> the OpenInference attributes Arthur Engine reads: pure, table-driven, additive.

Arthur Engine reads traces only in OpenInference form. ``span_kind`` names the OpenInference span
kind of any AI span of any supported convention (None for the rest: the ``engine_spans=ai``
filter); ``openinference_attributes`` returns the attributes to *add* to a GenAI-semconv or
OpenLLMetry span so that the Engine sees its kind, model, messages, tool calls, token counts,
cost (``llm.cost.total``, when ``otel_arthur.pricing`` knows the model's price), request parameters,
session, user and input/output. The span keeps every attribute it had (none is overwritten); a span
already in OpenInference form gets nothing (the Engine prices those itself). Attribute names come from
``openinference-semantic-conventions``.

Every text that can carry content (message contents, tool-call arguments, input and output
values) goes through the caller's hook first (``RecordFilter.text_hook``: the content switch,
redaction and size cap that records get); a hook returning None withholds that text. The hook
covers only what is added here: the span's own content attributes (``gen_ai.input.messages``, …)
are the sender's to withhold or redact. Values a span should not hold (malformed or over-deep
JSON, bytes, lone surrogates, wrong types) never raise: what can be read is translated, the rest
left out. At most ``MAX_MESSAGES`` messages a side (the newest inputs, the first outputs) and
``MAX_TOOL_CALLS`` calls a message are written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from openinference.semconv.trace import (
    MessageAttributes,
    OpenInferenceMimeTypeValues,
    OpenInferenceSpanKindValues,
    SpanAttributes,
    ToolCallAttributes,
)
from opentelemetry.util.types import AttributeValue

from otel_arthur.conventions import (
    GENAI,
    GenAI,
    LegacyOpenLLMetry,
    OpenInference,
    Traceloop,
)
from otel_arthur.mapping import classify
from otel_arthur.messages import (
    Message,
    clean_text,
    convention_messages,
    first,
    scalar_text,
)
from otel_arthur.pricing import cost_usd

__all__ = ["MAX_MESSAGES", "MAX_TOOL_CALLS", "TextHook", "openinference_attributes", "span_kind"]

TextHook = Callable[[str], str | None]
"""A content text -> the text to send, or None to withhold it."""

MAX_MESSAGES = 128
MAX_TOOL_CALLS = 32

_LLM = OpenInferenceSpanKindValues.LLM.value
_CHAIN = OpenInferenceSpanKindValues.CHAIN.value
_TOOL = OpenInferenceSpanKindValues.TOOL.value
_AGENT = OpenInferenceSpanKindValues.AGENT.value
_RETRIEVER = OpenInferenceSpanKindValues.RETRIEVER.value
_EMBEDDING = OpenInferenceSpanKindValues.EMBEDDING.value
_RERANKER = OpenInferenceSpanKindValues.RERANKER.value
_TEXT = OpenInferenceMimeTypeValues.TEXT.value
_JSON = OpenInferenceMimeTypeValues.JSON.value

# (attribute, its value -> OpenInference span kind), tried in order: the first row that knows the
# value decides. Generations first; OpenLLMetry's own span kind before the remaining GenAI
# operations, because OpenLLMetry names every LangChain workflow (a chain) invoke_agent.
SPAN_KIND_RULES: tuple[tuple[str, Mapping[str, str]], ...] = (
    (GenAI.OPERATION_NAME, dict.fromkeys(GenAI.GENERATION_OPERATIONS, _LLM)),
    (LegacyOpenLLMetry.REQUEST_TYPE, {**dict.fromkeys(LegacyOpenLLMetry.GENERATION_REQUEST_TYPES, _LLM),
                                      "embedding": _EMBEDDING, "rerank": _RERANKER}),
    (Traceloop.SPAN_KIND, {"workflow": _CHAIN, "task": _CHAIN, "agent": _AGENT, "tool": _TOOL}),
    (GenAI.OPERATION_NAME, {"execute_tool": _TOOL, "invoke_agent": _AGENT, "create_agent": _AGENT,
                            "invoke_workflow": _CHAIN, "execute_task": _CHAIN, "embeddings": _EMBEDDING,
                            "retrieval": _RETRIEVER, "vector_db_retrieve": _RETRIEVER}),
)

# GenAI request attribute -> its key in llm.invocation_parameters (OpenAI's names, as OpenInference writes them).
INVOCATION_PARAMETERS: tuple[tuple[str, str], ...] = (
    (GenAI.REQUEST_MODEL, "model"),
    (GenAI.REQUEST_TEMPERATURE, "temperature"),
    (GenAI.REQUEST_MAX_TOKENS, "max_tokens"),
    (GenAI.REQUEST_TOP_P, "top_p"),
    (GenAI.REQUEST_TOP_K, "top_k"),
    (GenAI.REQUEST_FREQUENCY_PENALTY, "frequency_penalty"),
    (GenAI.REQUEST_PRESENCE_PENALTY, "presence_penalty"),
    (GenAI.REQUEST_SEED, "seed"),
    (GenAI.REQUEST_STOP_SEQUENCES, "stop"),
)

# Where a span that is not read as a generation keeps its input / output, with the value's mime type.
INPUT_SOURCES: tuple[tuple[str, str], ...] = ((Traceloop.ENTITY_INPUT, _JSON), (GenAI.TOOL_CALL_ARGUMENTS, _JSON))
OUTPUT_SOURCES: tuple[tuple[str, str], ...] = ((Traceloop.ENTITY_OUTPUT, _JSON), (GenAI.TOOL_CALL_RESULT, _TEXT))

_USER_ROLES = frozenset({"user", "human"})


def span_kind(attributes: Mapping[str, Any]) -> str | None:
    """The OpenInference span kind of an AI span (LLM, CHAIN, TOOL, AGENT, …), None for any other span."""
    kind = attributes.get(OpenInference.SPAN_KIND)
    if isinstance(kind, str) and kind:
        return kind
    for attribute, kinds in SPAN_KIND_RULES:
        value = attributes.get(attribute)
        if isinstance(value, str) and value in kinds:
            return kinds[value]
    return None


def openinference_attributes(attributes: Mapping[str, Any], *, text: TextHook,
                             output_text: TextHook | None = None,
                             start_time_ns: int | None = None) -> dict[str, AttributeValue]:
    """The OpenInference attributes to add to a span; empty for a non-AI span or one already in OpenInference form.

    ``text`` is applied to every input text, ``output_text`` (default: ``text``) to every output
    text, so a switch that withholds only prompts can be honoured. ``start_time_ns``, the span's
    start, picks the prices its cost is computed at (default: now). No key of ``attributes`` is returned.
    """
    if OpenInference.SPAN_KIND in attributes:
        return {}
    kind = span_kind(attributes)
    if kind is None:
        return {}
    output_text = text if output_text is None else output_text
    added: dict[str, AttributeValue] = {SpanAttributes.OPENINFERENCE_SPAN_KIND: kind}
    convention = classify(attributes) if kind == _LLM else None
    if convention is not None:
        added.update(_generation(attributes, convention.scalars, start_time_ns))
        inputs, outputs = convention_messages(attributes, convention)
        inputs, outputs = inputs[-MAX_MESSAGES:], outputs[:MAX_MESSAGES]
        added.update(_messages(SpanAttributes.LLM_INPUT_MESSAGES, inputs, text))
        added.update(_messages(SpanAttributes.LLM_OUTPUT_MESSAGES, outputs, output_text))
        added.update(_value(SpanAttributes.INPUT_VALUE, SpanAttributes.INPUT_MIME_TYPE, _last_user_text(inputs), _TEXT,
                            text))
        added.update(_value(SpanAttributes.OUTPUT_VALUE, SpanAttributes.OUTPUT_MIME_TYPE,
                            outputs[0].text if outputs else None, _TEXT, output_text))
    if SpanAttributes.INPUT_VALUE not in added:
        added.update(_sourced_value(attributes, INPUT_SOURCES, SpanAttributes.INPUT_VALUE,
                                    SpanAttributes.INPUT_MIME_TYPE, text))
    if SpanAttributes.OUTPUT_VALUE not in added:
        added.update(_sourced_value(attributes, OUTPUT_SOURCES, SpanAttributes.OUTPUT_VALUE,
                                    SpanAttributes.OUTPUT_MIME_TYPE, output_text))
    scalars = (convention or GENAI).scalars
    for name, key in (("session_id", SpanAttributes.SESSION_ID), ("user_id", SpanAttributes.USER_ID)):
        value = _first_text(attributes, scalars[name])
        if value:
            added[key] = value
    return {key: value for key, value in added.items() if key not in attributes}


def _generation(attributes: Mapping[str, Any], scalars: Mapping[str, Sequence[str]],
                start_time_ns: int | None) -> dict[str, AttributeValue]:
    """Model, provider, token counts, cost and request parameters of a generation."""
    added: dict[str, AttributeValue] = {}
    for name, keys in (("model", (SpanAttributes.LLM_MODEL_NAME,)),
                       ("provider", (SpanAttributes.LLM_PROVIDER, SpanAttributes.LLM_SYSTEM))):
        value = _first_text(attributes, scalars[name])
        if value:
            added.update(dict.fromkeys(keys, value))
    prompt, completion, total = (_count(first(attributes, scalars[name]))
                                 for name in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion  # the GenAI semconv has no total
    for key, count in ((SpanAttributes.LLM_TOKEN_COUNT_PROMPT, prompt),
                       (SpanAttributes.LLM_TOKEN_COUNT_COMPLETION, completion),
                       (SpanAttributes.LLM_TOKEN_COUNT_TOTAL, total)):
        if count is not None:
            added[key] = count
    cost = cost_usd(added.get(SpanAttributes.LLM_MODEL_NAME), added.get(SpanAttributes.LLM_PROVIDER), prompt,
                    completion, start_time_ns)
    if cost is not None:
        added[SpanAttributes.LLM_COST_TOTAL] = cost
    get = attributes.get
    parameters = {name: value for key, name in INVOCATION_PARAMETERS  # most are not set: no call for those
                  if (raw := get(key)) is not None and (value := _json_scalar(raw)) is not None}
    if parameters:
        added[SpanAttributes.LLM_INVOCATION_PARAMETERS] = json.dumps(parameters, ensure_ascii=False)
    return added


def _messages(prefix: str, messages: Sequence[Message], text: TextHook) -> dict[str, AttributeValue]:
    """``{prefix}.{i}.message.role / .content / .tool_call_id / .tool_calls.{j}.tool_call.*`` of each message."""
    added: dict[str, AttributeValue] = {}
    for index, message in enumerate(messages):
        base = f"{prefix}.{index}."
        # Set only what has a value (an empty text is none), in the order role, content, tool call id.
        if role := clean_text(message.role):
            added[base + MessageAttributes.MESSAGE_ROLE] = role
        if content := _hooked(message.text, text):
            added[base + MessageAttributes.MESSAGE_CONTENT] = content
        if message.tool_call_id and (call_id := clean_text(message.tool_call_id)):
            added[base + MessageAttributes.MESSAGE_TOOL_CALL_ID] = call_id
        for number, call in enumerate(message.tool_calls[:MAX_TOOL_CALLS]):
            call_base = f"{base}{MessageAttributes.MESSAGE_TOOL_CALLS}.{number}."
            added.update(_present({
                call_base + ToolCallAttributes.TOOL_CALL_FUNCTION_NAME: call.name and clean_text(call.name),
                call_base + ToolCallAttributes.TOOL_CALL_FUNCTION_ARGUMENTS_JSON: _hooked(call.arguments, text),
                call_base + ToolCallAttributes.TOOL_CALL_ID: call.id and clean_text(call.id),
            }))
    return added


def _present(attributes: Mapping[str, str | None]) -> dict[str, str]:
    """The attributes that have a value (an empty text is none)."""
    return {key: value for key, value in attributes.items() if value}


def _value(key: str, mime_key: str, raw: str | None, mime: str, text: TextHook) -> dict[str, AttributeValue]:
    """``input.value`` / ``output.value`` and its mime type; text/plain once the hook changed a JSON text."""
    value = _hooked(raw, text)
    if value is None:
        return {}
    return {key: value, mime_key: mime if value == raw else _TEXT}


def _sourced_value(attributes: Mapping[str, Any], sources: Sequence[tuple[str, str]], key: str, mime_key: str,
                   text: TextHook) -> dict[str, AttributeValue]:
    for source, mime in sources:
        raw = _first_text(attributes, (source,))
        if raw:
            return _value(key, mime_key, raw, mime, text)
    return {}


def _first_text(attributes: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """The first of ``keys`` holding a non-empty string, number or boolean, as clean text."""
    for key in keys:
        value = scalar_text(attributes.get(key))
        if value:
            return clean_text(value)
    return None


def _hooked(raw: str | None, text: TextHook) -> str | None:
    """A content text through the privacy hook; None when empty or withheld."""
    if not raw:
        return None
    return text(clean_text(raw))


def _last_user_text(messages: Sequence[Message]) -> str | None:
    return next((m.text for m in reversed(messages) if m.role.lower() in _USER_ROLES and m.text), None)


def _count(value: Any) -> int | None:
    """A token count as an int; None for anything that is not a whole, non-negative number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def _json_scalar(value: Any) -> Any:
    """An attribute value as a JSON value (sequences as lists); None for what JSON cannot hold."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_json_scalar(item) if not isinstance(item, (list, tuple)) else None for item in value]
        return [item for item in items if item is not None] or None
    return None
