"""Anthropic's Messages API (``POST /v1/messages``) on the local endpoint, deterministic like the OpenAI one.

A request is read as the OpenAI-shaped chat it stands for (:func:`openai_messages`: the ``system``
text first, ``tool_result`` blocks as tool messages) and answered by the same rules
(:func:`otel_arthur.local.openai.complete` and :func:`~otel_arthur.local.openai.call_tool`), so the
reply and usage of both APIs are the same function of what was said: ``usage.input_tokens`` counts the
words of the system text and of every message, ``output_tokens`` those of the reply (or of a tool
call's JSON input). ``stop_reason`` is ``end_turn``, ``max_tokens`` (``max_tokens``, which Anthropic
requires, cut the reply) or ``tool_use``. ``"stream": true`` answers with Anthropic's server-sent
events: ``message_start`` (input tokens, ``output_tokens`` 1, as Anthropic sends), one
``content_block_delta`` per word, ``message_delta`` with the stop reason and the final output tokens,
``message_stop``. ``[error NNN]`` in the last user message fails the call with Anthropic's error body.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from otel_arthur.local.openai import (
    Completion,
    ToolCallCompletion,
    call_tool,
    complete,
    error_status,
    reply_tokens,
    requested_max_tokens,
)

if TYPE_CHECKING:  # Starlette is the server extra
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

__all__ = ["DEFAULT_MODEL", "error_body", "messages_route", "openai_messages", "openai_tool_choice",
           "openai_tools", "stop_reason"]

DEFAULT_MODEL = "claude-local"
# status asked for with "[error NNN]" (the OpenAI endpoint's ERRORS) -> Anthropic's error type.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                500: "api_error", 503: "overloaded_error"}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _block_text(blocks: Any) -> str:
    """The text of a content that is a string or a list of blocks (text blocks joined by a space)."""
    if isinstance(blocks, str):
        return blocks
    if isinstance(blocks, list):
        return " ".join(b["text"] for b in blocks
                        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    raise ValueError("content must be a string or a list of content blocks")


def openai_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The OpenAI chat a Messages request stands for: ``system`` first, then each message, its
    ``tool_result`` blocks as ``tool`` messages; ValueError when the request is not Anthropic's shape."""
    messages = body["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("messages must be a list of objects")
    chat: list[dict[str, Any]] = []
    if body.get("system") is not None:
        chat.append({"role": "system", "content": _block_text(body["system"])})
    for message in messages:
        if message.get("role") not in ("user", "assistant"):
            raise ValueError("a message's role must be user or assistant")
        content = message.get("content")
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if isinstance(content, list) else []
        for result in results:
            chat.append({"role": "tool", "content": _block_text(result.get("content", "")),
                         "tool_call_id": result.get("tool_use_id")})
        text = _block_text(content)
        if text or not results:
            chat.append({"role": message["role"], "content": text})
    return chat


def openai_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Anthropic's ``[{"name", "input_schema"}]`` as OpenAI's function tools (None for none)."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError("tools must be a list of objects")
    return [{"type": "function", "function": {"name": t.get("name"), "parameters": t.get("input_schema", {})}}
            for t in tools]


def openai_tool_choice(tool_choice: Any) -> Any:
    """Anthropic's ``tool_choice`` as OpenAI's: ``none``, a named tool, or the default (auto / any)."""
    if not isinstance(tool_choice, dict):
        return None
    if tool_choice.get("type") == "none":
        return "none"
    if tool_choice.get("type") == "tool":
        return {"type": "function", "function": {"name": tool_choice.get("name")}}
    return None


def stop_reason(finish_reason: str) -> str:
    """Anthropic's ``stop_reason`` for the OpenAI endpoint's ``finish_reason``."""
    return _STOP_REASONS[finish_reason]


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape for ``status`` (one of the OpenAI endpoint's ``ERRORS``)."""
    return {"type": "error", "error": {"type": _ERROR_TYPES[status], "message": message}}


def _required_max_tokens(body: Mapping[str, Any]) -> int:
    value = requested_max_tokens(body)
    if value is None:
        raise ValueError("max_tokens is required")
    return value


def messages_route() -> Route:
    """``POST /v1/messages``, answering as :data:`DEFAULT_MODEL`; ids count up within the route's life."""
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    ids = itertools.count(1)
    tool_ids = itertools.count(1)

    async def messages(request: Request) -> Response:
        try:
            body = await request.json()
            chat = openai_messages(body)
            max_tokens = _required_max_tokens(body)
            tool_call = call_tool(chat, openai_tools(body.get("tools")), openai_tool_choice(body.get("tool_choice")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
            return JSONResponse(error_body(400, f"invalid request: {exc}"), status_code=400)
        status = error_status(chat)
        if status is not None:
            return JSONResponse(error_body(status, f"error {status} requested by the prompt"), status_code=status)
        message = _message(f"msg_local{next(ids):06d}", chat, max_tokens, tool_call, lambda: f"toolu_{next(tool_ids)}")
        if body.get("stream"):
            return StreamingResponse(_stream(message), media_type="text/event-stream")
        return JSONResponse(message)

    return Route("/v1/messages", messages, methods=["POST"])


def _message(message_id: str, chat: list[dict[str, Any]], max_tokens: int, tool_call: ToolCallCompletion | None,
             tool_id: Callable[[], str]) -> dict[str, Any]:
    """The whole response message, as the non-streaming answer carries it."""
    result: Completion | ToolCallCompletion
    if tool_call is None:
        result = complete(chat, max_tokens)
        content = [{"type": "text", "text": result.content}]
        reason = stop_reason(result.finish_reason)
    else:
        result = tool_call
        content = [{"type": "tool_use", "id": tool_id(), "name": tool_call.name,
                    "input": json.loads(tool_call.arguments)}]
        reason = "tool_use"
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": DEFAULT_MODEL, "content": content,
        "stop_reason": reason, "stop_sequence": None,
        "usage": {"input_tokens": result.prompt_tokens, "output_tokens": result.completion_tokens},
    }


async def _stream(message: dict[str, Any]) -> AsyncIterator[str]:
    """The message as Anthropic streams it: start, one block (its text or JSON input a word per
    delta), the stop reason with the final usage, stop."""

    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    usage = message["usage"]
    opening = {**message, "content": [], "stop_reason": None,
               "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}
    yield event("message_start", {"message": opening})
    [block] = message["content"]
    if block["type"] == "text":
        start, pieces = {"type": "text", "text": ""}, reply_tokens(block["text"])
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
    else:
        start, pieces = {**block, "input": {}}, reply_tokens(json.dumps(block["input"]))
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
    yield event("content_block_start", {"index": 0, "content_block": start})
    for delta in deltas:
        yield event("content_block_delta", {"index": 0, "delta": delta})
    yield event("content_block_stop", {"index": 0})
    yield event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                  "usage": {"output_tokens": usage["output_tokens"]}})
    yield event("message_stop", {})
