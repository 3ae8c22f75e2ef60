"""What the local stand-ins (``local-arthur``, ``local-engine``) share besides their faults (``arthur_faults``):
a constant-time credential comparison, the per-route request counts behind ``GET /_local/stats``, the
error handler and the command's server flags."""

from __future__ import annotations

import argparse
import hmac
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_arthur.local.arthur_faults import FAULT_SCOPE_KEY

REQUESTS_TABLE = """
CREATE TABLE IF NOT EXISTS requests (
    method TEXT NOT NULL,
    path TEXT NOT NULL,                       -- the route template, e.g. /api/v3/models/{model_id}
    status INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (method, path, status)
);
"""


def same(a: str, b: str) -> bool:
    """Constant-time equality that also copes with non-ASCII header values."""
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def count_request(db: sqlite3.Connection, method: str, path: str, status: int) -> None:
    """Count one answer in ``REQUESTS_TABLE``, in its own transaction; the caller holds the store's lock."""
    with db:
        db.execute(
            "INSERT INTO requests (method, path, status, count) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (method, path, status) DO UPDATE SET count = count + 1",
            (method, path, status),
        )


def request_counts(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """``{"POST /api/v1/traces": {"200": 2, "401": 1}}``; the caller holds the store's lock."""
    by_path: dict[str, dict[str, int]] = {}
    for method, path, status, count in db.execute("SELECT method, path, status, count FROM requests"):
        by_path.setdefault(f"{method} {path}", {})[str(status)] = count
    return by_path


class RequestStore(Protocol):
    def count_request(self, method: str, path: str, status: int) -> None: ...


class CountRequests:
    """ASGI middleware counting API requests (never ``local_prefix`` ones) by method, route template and status."""

    def __init__(self, app: ASGIApp, store: RequestStore, local_prefix: str) -> None:
        self.app = app
        self.store = store
        self.local_prefix = local_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            # The router records the matched route in this same scope dict.
            path = getattr(scope.get("route"), "path", None) or (
                "<fault injected>" if FAULT_SCOPE_KEY in scope else "<unmatched>")
            if not path.startswith(self.local_prefix):
                self.store.count_request(scope["method"], path, status)

        async def send_and_count(message: Message) -> None:
            # Counted before the client can see the answer, so a client reading the counts next sees it.
            if message["type"] == "http.response.start" and not counted:
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            if not counted:  # no response started
                count(500)


async def local_stats(request: Request) -> Response:
    """``GET /_local/stats``: the counts of the app's ``app.state.store``."""
    return JSONResponse(request.app.state.store.stats())


def http_error_handler(error_key: str) -> Callable[[Request, Exception], Awaitable[Response]]:
    """Answers an ``HTTPException`` as the API does: its message under ``error_key``."""

    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({error_key: exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return answer


def add_server_arguments(parser: argparse.ArgumentParser, *, epilog: str, host: str, port: int, db: str,
                         holding: str) -> None:
    """A stand-in command's ``--host``, ``--port`` and ``--db`` (a SQLite file ``holding`` what it stores)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = epilog
    parser.add_argument("--host", default=host, help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=port, help="port to bind (default: %(default)s)")
    parser.add_argument("--db", default=db, help=f"SQLite file holding {holding}, or :memory: (default: %(default)s)")
