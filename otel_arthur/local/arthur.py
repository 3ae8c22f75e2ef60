"""A local server speaking Arthur's v3 inference API, as the ``arthurai`` 3.33.3 SDK uses it.

It answers exactly what the SDK sends and reads (``/work/shared/reference/arthur-v3-api.md``), so the
real SDK, LangChain's ``ArthurCallbackHandler`` and otel-arthur's own client can be driven against it
offline. Everything it accepts lands in SQLite, where tests and the demo read it back.

Endpoints::

    GET  /api/v3/users/me                      the caller; the SDK reads ``organization_id``
    GET  /api/v3/users/me/auth_info            the SDK's fallback when users/me answers 403
    POST /api/v3/login                         {"login","password"} -> Set-Cookie: Authorization=<JWT>
    POST /api/v3/models                        create a model (201); it is Ready at once
    GET  /api/v3/models/{model_id}             ?id_type=id|partner_model_id&expand=attributes
    POST /api/v3/models/{model_id}/inferences  207 multi-status, one result per row, in request order
    GET  /_local/models/{model_id}/inferences  local only, no auth: stored rows in arrival order
    GET  /_local/stats                         local only, no auth: inference, duplicate and request counts
    GET  /_local/faults                        local only, no auth: faults in force and how many were injected
    POST /_local/faults                        local only, no auth: replace the faults (``arthur_faults``)

One home per concern: ``_Auth`` here (credentials and tokens), ``arthur_schema`` (what a model body
and an inference row must look like, pure functions), ``arthur_store`` (SQLite), ``arthur_faults``
(429s, 5xx, dropped connections, latency and per-record refusals on demand); the handlers only
glue them together. ``RestartableLocalArthur`` stops and starts a server on the same port and
file. The server never imports ``arthurai``: it is the oracle's counterpart, not its user.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import repeat
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from otel_arthur.local import arthur_faults
from otel_arthur.local.arthur_faults import FaultInjector, Faults, InjectFaults
from otel_arthur.local.arthur_schema import (
    InferenceChecker,
    InferenceRecord,
    InferenceRejected,
    check_model,
)
from otel_arthur.local.arthur_store import LocalArthurStore, ModelExists
from otel_arthur.local.stand_in import (
    CountRequests,
    http_error_handler,
    local_stats,
    same,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_API_KEY",
    "DEFAULT_LOGIN",
    "DEFAULT_ORGANIZATION_ID",
    "DEFAULT_PASSWORD",
    "Faults",
    "LocalArthurStore",
    "RestartableLocalArthur",
    "RunningLocalArthur",
    "create_app",
    "running",
]

API_PREFIX = "/api/v3"
LOCAL_PREFIX = "/_local"

# Built-in credentials of the local server. Not secrets: they only open this offline stand-in.
DEFAULT_API_KEY = "local-arthur-api-key"
DEFAULT_LOGIN = "admin"
DEFAULT_PASSWORD = "local-arthur-password"
DEFAULT_ORGANIZATION_ID = "00000000-0000-4000-8000-00000000a47b"
_USER_ID = "00000000-0000-4000-8000-0000000005e1"

TOKEN_TTL = 3600  # seconds; the SDK logs in again 5 minutes before a token's exp


# --- auth -----------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_JWT_HEADER = _b64url(b'{"alg":"HS256","typ":"JWT"}')


class _Auth:
    """Who may call: the API key, or an unexpired HS256 JWT this server minted at ``/login``.

    Both travel raw in ``Authorization`` (no ``Bearer``), which is how the SDK sends them. The signing
    key lives only in memory, so restarting the server logs every session out, as a real deployment
    rotating keys would.
    """

    def __init__(self, api_key: str, login: str, password: str, organization_id: str) -> None:
        self.api_key = api_key
        self.login = login
        self.password = password
        self.organization_id = organization_id
        self._key = secrets.token_bytes(32)

    def password_ok(self, login: str, password: str) -> bool:
        # both compared, always: how long a refusal takes says nothing about which one was wrong
        return same(login, self.login) & same(password, self.password)

    def mint(self, subject: str, ttl: int = TOKEN_TTL) -> str:
        now = int(time.time())
        claims = {"sub": subject, "organization_id": self.organization_id, "iat": now, "exp": now + ttl}
        signing_input = f"{_JWT_HEADER}.{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{signing_input}.{self._sign(signing_input)}"

    def _sign(self, signing_input: str) -> str:
        return _b64url(hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest())

    def _token_problem(self, token: str) -> str | None:
        parts = token.split(".")
        if len(parts) != 3 or not same(self._sign(f"{parts[0]}.{parts[1]}"), parts[2]):
            return "invalid API key or token"
        try:
            exp = json.loads(_b64url_decode(parts[1])).get("exp")
        except (ValueError, AttributeError):
            return "invalid token"
        if not isinstance(exp, (int, float)) or exp <= time.time():
            return "token expired, log in again"
        return None

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise ``HTTPException`` (401 bad credentials, 403 foreign organization) unless allowed."""
        credential = headers.get("authorization")
        if not credential:
            raise HTTPException(401, "missing Authorization header")
        if credential[:7].lower() == "bearer ":
            raise HTTPException(401, "send the API key or session token raw in Authorization, without 'Bearer '")
        if not same(credential, self.api_key):
            problem = self._token_problem(credential)
            if problem is not None:
                raise HTTPException(401, problem)
        # The SDK sends the organization on every call after the first users/me lookup.
        organization_id = headers.get("arthur-organization-id")
        if organization_id is not None and organization_id != self.organization_id:
            raise HTTPException(403, f"caller is not a member of organization {organization_id!r}")


