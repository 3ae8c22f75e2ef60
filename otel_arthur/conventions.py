"""Attribute names that LLM instrumentors put on generation spans: data, no logic.

One class per convention, constants named after their values (OpenInference's own style), and a
``Convention`` table row per convention that says where each record field is found. The mapper
(``otel_arthur.mapping``) walks these rows; supporting another convention means adding a row.

Names come from the conventions' own packages where they define them: the GenAI semantic
conventions from ``opentelemetry-semantic-conventions`` (>= 0.60b0, the SDK's own dependency;
about 2.5 ms to import), OpenInference's from ``openinference-semantic-conventions``. What neither
defines (OpenLLMetry's ``traceloop.*`` and legacy names, message part types) is typed here and
says so. ``tests/test_conventions.py`` checks every name the packages define against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from openinference.semconv.trace import (
    MessageContentAttributes as OpenInferenceContent,
    OpenInferenceSpanKindValues,
    ToolCallAttributes,
)
from openinference.semconv.trace import SpanAttributes as OpenInferenceSpan
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv
from opentelemetry.semconv.attributes import error_attributes


class GenAI:
    """OpenTelemetry GenAI semantic conventions, as OpenLLMetry >= 0.55 emits them."""

    OPERATION_NAME = semconv.GEN_AI_OPERATION_NAME
    """chat / text_completion / generate_content for generations; invoke_agent, execute_task… otherwise."""
    INPUT_MESSAGES = semconv.GEN_AI_INPUT_MESSAGES
    """JSON: [{"role", "parts": [{"type": "text", "content"}]}]."""
    OUTPUT_MESSAGES = semconv.GEN_AI_OUTPUT_MESSAGES
    """JSON: [{"role", "parts": [...], "finish_reason"}]."""
    SYSTEM_INSTRUCTIONS = semconv.GEN_AI_SYSTEM_INSTRUCTIONS
    """JSON: [{"type": "text", "content"}], the system prompt kept apart from the messages."""
    REQUEST_MODEL = semconv.GEN_AI_REQUEST_MODEL
    RESPONSE_MODEL = semconv.GEN_AI_RESPONSE_MODEL
    REQUEST_TEMPERATURE = semconv.GEN_AI_REQUEST_TEMPERATURE
    REQUEST_MAX_TOKENS = semconv.GEN_AI_REQUEST_MAX_TOKENS
    REQUEST_TOP_P = semconv.GEN_AI_REQUEST_TOP_P
    REQUEST_TOP_K = semconv.GEN_AI_REQUEST_TOP_K
    REQUEST_FREQUENCY_PENALTY = semconv.GEN_AI_REQUEST_FREQUENCY_PENALTY
    REQUEST_PRESENCE_PENALTY = semconv.GEN_AI_REQUEST_PRESENCE_PENALTY
    REQUEST_SEED = semconv.GEN_AI_REQUEST_SEED
    REQUEST_STOP_SEQUENCES = semconv.GEN_AI_REQUEST_STOP_SEQUENCES
    PROVIDER_NAME = semconv.GEN_AI_PROVIDER_NAME
    SYSTEM = semconv.GEN_AI_SYSTEM
    """The provider, before gen_ai.provider.name replaced it."""
    USAGE_INPUT_TOKENS = semconv.GEN_AI_USAGE_INPUT_TOKENS
    USAGE_OUTPUT_TOKENS = semconv.GEN_AI_USAGE_OUTPUT_TOKENS
    USAGE_TOTAL_TOKENS = "gen_ai.usage.total_tokens"
    """Typed: not in the semconv; OpenLLMetry adds it."""
    RESPONSE_FINISH_REASONS = semconv.GEN_AI_RESPONSE_FINISH_REASONS
    """A sequence, one per choice."""
    CONVERSATION_ID = semconv.GEN_AI_CONVERSATION_ID
    TOOL_CALL_ARGUMENTS = semconv.GEN_AI_TOOL_CALL_ARGUMENTS
    """On an execute_tool span: the arguments the tool was called with (JSON)."""
    TOOL_CALL_RESULT = semconv.GEN_AI_TOOL_CALL_RESULT
    ERROR_TYPE = error_attributes.ERROR_TYPE
    GENERATION_OPERATIONS = frozenset(operation.value for operation in (
        semconv.GenAiOperationNameValues.CHAT, semconv.GenAiOperationNameValues.TEXT_COMPLETION,
        semconv.GenAiOperationNameValues.GENERATE_CONTENT))
    # Message part types: values inside the messages' JSON, which the package does not name. Typed.
    PART_TEXT = "text"
    PART_TOOL_CALL = "tool_call"
    """A message part {"type": "tool_call", "id", "name", "arguments"}; arguments a JSON value or text."""
    PART_TOOL_CALL_RESPONSE = "tool_call_response"
    """A tool-role message's part {"type": "tool_call_response", "id", "response"}."""


