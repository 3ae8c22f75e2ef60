"""A small client for Arthur Engine's trace ingest (``../shared/reference/arthur-engine-api.md``).

``POST {url}/api/v1/traces`` with a binary OTLP ``ExportTraceServiceRequest``, never compressed
(the Engine reads the body whole with ``ParseFromString`` and has no ``Content-Encoding``
support), ``Authorization: Bearer <key>``. Answers, read from the Engine's source:

    200 success            every span stored
    206 partial_success    ``rejected_spans`` of them refused, with ``rejection_reasons`` (which
                           spans is not said), the rest stored
    422 failure            every span refused
    400                    ``Invalid protobuf message format``
    401 / 403              the key (or its role) is refused            -> SetupError
    404                    no such route: wrong URL, or an Engine too old -> SetupError
    408 / 429 / 5xx        try again (``Retry-After`` honoured); a 500 with a task id set is most
                           often an unknown ``arthur.task`` (a foreign key on the spans' task)

``GET {url}/api/v2/tasks/{id}`` checks a task exists (read-only; ``doctor`` and the start-up check).
The key is sent to the Engine's URL only; no secret ever appears in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from otel_arthur.clients.http import (
    PermanentError,
    Response,
    RetryableError,
    Service,
    SetupError,
    ThrottledError,
    is_retryable_status,
    parse_retry_after,
    refuse_redirect,
)
from otel_arthur.config import (
    ARTHUR_ENGINE_API_KEY,
    ARTHUR_ENGINE_URL,
    ARTHUR_TASK_ID,
    EngineSettings,
    display_url,
)

TRACES_PATH = "/api/v1/traces"
TASKS_PATH = "/api/v2/tasks"
PROTOBUF = "application/x-protobuf"
_MAX_REASONS = 5  # rejection reasons kept per answer: the Engine sends one per refused span


@dataclass(frozen=True)
class IngestResult:
    """What the Engine says of one request it answered 2xx: how many spans it refused, and why."""

    total: int
    rejected: int
    reasons: tuple[str, ...] = ()


class EngineForbidden(SetupError):
    """403: the key is valid, its role may not do this."""


class EngineTaskNotFound(SetupError):
    """The configured task id names no task in this Engine."""


class EngineClient:
    """Thread-safe; one ``Service`` (keep-alive connections, made on first use, on the delivery thread)."""

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._http = Service(settings.url, settings.verify_ssl, settings.timeout,
                             {"Authorization": f"Bearer {settings.api_key}"})

    def __repr__(self) -> str:
        return f"EngineClient(url={display_url(self._settings.url)!r}, task_id={self._settings.task_id!r})"

    def set_deadline(self, deadline: float) -> None:
        """From now on no request lasts past ``deadline`` (``time.monotonic()``), nor starts after it."""
        self._http.set_deadline(deadline)

    def send_traces(self, body: bytes, spans: int, read_timeout: float | None = None) -> IngestResult:
        """POST one serialized ``ExportTraceServiceRequest`` carrying ``spans`` spans."""
        response = self._http.request("POST", TRACES_PATH, body=body, headers={"Content-Type": PROTOBUF},
                                      read_timeout=read_timeout)
        status = response.status_code
        if status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            answer = _json(response)
            rejected = _count(answer.get("rejected_spans"), 0 if status == HTTPStatus.OK else spans)
            reasons = answer.get("rejection_reasons") if isinstance(answer.get("rejection_reasons"), list) else []
            return IngestResult(_count(answer.get("total_spans"), spans), min(rejected, spans),
                                tuple(str(r)[:300] for r in reasons[:_MAX_REASONS]))
        self._raise_for_status(response, "sending traces")
        raise RetryableError(f"sending traces: Arthur Engine answered {status}")  # 1xx/3xx: not an answer

    def task_answer(self, task_id: str) -> Response:
        """``GET /api/v2/tasks/{task_id}`` as the Engine answered it, whatever the status (``doctor`` reads it)."""
        return self._http.request("GET", f"{TASKS_PATH}/{task_id}")

    def get_task(self, task_id: str) -> dict[str, Any]:
        """The task, or ``EngineTaskNotFound``; ``SetupError`` when the key may not read it."""
        response = self.task_answer(task_id)
        if response.status_code == HTTPStatus.NOT_FOUND:
            raise EngineTaskNotFound(f"Arthur Engine has no task {task_id!r} ({ARTHUR_TASK_ID})")
        self._raise_for_status(response, f"reading task {task_id!r}")
        return _json(response)

    def _raise_for_status(self, response: Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        refuse_redirect(response, what, "Arthur Engine")
        detail = _detail(response)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            raise ThrottledError(f"{what}: Arthur Engine is throttling (429){detail}", retry_after)
        if is_retryable_status(status):
            hint = (f" (with {ARTHUR_TASK_ID} set, an unknown task id is the usual cause of a 500)"
                    if status == HTTPStatus.INTERNAL_SERVER_ERROR and self._settings.task_id else "")
            raise RetryableError(f"{what}: Arthur Engine answered {status}{detail}{hint}", retry_after)
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            raise (EngineForbidden if status == HTTPStatus.FORBIDDEN else SetupError)(f"{what}: Arthur Engine refused the API key ({ARTHUR_ENGINE_API_KEY}): {status}{detail}")
        if status == HTTPStatus.NOT_FOUND:
            raise SetupError(f"{what}: Arthur Engine answered 404 for {response.path_url}: check"
                             f" {ARTHUR_ENGINE_URL}, or the Engine is too old for {TRACES_PATH}")
        raise PermanentError(f"{what}: Arthur Engine answered {status}{detail}")

    def close(self) -> None:
        self._http.close()


def _json(response: Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _count(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _detail(response: Response) -> str:
    body = _json(response)
    message = body.get("detail") or body.get("message") or body.get("rejection_reasons")
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message[:_MAX_REASONS])
    return f": {str(message)[:300]}" if message else ""
