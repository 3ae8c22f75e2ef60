"""A local OpenAI-compatible chat completions server, deterministic so tests can assert exact values.

The reply and its token counts are a pure function of the request (:func:`complete`), so a test that
records spans from a real ``ChatOpenAI`` call can compute what the spans must say. Streaming and
non-streaming answers carry the same text and usage. A failed call is asked for in the prompt: a
last user message containing ``[error 429]`` (any of :data:`ERRORS`) gets that status and an
OpenAI-style error body, which is how the tests produce error spans without a flaky upstream.

Tool calls, for tests of tool-calling agents (:func:`call_tool`): a request with ``tools`` whose last
message is a user message gets one call to the first tool (or the one ``tool_choice`` names;
``"none"`` gets text), with every required string property set to the user's text, except that a
``city`` or ``location`` property gets the word after the last ``in`` ("weather in Paris?" ->
``{"city": "Paris"}``) and required properties of other types get their type's zero value (0, false,
[], {}, null). A last message from a tool gets ``"Echo: <its content>"``. Tool-call ids are
``call_1``, ``call_2``, … in one server's life; ``completion_tokens`` counts the words of the
arguments' JSON, which a stream sends one word per delta; ``max_tokens`` never cuts a tool call.

The same app answers Anthropic's ``POST /v1/messages`` by these rules (:mod:`otel_arthur.local.anthropic`).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # Starlette is the server extra; the pure functions and the CLI's --help work without it
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "DEFAULT_MODEL",
    "ERRORS",
    "Completion",
    "ToolCallCompletion",
    "call_tool",
    "complete",
    "create_app",
    "error_body",
    "error_status",
    "reply_tokens",
    "requested_max_tokens",
]

DEFAULT_MODEL = "gpt-4o-mini-local"
REPLY_PREFIX = "Echo: "

# status asked for with "[error NNN]" -> (OpenAI error type, code); the bodies mirror api.openai.com's.
ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "overloaded"),
}
_ERROR_MARKER = re.compile(r"\[error (\d{3})\]")
# Split before each word that follows whitespace: the pieces concatenate back to the exact text.
_TOKEN_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")
# Tool arguments: a property with one of these names gets the word after the last "in" of the user's text.
_PLACE_PROPERTIES = frozenset({"city", "location"})
_PLACE = re.compile(r"\bin\s+([^\W\d_]+)")
# JSON-schema type -> the value a required property of that type gets; strings are read from the text.
_ZERO_VALUES: dict[str, Any] = {"integer": 0, "number": 0, "boolean": False, "array": [], "object": {}, "null": None}


class Completion(NamedTuple):
    """What the server answers for one request; usage counts are whitespace-separated words."""

    content: str
    finish_reason: str  # "stop", or "length" when max_tokens cut the reply
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, int]:
        return _usage(self.prompt_tokens, self.completion_tokens)


class ToolCallCompletion(NamedTuple):
    """A reply that calls one tool; ``completion_tokens`` counts the words of ``arguments``."""

    name: str
    arguments: str  # a JSON object, as OpenAI sends it
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return _usage(self.prompt_tokens, self.completion_tokens)

    def wire(self, call_id: str) -> dict[str, Any]:
        """The call as an entry of a response message's ``tool_calls``."""
        return {"id": call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of ``{"type": "text"}`` parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_user_text(messages: Iterable[Mapping[str, Any]]) -> str:
    texts = [message_text(m) for m in messages if m.get("role") == "user"]
    return texts[-1] if texts else ""


def _prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    return sum(len(message_text(m).split()) for m in messages)


def complete(messages: Iterable[Mapping[str, Any]], max_tokens: int | None = None) -> Completion:
    """The reply to ``messages``: ``"Echo: <last user message>"``, or ``"Echo: <tool result>"`` when
    the last message is a tool's, cut to ``max_tokens`` words.

    ``prompt_tokens`` counts the words of every message's content; ``completion_tokens`` those of
    the (possibly cut) reply.
    """
    messages = list(messages)
    if messages and messages[-1].get("role") == "tool":
        echoed = message_text(messages[-1])
    else:
        echoed = _last_user_text(messages)
    words = (REPLY_PREFIX + echoed).split()
    finish_reason = "stop"
    if max_tokens is not None and len(words) > max_tokens:
        words, finish_reason = words[:max_tokens], "length"
    return Completion(" ".join(words), finish_reason, _prompt_tokens(messages), len(words))


def _functions(tools: Any) -> list[Mapping[str, Any]]:
    """The ``function`` objects of a request's ``tools``; ValueError when they are not OpenAI's shape."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("tools must be a non-empty list")
    functions = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError('each tool must be {"type": "function", "function": {"name": ...}}')
        if not isinstance(function.get("parameters", {}), dict):
            raise ValueError("a tool's parameters must be a JSON schema object")
        functions.append(function)
    return functions


def _chosen_function(functions: list[Mapping[str, Any]], tool_choice: Any) -> Mapping[str, Any] | None:
    """The tool ``tool_choice`` asks for: None for ``"none"``, the named one, else the first."""
    if tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        chosen = tool_choice.get("function")
        name = chosen.get("name") if isinstance(chosen, dict) else None
        for function in functions:
            if function["name"] == name:
                return function
        raise ValueError(f"tool_choice names no tool in tools: {name!r}")
    return functions[0]


def _tool_arguments(parameters: Mapping[str, Any], user_text: str) -> dict[str, Any]:
    """Arguments for a tool with JSON-schema ``parameters``, read from ``user_text`` (see the module doc)."""
    properties = parameters.get("properties") or {}
    required = parameters.get("required") or []
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise ValueError("a tool's properties must be an object and its required a list")
    places = _PLACE.findall(user_text)
    arguments: dict[str, Any] = {}
    for name in required:
        schema = properties.get(name)
        kind = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(kind, str) and kind in _ZERO_VALUES:
            arguments[name] = _ZERO_VALUES[kind]
        elif name in _PLACE_PROPERTIES and places:
            arguments[name] = places[-1]
        else:
            arguments[name] = user_text
    return arguments


def call_tool(
    messages: Iterable[Mapping[str, Any]], tools: Any, tool_choice: Any = None
) -> ToolCallCompletion | None:
    """The tool call that answers ``messages`` (see the module doc), or None when the reply is text:
    no ``tools``, ``tool_choice`` ``"none"``, or a last message that is not the user's.

    ValueError when ``tools`` or ``tool_choice`` is malformed, as OpenAI answers 400.
    """
    if tools is None:
        return None
    function = _chosen_function(_functions(tools), tool_choice)
    messages = list(messages)
    if function is None or not messages or messages[-1].get("role") != "user":
        return None
    user_text = message_text(messages[-1])
    arguments = json.dumps(_tool_arguments(function.get("parameters") or {}, user_text))
    return ToolCallCompletion(function["name"], arguments, _prompt_tokens(messages), len(arguments.split()))


def reply_tokens(content: str) -> list[str]:
    """The content deltas a stream sends for ``content``: one per word, spaces kept so they join back."""
    return [piece for piece in _TOKEN_BOUNDARY.split(content) if piece]


def error_status(messages: Iterable[Mapping[str, Any]]) -> int | None:
    """The HTTP status the last user message asks for with ``[error NNN]``, if it is one of :data:`ERRORS`."""
    match = _ERROR_MARKER.search(_last_user_text(messages))
    if match and int(match.group(1)) in ERRORS:
        return int(match.group(1))
    return None


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape for ``status`` (one of :data:`ERRORS`)."""
    error_type, code = ERRORS[status]
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def requested_max_tokens(body: Mapping[str, Any]) -> int | None:
    """The reply's word limit a request asks for; ValueError unless a positive integer."""
    # langchain-openai >= 0.3 sends max_completion_tokens; older clients send max_tokens.
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("max_tokens must be a positive integer")
    return value


def create_app(*, model: str = DEFAULT_MODEL) -> Starlette:
    """The server as a Starlette app. ``model`` is the name it answers as, whatever model a request names,
    like OpenAI answering ``gpt-4o-mini`` with a dated snapshot; so request and response model differ.
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from otel_arthur.local import anthropic  # it builds on this module's functions

    ids = itertools.count(1)  # deterministic ids within one server's life
    call_ids = itertools.count(1)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(error_body(status, message), status_code=status)

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.json()
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise ValueError("messages must be a list of objects")
            max_tokens = requested_max_tokens(body)
            tool_call = call_tool(messages, body.get("tools"), body.get("tool_choice"))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            return error(400, f"invalid request: {exc}")
        status = error_status(messages)
        if status is not None:
            return error(status, f"error {status} requested by the prompt")
        head = {"id": f"chatcmpl-local{next(ids):06d}", "created": int(time.time()), "model": model}
        if tool_call is None:
            result = complete(messages, max_tokens)
            message: dict[str, Any] = {"role": "assistant", "content": result.content}
            deltas = _text_deltas(result.content)
            finish_reason, usage = result.finish_reason, result.usage()
        else:
            call = tool_call.wire(f"call_{next(call_ids)}")
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            deltas = _tool_call_deltas(call)
            finish_reason, usage = "tool_calls", tool_call.usage()
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _stream(head, deltas, finish_reason, usage if include_usage else None)
            return StreamingResponse(events, media_type="text/event-stream")
        choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": usage})

    async def models(request: Request) -> Response:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "otel-arthur"}
        return JSONResponse({"object": "list", "data": [entry]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            anthropic.messages_route(),
        ]
    )


def _text_deltas(content: str) -> list[dict[str, Any]]:
    """A text reply's stream deltas: the role, then one per word."""
    return [{"role": "assistant", "content": ""}, *({"content": token} for token in reply_tokens(content))]


def _tool_call_deltas(call: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A tool call's stream deltas, as OpenAI splits them: role, id and name first, then the arguments
    one word per delta."""
    function = call["function"]
    opening = {"index": 0, **call, "function": {"name": function["name"], "arguments": ""}}
    pieces = reply_tokens(function["arguments"])
    return [
        {"role": "assistant", "content": None, "tool_calls": [opening]},
        *({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces),
    ]


async def _stream(
    head: dict[str, Any], deltas: list[dict[str, Any]], finish_reason: str, usage: dict[str, int] | None
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's order: the deltas, finish reason, usage (when asked for), [DONE]."""
    include_usage = usage is not None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        payload: dict[str, Any] = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if include_usage:  # OpenAI sends usage: null on every chunk but the last when usage is asked for
            payload["usage"] = None
        return f"data: {json.dumps(payload)}\n\n"

    for delta in deltas:
        yield chunk(delta)
    yield chunk({}, finish_reason)
    if include_usage:
        last = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        yield f"data: {json.dumps(last)}\n\n"
    yield "data: [DONE]\n\n"
