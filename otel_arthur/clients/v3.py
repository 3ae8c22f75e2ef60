"""A small native client for the part of Arthur's v3 API that delivery needs.

It speaks exactly what ``arthurai`` 3.33.3 speaks (tests/test_conformance.py proves it): the raw API
key in ``Authorization`` or a JWT from ``POST /login``'s ``Authorization`` cookie, renewed
5 minutes before its ``exp``; ``Arthur-Organization-ID`` from ``GET /users/me`` (or
``/users/me/auth_info`` on 403) unless configured; ``GET /models/{id}?id_type=…&expand=attributes``;
``POST /models/{id}/inferences`` answered by a strict 207. It costs one ``clients.http.Service``
(a urllib3 pool) instead of the SDK's ~5 s and ~367 MB import. Its errors are ``clients.http``'s.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import operator
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from otel_arthur import forking
from otel_arthur.clients.http import (
    JSON,
    PermanentError,
    RecordResult,
    Response,
    RetryableError,
    Service,
    SetupError,
    ThrottledError,
    is_retryable_status,
    is_uuid,
    parse_retry_after,
    refuse_redirect,
)
from otel_arthur.config import ArthurSettings, display_url

_logger = logging.getLogger(__name__)

API_PREFIX = "/api/v3"
ORGANIZATION_HEADER = "Arthur-Organization-ID"
REFRESH_BEFORE_EXPIRY = 300.0  # seconds; the SDK renews its JWT 5 minutes before exp

# Refusals of the caller, not of what it sent: bad credentials, a foreign organization, a missing model or path.
_SETUP_STATUS = {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND}


class AuthenticationError(SetupError):
    """401: the API key or login/password was refused."""


class ModelNotFoundError(SetupError):
    """404 for the configured model id (as Arthur id and as partner model id)."""


@dataclass(frozen=True)
class ModelAttribute:
    name: str
    value_type: str
    stage: str


@dataclass(frozen=True)
class ArthurModel:
    """The fields of an Arthur model that binding records to it needs."""

    id: str
    partner_model_id: str
    attributes: tuple[ModelAttribute, ...]


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verifying it, as the SDK does."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def parse_multistatus(response: Response) -> list[RecordResult]:
    """The SDK's strictness on a 207 body: counts keys exact, a status per result, failures agree."""
    try:
        body = response.json()
    except ValueError as exc:
        raise RetryableError("Arthur's 207 body is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("counts"), dict):
        raise RetryableError("Arthur's 207 body has no 'counts' object")
    counts = body["counts"]
    if set(counts) != {"success", "failure", "total"}:
        raise RetryableError(f"Arthur's 207 counts keys {sorted(counts)} are invalid")
    results = body.get("results")
    if not isinstance(results, list):
        raise RetryableError(_NOT_RESULTS)
    try:  # the usual answer in one pass (~0.3 µs a result); anything odd is named by the checks after
        parsed = [_record_result(r["status"], r.get("message", "")) for r in results]
    except (KeyError, TypeError, ValueError, AttributeError):
        parsed = _checked_results(results)
    if len(parsed) - sum(map(_IS_OK, parsed)) != counts["failure"]:
        raise RetryableError(
            f"Arthur's 207 failure count {counts['failure']} does not match its results"
        )
    return parsed


_NOT_RESULTS = "Arthur's 207 'results' is not a list of objects with 'status'"
_IS_OK = operator.attrgetter("ok")


def _checked_results(results: list[Any]) -> list[RecordResult]:
    """``results`` read with every check, raising what is wrong with them."""
    if not all(isinstance(r, dict) and "status" in r for r in results):
        raise RetryableError(_NOT_RESULTS)
    try:
        return [_record_result(r["status"], r.get("message", "")) for r in results]
    except (TypeError, ValueError) as exc:
        raise RetryableError(f"Arthur's 207 has a result with an invalid status: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _record_result(status: Any, message: Any) -> RecordResult:
    """Shared objects for repeated answers: a 207 carries 500 results, nearly all the same."""
    return RecordResult(int(status), str(message))


class ArthurClient:
    """Thread-safe client over one ``Service``. Authenticates lazily, on the first request."""

    def __init__(self, settings: ArthurSettings) -> None:
        self._settings = settings
        self._http = Service(settings.url, settings.verify_ssl, settings.timeout, {}, prefix=API_PREFIX)
        self._auth_lock = threading.Lock()
        self._token: str | None = settings.api_key
        self._token_refresh_at = float("inf")  # an API key never expires
        self._organization_id = settings.organization_id
        forking.register(after_in_child=self._after_fork_in_child)

    def __repr__(self) -> str:
        auth = "api_key" if self._settings.has_api_key else f"login={self._settings.login!r}"
        return f"ArthurClient(url={display_url(self._settings.url)!r}, {auth})"

    # -- authentication -------------------------------------------------------------------

    def _login(self) -> None:
        credentials = {"login": self._settings.login, "password": self._settings.password}
        response = self._http.request("POST", "/login", body=orjson.dumps(credentials),
                                      headers={"Content-Type": JSON})
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            raise AuthenticationError(f"Arthur refused login {self._settings.login!r} (401)")
        self._raise_for_status(response, "login")
        token = response.cookie("Authorization")
        if not token:
            raise SetupError("Arthur's login response set no Authorization cookie")
        expiry = jwt_expiry(token)
        if expiry is None:
            raise SetupError("Arthur's login token has no readable 'exp' claim")
        self._token = token
        self._token_refresh_at = expiry - REFRESH_BEFORE_EXPIRY

    def _resolve_organization(self) -> str:
        response = self._http.request("GET", "/users/me", headers={"Authorization": self._token})
        if response.status_code == HTTPStatus.FORBIDDEN:
            response = self._http.request("GET", "/users/me/auth_info", headers={"Authorization": self._token})
            self._raise_for_status(response, "organization lookup")
            organizations = response.json().get("organization_ids") or []
            if len(organizations) != 1:
                raise SetupError(
                    f"these credentials reach {len(organizations)} organizations: set ARTHUR_ORGANIZATION_ID"
                )
            return str(organizations[0])
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            raise AuthenticationError("Arthur refused the API key (401)")
        self._raise_for_status(response, "organization lookup")
        organization = response.json().get("organization_id")
        if not organization:
            raise SetupError("Arthur's /users/me names no organization: set ARTHUR_ORGANIZATION_ID")
        return str(organization)

    def _auth_headers(self) -> dict[str, str]:
        with self._auth_lock:
            if self._token is None or time.time() >= self._token_refresh_at:
                self._login()
            if self._organization_id is None:
                self._organization_id = self._resolve_organization()
            assert self._token is not None
            return {"Authorization": self._token, ORGANIZATION_HEADER: self._organization_id}

    def _forget_token(self) -> None:
        if not self._settings.has_api_key:
            with self._auth_lock:
                self._token = None

    # -- transport ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """A fresh lock (the token stays valid); the ``Service`` renews its own connections."""
        self._auth_lock = threading.Lock()

    def set_deadline(self, deadline: float) -> None:
        """From now on no request lasts past ``deadline`` (``time.monotonic()``), nor starts after it."""
        self._http.set_deadline(deadline)

    def _request(self, method: str, path: str, *, body: bytes | None = None, **kwargs: Any) -> Response:
        """An authenticated request; a 401 on a JWT logs in once more (it can be revoked before exp)."""
        extra = {"Content-Type": JSON} if body is not None else {}
        response = self._http.request(method, path, body=body, headers=self._auth_headers() | extra, **kwargs)
        if response.status_code == HTTPStatus.UNAUTHORIZED and not self._settings.has_api_key:
            self._forget_token()
            response = self._http.request(method, path, body=body, headers=self._auth_headers() | extra, **kwargs)
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            raise AuthenticationError(f"Arthur refused the credentials for {method} {path} (401)")
        return response

    @staticmethod
    def _raise_for_status(response: Response, what: str,
                          refusal: type[PermanentError] = SetupError) -> None:
        """Raise what a non-2xx answer means; ``refusal`` for a 4xx that is about the request itself."""
        status = response.status_code
        if status < 300:
            return
        refuse_redirect(response, what, "Arthur")
        detail = _error_detail(response)
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            raise ThrottledError(f"{what}: Arthur is throttling (429){detail}",
                                 parse_retry_after(response.headers.get("Retry-After")))
        if is_retryable_status(status):
            raise RetryableError(f"{what}: Arthur answered {status}{detail}",
                                 parse_retry_after(response.headers.get("Retry-After")))
        raise (SetupError if status in _SETUP_STATUS else refusal)(f"{what}: Arthur answered {status}{detail}")

    # -- API ------------------------------------------------------------------------------

    @property
    def organization_id(self) -> str:
        self._auth_headers()
        assert self._organization_id is not None
        return self._organization_id

    def get_model(self, model_id: str) -> ArthurModel:
        """Fetch by Arthur id or partner model id, trying the likelier kind first."""
        id_types = ("id", "partner_model_id") if is_uuid(model_id) else ("partner_model_id", "id")
        for id_type in id_types:
            response = self._request(
                "GET", f"/models/{model_id}", params={"id_type": id_type, "expand": "attributes"}
            )
            if response.status_code == HTTPStatus.NOT_FOUND:
                continue
            self._raise_for_status(response, f"fetching model {model_id!r}")
            return parse_model(response.json())
        raise ModelNotFoundError(f"Arthur has no model {model_id!r} (as id or partner_model_id)")

    def send_inferences(self, model_id: str, rows: Sequence[Any], body: bytes | None = None,
                        read_timeout: float | None = None) -> list[RecordResult]:
        """POST nested rows; one ``RecordResult`` per row, in order. ``body`` may carry the rows already encoded
        (``rows`` are then their JSON, only counted); ``read_timeout`` replaces ``ARTHUR_TIMEOUT`` for the wait."""
        data = body if body is not None else encode_rows(list(rows))
        count = len(rows)
        response = self._request("POST", f"/models/{model_id}/inferences", body=data, read_timeout=read_timeout)
        if response.status_code != HTTPStatus.MULTI_STATUS:
            self._raise_for_status(response, "sending inferences", refusal=PermanentError)
            raise RetryableError(f"sending inferences: Arthur answered {response.status_code}, expected 207")
        results = parse_multistatus(response)
        if len(results) != count:
            raise RetryableError(f"Arthur's 207 has {len(results)} results for {count} rows")
        return results

    def close(self) -> None:
        self._http.close()


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(rows)


def encode_row(row: dict[str, Any]) -> bytes:
    """One row's JSON: ``b"[" + b",".join(encode_row(r) for r in rows) + b"]"`` is ``encode_rows(rows)``."""
    return orjson.dumps(row)


def _error_detail(response: Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("error")
        if message:
            return f": {str(message)[:200]}"
    return ""


def parse_model(body: dict[str, Any]) -> ArthurModel:
    try:
        attributes = tuple(
            ModelAttribute(a["name"], a["value_type"], a["stage"]) for a in body.get("attributes") or ()
        )
        return ArthurModel(id=body["id"], partner_model_id=body["partner_model_id"], attributes=attributes)
    except (KeyError, TypeError) as exc:
        raise SetupError(f"Arthur's model body lacks {exc}") from None