# --- HTTP -----------------------------------------------------------------------------------------

_Handler = Callable[[Request], Awaitable[Response]]


def _store(request: Request) -> LocalArthurStore:
    return request.app.state.store


def _requires_auth(handler: _Handler) -> _Handler:
    @functools.wraps(handler)
    async def checked(request: Request) -> Response:
        request.app.state.auth.check(request.headers)
        return await handler(request)

    return checked


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise HTTPException(400, f"malformed JSON body: {exc}") from exc


def _model_or_404(request: Request, id_type: str = "id") -> dict[str, Any]:
    identifier = request.path_params["model_id"]
    model = _store(request).get_model(identifier, id_type)
    if model is None:
        raise HTTPException(404, f"model {identifier!r} not found (id_type={id_type})")
    return model


def _user(auth: _Auth) -> dict[str, Any]:
    return {
        "id": _USER_ID,
        "organization_id": auth.organization_id,
        "username": auth.login,
        "email": f"{auth.login}@local-arthur.invalid",
        "first_name": "Local",
        "last_name": "Arthur",
        "roles": ["Administrator"],
    }


@_requires_auth
async def _get_users_me(request: Request) -> Response:
    return JSONResponse(_user(request.app.state.auth))


@_requires_auth
async def _get_auth_info(request: Request) -> Response:
    auth: _Auth = request.app.state.auth
    user = _user(auth)
    return JSONResponse(
        {
            "issuer": "local-arthur",
            "username": user["username"],
            "first_name": user["first_name"],
            "last_name": user["last_name"],
            "email": user["email"],
            "roles": user["roles"],
            "organization_ids": [auth.organization_id],
            "internal_user_id": user["id"],
        }
    )


async def _post_login(request: Request) -> Response:
    """The session token travels in the ``Authorization`` cookie: the SDK reads it there, not in the body."""
    body = await _json_body(request)
    login, password = (body.get("login"), body.get("password")) if isinstance(body, dict) else (None, None)
    if not isinstance(login, str) or not isinstance(password, str):
        raise HTTPException(400, 'body must be {"login": "...", "password": "..."}')
    auth: _Auth = request.app.state.auth
    if not auth.password_ok(login, password):
        raise HTTPException(401, "invalid login or password")
    response = JSONResponse(_user(auth))
    response.set_cookie(
        "Authorization",
        auth.mint(login),
        max_age=TOKEN_TTL,
        httponly=True,
        secure=request.url.scheme == "https",
    )
    return response