class Traceloop:
    """OpenLLMetry's own attributes, beside the GenAI ones.

    Typed: only OpenLLMetry's ``opentelemetry-semantic-conventions-ai`` names them, and it is no
    dependency of ours; each OpenLLMetry release pins its own range of it (< 0.6 today), so requiring
    it would tie the exporter to the instrumentor version an application runs.
    """

    SESSION_ID = "traceloop.association.properties.session_id"
    """Any LangChain metadata key lands under traceloop.association.properties.*."""
    USER_ID = "traceloop.association.properties.user_id"
    SPAN_KIND = "traceloop.span.kind"
    """workflow / task / agent / tool on the spans around generations."""
    ENTITY_INPUT = "traceloop.entity.input"
    """JSON of a workflow, task or tool run's inputs."""
    ENTITY_OUTPUT = "traceloop.entity.output"


class LegacyOpenLLMetry:
    """OpenLLMetry <= 0.54: flat, indexed prompt and completion attributes.

    Typed, except the two usage names the semconv had before input/output tokens: the prefixes are
    OpenLLMetry's (the semconv's deprecated ``gen_ai.prompt`` / ``gen_ai.completion`` were one
    attribute each, not a prefix), the rest OpenLLMetry's own.
    """

    REQUEST_TYPE = "llm.request.type"
    """chat / completion for generations."""
    PROMPT_PREFIX = "gen_ai.prompt"
    """gen_ai.prompt.{i}.role / .content, system at 0."""
    COMPLETION_PREFIX = "gen_ai.completion"
    """gen_ai.completion.{i}.role / .content / .finish_reason, and .tool_calls.{j}.id / .name / .arguments."""
    USAGE_TOTAL_TOKENS = "llm.usage.total_tokens"
    USAGE_PROMPT_TOKENS = semconv.GEN_AI_USAGE_PROMPT_TOKENS
    USAGE_COMPLETION_TOKENS = semconv.GEN_AI_USAGE_COMPLETION_TOKENS
    GENERATION_REQUEST_TYPES = frozenset({"chat", "completion"})


class OpenInference:
    """OpenInference (Arize) conventions."""

    SPAN_KIND = OpenInferenceSpan.OPENINFERENCE_SPAN_KIND
    """LLM for generations; CHAIN, TOOL, RETRIEVER… otherwise."""
    INPUT_MESSAGES_PREFIX = OpenInferenceSpan.LLM_INPUT_MESSAGES
    """llm.input_messages.{i}.message.role / .message.content / .message.tool_calls.{j}.tool_call.function.name…"""
    OUTPUT_MESSAGES_PREFIX = OpenInferenceSpan.LLM_OUTPUT_MESSAGES
    MESSAGE_INFIX = ".message"
    """Typed: the package names only the keys below a message whole (``MessageAttributes.MESSAGE_ROLE``
    is ``message.role``); the tests check that they agree."""
    MODEL_NAME = OpenInferenceSpan.LLM_MODEL_NAME
    PROVIDER = OpenInferenceSpan.LLM_PROVIDER
    SYSTEM = OpenInferenceSpan.LLM_SYSTEM
    """The AI product (openai, anthropic…): all OpenInference's provider-SDK instrumentors set, for llm.provider."""
    INVOCATION_PARAMETERS = OpenInferenceSpan.LLM_INVOCATION_PARAMETERS
    """JSON of the request parameters: model, temperature, …"""
    TOKEN_COUNT_PROMPT = OpenInferenceSpan.LLM_TOKEN_COUNT_PROMPT
    TOKEN_COUNT_COMPLETION = OpenInferenceSpan.LLM_TOKEN_COUNT_COMPLETION
    TOKEN_COUNT_TOTAL = OpenInferenceSpan.LLM_TOKEN_COUNT_TOTAL
    FINISH_REASON = OpenInferenceSpan.LLM_FINISH_REASON
    METADATA = OpenInferenceSpan.METADATA
    """JSON of the LangChain run metadata (session_id, user_id, …)."""
    SESSION_ID = OpenInferenceSpan.SESSION_ID
    USER_ID = OpenInferenceSpan.USER_ID
    GENERATION_KINDS = frozenset({OpenInferenceSpanKindValues.LLM.value})


