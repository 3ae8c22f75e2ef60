"""A local OpenAI-compatible chat completions server, deterministic so tests can assert exact values.

The reply and its token counts are a pure function of the request (:func:`complete`), so a test that
records spans from a real ``ChatOpenAI`` call can compute what the spans must say. Streaming and
non-streaming answers carry the same text and usage. A failed call is asked for in the prompt: a
last user message containing ``[error 429]`` (any of :data:`ERRORS`) gets that status and an
OpenAI-style error body, which is how the tests produce error spans without a flaky upstream.
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
    "complete",
    "create_app",
    "error_body",
    "error_status",
    "reply_tokens",
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
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
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


def complete(messages: Iterable[Mapping[str, Any]], max_tokens: int | None = None) -> Completion:
    """The reply to ``messages``: ``"Echo: <last user message>"``, cut to ``max_tokens`` words.

    ``prompt_tokens`` counts the words of every message's content; ``completion_tokens`` those of
    the (possibly cut) reply.
    """
    messages = list(messages)
    words = (REPLY_PREFIX + _last_user_text(messages)).split()
    finish_reason = "stop"
    if max_tokens is not None and len(words) > max_tokens:
        words, finish_reason = words[:max_tokens], "length"
    prompt_tokens = sum(len(message_text(m).split()) for m in messages)
    return Completion(" ".join(words), finish_reason, prompt_tokens, len(words))


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


def _max_tokens(body: Mapping[str, Any]) -> int | None:
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

    ids = itertools.count(1)  # deterministic ids within one server's life

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(error_body(status, message), status_code=status)

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.json()
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise ValueError("messages must be a list of objects")
            max_tokens = _max_tokens(body)
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            return error(400, f"invalid request: {exc}")
        status = error_status(messages)
        if status is not None:
            return error(status, f"error {status} requested by the prompt")
        result = complete(messages, max_tokens)
        head = {"id": f"chatcmpl-local{next(ids):06d}", "created": int(time.time()), "model": model}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(head, result, include_usage), media_type="text/event-stream")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.content},
            "finish_reason": result.finish_reason,
            "logprobs": None,
        }
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": result.usage()})

    async def models(request: Request) -> Response:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "otel-arthur"}
        return JSONResponse({"object": "list", "data": [entry]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


async def _stream(head: dict[str, Any], result: Completion, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's order: role, one delta per word, finish reason, [usage], [DONE]."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        payload: dict[str, Any] = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if include_usage:  # OpenAI sends usage: null on every chunk but the last when usage is asked for
            payload["usage"] = None
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for token in reply_tokens(result.content):
        yield chunk({"content": token})
    yield chunk({}, result.finish_reason)
    if include_usage:
        usage = {**head, "object": "chat.completion.chunk", "choices": [], "usage": result.usage()}
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"