def _provision(body: dict[str, Any]) -> dict[str, Any]:
    """The stored model: the client's fields plus the server's ids, positions and a Ready status.

    Arthur provisions asynchronously and the SDK polls every 5 s until Ready; being Ready at once lets
    its first poll succeed.
    """
    now = datetime.now(timezone.utc).isoformat()
    next_position: dict[str, int] = {}
    attributes = []
    for attribute in body["attributes"]:
        stage = attribute["stage"]
        position = attribute.get("position")
        if position is None:
            position = next_position.get(stage, 0)
        next_position[stage] = max(next_position.get(stage, 0), position + 1)
        attributes.append({**attribute, "id": str(uuid.uuid4()), "position": position})
    return {
        **body,
        "id": str(uuid.uuid4()),
        "display_name": body.get("display_name") or body["partner_model_id"],
        "archived": False,
        "created_at": now,
        "updated_at": now,
        "status": "Ready",
        "attributes": attributes,
    }


@_requires_auth
async def _post_models(request: Request) -> Response:
    body = await _json_body(request)
    problem = check_model(body)
    if problem is not None:
        raise HTTPException(400, problem)
    model = _provision(body)
    try:
        _store(request).add_model(model)
    except ModelExists:
        raise HTTPException(409, f"a model with partner_model_id {body['partner_model_id']!r} already exists") from None
    return JSONResponse(model, status_code=201)


@_requires_auth
async def _get_model(request: Request) -> Response:
    id_type = request.query_params.get("id_type", "id")
    if id_type not in ("id", "partner_model_id"):
        raise HTTPException(400, "id_type must be 'id' or 'partner_model_id'")
    model = _model_or_404(request, id_type)
    if "attributes" not in request.query_params.get("expand", "").split(","):
        del model["attributes"]
    return JSONResponse(model)


_SUCCESS = {"status": 200, "message": "success"}  # shared by every good row's result, never changed


@_requires_auth
async def _post_inferences(request: Request) -> Response:
    """Check each row on its own; answer 207 with one result per row, in order, and store the good ones."""
    model = _model_or_404(request)
    rows = await _json_body(request)
    if not isinstance(rows, list):
        raise HTTPException(400, "body must be a JSON array of inferences")
    results: list[dict[str, Any]] = []
    accepted: list[InferenceRecord] = []
    check = InferenceChecker(model["attributes"])
    faults: FaultInjector = request.app.state.faults
    for row, fault in zip(rows, faults.record_faults(len(rows)) or repeat(None)):
        if fault is not None:
            results.append({"status": fault, "message": f"fault injected: record {fault}"})
            continue
        try:
            accepted.append(check(row))
        except InferenceRejected as exc:
            results.append({"status": 400, "message": str(exc)})
        else:
            results.append(_SUCCESS)
    _store(request).add_inferences(model["id"], accepted)
    failure = len(rows) - len(accepted)
    counts = {"success": len(accepted), "failure": failure, "total": len(rows)}
    return JSONResponse({"counts": counts, "results": results}, status_code=207)


async def _get_local_inferences(request: Request) -> Response:
    model = _model_or_404(request)
    return JSONResponse(_store(request).inferences(model["id"]))


def create_app(
    db_path: str | os.PathLike[str],
    *,
    api_key: str = DEFAULT_API_KEY,
    login: str = DEFAULT_LOGIN,
    password: str = DEFAULT_PASSWORD,
    organization_id: str = DEFAULT_ORGANIZATION_ID,
    faults: Faults | None = None,
) -> Starlette:
    """The local Arthur app over the SQLite database at ``db_path`` (``":memory:"`` works too).

    The store is ``app.state.store``, the fault injector ``app.state.faults``; whoever created the
    app closes the store when done with it.
    """
    store = LocalArthurStore(db_path)
    injector = FaultInjector(faults)
    routes = [
        Route(f"{API_PREFIX}/users/me", _get_users_me, methods=["GET"]),
        Route(f"{API_PREFIX}/users/me/auth_info", _get_auth_info, methods=["GET"]),
        Route(f"{API_PREFIX}/login", _post_login, methods=["POST"]),
        Route(f"{API_PREFIX}/models", _post_models, methods=["POST"]),
        Route(f"{API_PREFIX}/models/{{model_id}}", _get_model, methods=["GET"]),
        Route(f"{API_PREFIX}/models/{{model_id}}/inferences", _post_inferences, methods=["POST"]),
        Route(f"{LOCAL_PREFIX}/models/{{model_id}}/inferences", _get_local_inferences, methods=["GET"]),
        Route(f"{LOCAL_PREFIX}/stats", local_stats, methods=["GET"]),
        *arthur_faults.routes(LOCAL_PREFIX),
    ]
    app = Starlette(
        routes=routes,
        # Counting outermost: injected faults show in the request counts (a dropped connection as 502).
        middleware=[Middleware(CountRequests, store=store, local_prefix=LOCAL_PREFIX),
                    Middleware(InjectFaults, injector=injector, prefix=API_PREFIX)],
        exception_handlers={HTTPException: http_error_handler("message")},
    )
    app.state.store = store
    app.state.faults = injector
    app.state.auth = _Auth(api_key, login, password, organization_id)
    return app