class Messages:
    """How a convention lays out a list of chat messages."""

    JSON = "json"
    """One attribute holding a JSON list of {"role", "parts": [{"type", "content"}]}."""
    INDEXED = "indexed"
    """Flat attributes {prefix}.{i}{infix}.role / .content / .tool_call_id, i = 0, 1, …"""
    TOOL_CALLS = "tool_calls"
    """Indexed: a message's tool calls are {prefix}.{i}{infix}.tool_calls.{j}.<ToolCallKeys>."""
    TOOL_CALL_ID = "tool_call_id"
    """Indexed: the call a tool-role message answers."""


@dataclass(frozen=True)
class ToolCallKeys:
    """Where an indexed layout keeps one tool call's parts, below {message}.tool_calls.{j}."""

    name: str = "name"
    arguments: str = "arguments"
    id: str = "id"


class ContentPartKeys:
    """Where an indexed layout that keeps a message as parts (OpenInference's ``message.contents``)
    keeps one part, below {message}.contents.{k}."""

    TYPE = OpenInferenceContent.MESSAGE_CONTENT_TYPE
    """text / image / audio / video / document…"""
    TEXT = OpenInferenceContent.MESSAGE_CONTENT_TEXT
    TEXT_TYPE = "text"


@dataclass(frozen=True)
class Convention:
    """Where one convention keeps each piece of a generation. Keys are tried in order."""

    name: str
    marker: str
    """The attribute whose value says "this span is a generation"…"""
    generation_values: frozenset[str]
    """…when it is one of these."""
    message_layout: str
    input_messages: str
    output_messages: str
    message_infix: str = ""
    tool_call_keys: ToolCallKeys = ToolCallKeys()
    content_parts: str | None = None
    """Indexed: a message without content may keep it as parts, {message}.{content_parts}.{k}.<ContentPartKeys>."""
    json_content_blocks: bool = False
    """Indexed: content that is a list of content blocks is written as their JSON (``[{"type": …}, …]``)."""
    system_instructions: str | None = None
    model: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    prompt_tokens: tuple[str, ...] = ()
    completion_tokens: tuple[str, ...] = ()
    total_tokens: tuple[str, ...] = ()
    temperature: tuple[str, ...] = ()
    finish_reason: tuple[str, ...] = ()
    session_id: tuple[str, ...] = ()
    user_id: tuple[str, ...] = ()
    json_sources: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    """JSON attributes consulted for fields still missing: attribute -> {field: keys inside it}."""
    scalars: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scalars", {
            "model": self.model,
            "provider": self.provider,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "temperature": self.temperature,
            "finish_reason": self.finish_reason,
            "session_id": self.session_id,
            "user_id": self.user_id,
        })


GENAI = Convention(
    name="genai",
    marker=GenAI.OPERATION_NAME,
    generation_values=GenAI.GENERATION_OPERATIONS,
    message_layout=Messages.JSON,
    input_messages=GenAI.INPUT_MESSAGES,
    output_messages=GenAI.OUTPUT_MESSAGES,
    system_instructions=GenAI.SYSTEM_INSTRUCTIONS,
    model=(GenAI.RESPONSE_MODEL, GenAI.REQUEST_MODEL),
    provider=(GenAI.PROVIDER_NAME, GenAI.SYSTEM),
    prompt_tokens=(GenAI.USAGE_INPUT_TOKENS,),
    completion_tokens=(GenAI.USAGE_OUTPUT_TOKENS,),
    total_tokens=(GenAI.USAGE_TOTAL_TOKENS, LegacyOpenLLMetry.USAGE_TOTAL_TOKENS),
    temperature=(GenAI.REQUEST_TEMPERATURE,),
    finish_reason=(GenAI.RESPONSE_FINISH_REASONS,),
    session_id=(GenAI.CONVERSATION_ID, Traceloop.SESSION_ID),
    user_id=(Traceloop.USER_ID,),
)