@dataclass(frozen=True)
class RunningLocalArthur:
    """A local Arthur being served: where it is, the credentials it accepts, and its store."""

    url: str
    api_key: str
    login: str
    password: str
    organization_id: str
    store: LocalArthurStore
    faults: FaultInjector

    def inferences(self, model_id: str) -> list[dict[str, Any]]:
        return self.store.inferences(model_id)

    def stats(self) -> dict[str, Any]:
        return self.store.stats()


@contextmanager
def running(
    db_path: str | os.PathLike[str] = ":memory:",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
    api_key: str = DEFAULT_API_KEY,
    login: str = DEFAULT_LOGIN,
    password: str = DEFAULT_PASSWORD,
    organization_id: str = DEFAULT_ORGANIZATION_ID,
    faults: Faults | None = None,
) -> Iterator[RunningLocalArthur]:
    """Serve a local Arthur on a background thread (a free port by default); always stopped on exit.

    HTTPS when ``certfile``/``keyfile`` are given: ``ArthurCallbackHandler.from_credentials`` cannot
    reach an ``http://`` URL.
    """
    from otel_arthur.local.runner import (
        BackgroundServer,  # uvicorn: only when actually serving
    )

    app = create_app(db_path, api_key=api_key, login=login, password=password, organization_id=organization_id,
                     faults=faults)
    store: LocalArthurStore = app.state.store
    try:
        with BackgroundServer(app, host, port, ssl_certfile=certfile, ssl_keyfile=keyfile) as server:
            yield RunningLocalArthur(server.url, api_key, login, password, organization_id, store, app.state.faults)
    finally:
        store.close()


class RestartableLocalArthur:
    """A local Arthur that can be stopped and started again on the same port and SQLite file, as a
    restarted server process would be: stored inferences survive, sessions and run-time faults do not.

    ``start()`` picks a free port the first time and keeps it; ``running`` options pass through.
    """

    def __init__(self, db_path: str | os.PathLike[str], **options: Any) -> None:
        if os.fspath(db_path) == ":memory:":
            raise ValueError("a restartable local Arthur needs a database file to outlive its restarts")
        self.db_path = db_path
        self._options = options
        self._port = int(options.pop("port", 0))
        self._url: str | None = None
        self._stack: ExitStack | None = None
        self.current: RunningLocalArthur | None = None

    @property
    def url(self) -> str:
        """The same across restarts, and while stopped."""
        if self._url is None:
            raise RuntimeError("not started yet: the port is chosen at the first start")
        return self._url

    def start(self) -> RunningLocalArthur:
        if self.current is not None:
            raise RuntimeError(f"already running on {self.current.url}")
        stack = ExitStack()
        self.current = stack.enter_context(running(self.db_path, port=self._port, **self._options))
        self._stack = stack
        self._url = self.current.url
        self._port = urlsplit(self._url).port or self._port
        return self.current

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self.current = None

    def restart(self) -> RunningLocalArthur:
        self.stop()
        return self.start()

    def stats(self) -> dict[str, Any]:
        """The store's counts, whether the server is up or not."""
        if self.current is not None:
            return self.current.stats()
        store = LocalArthurStore(self.db_path)
        try:
            return store.stats()
        finally:
            store.close()

    def __enter__(self) -> RestartableLocalArthur:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