LEGACY_OPENLLMETRY = Convention(
    name="openllmetry-legacy",
    marker=LegacyOpenLLMetry.REQUEST_TYPE,
    generation_values=LegacyOpenLLMetry.GENERATION_REQUEST_TYPES,
    message_layout=Messages.INDEXED,
    input_messages=LegacyOpenLLMetry.PROMPT_PREFIX,
    output_messages=LegacyOpenLLMetry.COMPLETION_PREFIX,
    json_content_blocks=True,
    model=(GenAI.RESPONSE_MODEL, GenAI.REQUEST_MODEL),
    provider=(GenAI.SYSTEM,),
    prompt_tokens=(LegacyOpenLLMetry.USAGE_PROMPT_TOKENS, GenAI.USAGE_INPUT_TOKENS),
    completion_tokens=(LegacyOpenLLMetry.USAGE_COMPLETION_TOKENS, GenAI.USAGE_OUTPUT_TOKENS),
    total_tokens=(LegacyOpenLLMetry.USAGE_TOTAL_TOKENS,),
    temperature=(GenAI.REQUEST_TEMPERATURE,),
    finish_reason=(f"{LegacyOpenLLMetry.COMPLETION_PREFIX}.0.finish_reason",),
    session_id=(Traceloop.SESSION_ID,),
    user_id=(Traceloop.USER_ID,),
)

OPENINFERENCE = Convention(
    name="openinference",
    marker=OpenInference.SPAN_KIND,
    generation_values=OpenInference.GENERATION_KINDS,
    message_layout=Messages.INDEXED,
    input_messages=OpenInference.INPUT_MESSAGES_PREFIX,
    output_messages=OpenInference.OUTPUT_MESSAGES_PREFIX,
    message_infix=OpenInference.MESSAGE_INFIX,
    tool_call_keys=ToolCallKeys(ToolCallAttributes.TOOL_CALL_FUNCTION_NAME,
                                ToolCallAttributes.TOOL_CALL_FUNCTION_ARGUMENTS_JSON, ToolCallAttributes.TOOL_CALL_ID),
    content_parts="contents",
    model=(OpenInference.MODEL_NAME,),
    provider=(OpenInference.PROVIDER, OpenInference.SYSTEM),
    prompt_tokens=(OpenInference.TOKEN_COUNT_PROMPT,),
    completion_tokens=(OpenInference.TOKEN_COUNT_COMPLETION,),
    total_tokens=(OpenInference.TOKEN_COUNT_TOTAL,),
    finish_reason=(OpenInference.FINISH_REASON,),
    session_id=(OpenInference.SESSION_ID,),
    user_id=(OpenInference.USER_ID,),
    json_sources={
        OpenInference.INVOCATION_PARAMETERS: {"model": ("model", "model_name"), "temperature": ("temperature",)},
        OpenInference.METADATA: {"session_id": ("session_id", "conversation_id", "thread_id"),
                                 "user_id": ("user_id",)},
    },
)

# Tried in this order; the first whose marker has a generation value claims the span. The GenAI
# row before the legacy one: a span carrying both layouts is read the current way.
CONVENTIONS: tuple[Convention, ...] = (OPENINFERENCE, GENAI, LEGACY_OPENLLMETRY)


@dataclass(frozen=True)
class ContentAttributes:
    """Attributes, of any convention, that carry what was said: what privacy settings act on beyond v3 records.

    A key is content when it equals a prefix or starts with it followed by ``.``; a ``.role`` key is not.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def side(self, key: str) -> str | None:
        """``"input"``, ``"output"`` or None for a key that carries no content."""
        if key.endswith(".role"):
            return None
        for side, prefixes in (("input", self.inputs), ("output", self.outputs)):
            for prefix in prefixes:
                if key.startswith(prefix) and (len(key) == len(prefix) or key[len(prefix)] == "."):
                    return side
        return None


CONTENT_ATTRIBUTES = ContentAttributes(
    inputs=(GenAI.INPUT_MESSAGES, GenAI.SYSTEM_INSTRUCTIONS, LegacyOpenLLMetry.PROMPT_PREFIX,
            GenAI.TOOL_CALL_ARGUMENTS, Traceloop.ENTITY_INPUT,
            OpenInferenceSpan.LLM_INPUT_MESSAGES, OpenInferenceSpan.LLM_PROMPTS, OpenInferenceSpan.INPUT_VALUE),
    outputs=(GenAI.OUTPUT_MESSAGES, LegacyOpenLLMetry.COMPLETION_PREFIX, GenAI.TOOL_CALL_RESULT,
             Traceloop.ENTITY_OUTPUT, OpenInferenceSpan.LLM_OUTPUT_MESSAGES, OpenInferenceSpan.OUTPUT_VALUE),
)
