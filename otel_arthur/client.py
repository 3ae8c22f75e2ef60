"""A small native client for the part of Arthur's v3 API that delivery needs.

It speaks exactly what ``arthurai`` 3.33.3 speaks (tests/test_conformance.py proves it): the raw API
key in ``Authorization`` or a JWT from ``POST /login``'s ``Authorization`` cookie, renewed
5 minutes before its ``exp``; ``Arthur-Organization-ID`` from ``GET /users/me`` (or
``/users/me/auth_info`` on 403) unless configured; ``GET /models/{id}?id_type=…&expand=attributes``;
``POST /models/{id}/inferences`` answered by a strict 207. It costs one pooled ``requests.Session``
instead of the SDK's ~5 s and ~367 MB import.

Errors say what a caller should do next: ``SetupError`` (Arthur refuses the credentials,
organization or model: nothing can be delivered until the set-up is fixed), ``PermanentError``
(Arthur refuses these records; retrying the same request cannot help), ``RetryableError`` (try
again later), ``ThrottledError`` (no sooner than ``retry_after``). No secret ever appears in a message.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

from otel_arthur import __version__, forking
from otel_arthur.config import ArthurSettings, display_url

_logger = logging.getLogger(__name__)

API_PREFIX = "/api/v3"
ORGANIZATION_HEADER = "Arthur-Organization-ID"
JSON = "application/json"
USER_AGENT = f"otel-arthur/{__version__}"
REFRESH_BEFORE_EXPIRY = 300.0  # seconds; the SDK renews its JWT 5 minutes before exp
_RETRYABLE_STATUS = {HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS}
# Refusals of the caller, not of what it sent: bad credentials, a foreign organization, a missing model or path.
_SETUP_STATUS = {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND}


class ArthurError(Exception):
    """Base of the client's errors."""


class PermanentError(ArthurError):
    """Arthur refused the request and will refuse it again (a 4xx); ``SetupError`` when the set-up is at fault."""


class SetupError(PermanentError):
    """Arthur refuses the set-up, not the records: credentials, organization, URL or model.

    Every record would meet the same refusal, so delivery waits for the fix instead of discarding them.
    """


class AuthenticationError(SetupError):
    """401: the API key or login/password was refused."""


class ModelNotFoundError(SetupError):
    """404 for the configured model id (as Arthur id and as partner model id)."""


class RetryableError(ArthurError):
    """A connection error, a timeout, 408 or 5xx: the same request may succeed later.

    ``unanswered_for``: set when the request went out and no answer came (a read timeout, a
    connection broken after sending), the seconds it waited: Arthur may have stored it all the same.
    """

    def __init__(self, message: str, retry_after: float | None = None, *,
                 unanswered_for: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unanswered_for = unanswered_for


class ThrottledError(RetryableError):
    """429: retry no sooner than ``retry_after`` seconds (from ``Retry-After``) when given."""


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


NOT_SENT = 0  # a RecordResult status of ours: the request for this record got no answer (see its message)
DROPPED = -1  # another of ours: answered, not stored, and nothing to send again (the sender counted it dropped)


@dataclass(frozen=True)
class RecordResult:
    """One entry of the 207's ``results``, in request order."""

    status: int
    message: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """408, 429, 5xx or not sent: this record may be accepted if sent again."""
        return is_retryable_status(self.status)

    @property
    def dropped(self) -> bool:
        """Refused without a dead letter; the sender counted it as dropped (``DROPPED``)."""
        return self.status == DROPPED


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_STATUS or status == NOT_SENT


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verifying it, as the SDK does."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def parse_multistatus(response: requests.Response) -> list[RecordResult]:
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
    if not isinstance(results, list) or not all(isinstance(r, dict) and "status" in r for r in results):
        raise RetryableError("Arthur's 207 'results' is not a list of objects with 'status'")
    try:
        parsed = [_record_result(r["status"], r.get("message", "")) for r in results]
    except (TypeError, ValueError) as exc:
        raise RetryableError(f"Arthur's 207 has a result with an invalid status: {exc}") from None
    if sum(not r.ok for r in parsed) != counts["failure"]:
        raise RetryableError(
            f"Arthur's 207 failure count {counts['failure']} does not match its results"
        )
    return parsed


@functools.lru_cache(maxsize=1024)
def _record_result(status: Any, message: Any) -> RecordResult:
    """Shared objects for repeated answers: a 207 carries 500 results, nearly all the same."""
    return RecordResult(int(status), str(message))


# Fragments of requests' / urllib3's error texts -> a short reason; no URL query, header or secret is in them.
_NETWORK_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
    ("certificate verify failed", "certificate verify failed"),
    ("WRONG_VERSION_NUMBER", "the server does not speak TLS (is the URL really https?)"),
    ("Name or service not known", "host name not resolved"),
    ("nodename nor servname", "host name not resolved"),
    ("Temporary failure in name resolution", "host name not resolved"),
    ("getaddrinfo failed", "host name not resolved"),
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
)


def network_reason(error: BaseException) -> str:
    """Why a request got no answer, in a few words (``connection refused``); else the exception's type."""
    text = str(error)
    return next((reason for needle, reason in _NETWORK_REASONS if needle in text), type(error).__name__)


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def pooled_session(url: str, verify_ssl: bool, session: requests.Session | None = None) -> requests.Session:
    """A ``requests.Session`` for one service at ``url``, with the environment's proxies and CA bundle read once.

    What requests reads from the environment (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE…) is read
    once for the service's URL: per request, scanning os.environ cost ~0.45 ms of CPU. trust_env off
    also keeps a ~/.netrc from replacing our Authorization header.
    """
    import requests

    session = session or requests.Session()
    settings = session.merge_environment_settings(url, {}, None, verify_ssl, None)
    session.trust_env = False
    session.proxies = settings["proxies"]
    session.verify = settings["verify"]  # a CA bundle's path when the environment names one
    session.headers.update({"Accept": JSON, "User-Agent": USER_AGENT})
    return session


class Timeouts:
    """(connect, read) seconds for one request: the configured timeout (or a longer read for a big body),
    cut to what is left of a deadline (shutdown's), and none at all past it."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = float("inf")

    def __call__(self, method: str, path: str, read_timeout: float | None = None) -> tuple[float, float]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RetryableError(f"{method} {path}: not sent, the shutdown deadline has passed")
        read = self.timeout if read_timeout is None else read_timeout
        return min(self.timeout, remaining), min(read, remaining)


@contextmanager
def request_errors(method: str, path: str, url: str, connect: float, read: float) -> Iterator[None]:
    """``requests``' exceptions inside become ``RetryableError`` naming the request and why it got no answer.

    One that may have reached the service (sent, then no answer or a broken connection) carries
    ``unanswered_for``: its outcome is unknown.
    """
    import requests

    started = time.monotonic()
    try:
        yield
    except requests.ConnectTimeout:
        raise RetryableError(f"{method} {path}: timed out after {connect:g}s") from None
    except requests.Timeout:  # sent, and no answer in time: the service may still store it
        raise RetryableError(f"{method} {path}: timed out after {read:g}s",
                             unanswered_for=time.monotonic() - started) from None
    except requests.exceptions.SSLError as exc:
        raise RetryableError(f"{method} {path}: TLS with {display_url(url)} failed: {network_reason(exc)}") from None
    except requests.ConnectionError as exc:
        # No connection at all, or one broken after the request went out (outcome unknown).
        unanswered = None if _never_connected(exc) else time.monotonic() - started
        raise RetryableError(f"{method} {path}: cannot connect to {display_url(url)}: {network_reason(exc)}",
                             unanswered_for=unanswered) from None
    except requests.RequestException as exc:  # e.g. a body cut short: the request went out
        raise RetryableError(f"{method} {path}: {type(exc).__name__}",
                             unanswered_for=time.monotonic() - started) from None


class ArthurClient:
    """Thread-safe client over one pooled session. Authenticates lazily, on the first request."""

    def __init__(self, settings: ArthurSettings, session: requests.Session | None = None) -> None:
        self._settings = settings
        self._base = settings.url + API_PREFIX
        self._session_given = session
        self._session_made: requests.Session | None = None
        self._session_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._token: str | None = settings.api_key
        self._token_refresh_at = float("inf")  # an API key never expires
        self._organization_id = settings.organization_id
        self._timeouts = Timeouts(settings.timeout)  # no request outlives a deadline once set (shutdown's)
        forking.register(after_in_child=self._after_fork_in_child)

    def __repr__(self) -> str:
        auth = "api_key" if self._settings.has_api_key else f"login={self._settings.login!r}"
        return f"ArthurClient(url={display_url(self._settings.url)!r}, {auth})"

    # -- authentication -------------------------------------------------------------------

    def _login(self) -> None:
        response = self._request_raw(
            "POST", "/login", json={"login": self._settings.login, "password": self._settings.password}
        )
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            raise AuthenticationError(f"Arthur refused login {self._settings.login!r} (401)")
        self._raise_for_status(response, "login")
        token = response.cookies.get("Authorization")
        if not token:
            raise SetupError("Arthur's login response set no Authorization cookie")
        expiry = jwt_expiry(token)
        if expiry is None:
            raise SetupError("Arthur's login token has no readable 'exp' claim")
        self._token = token
        self._token_refresh_at = expiry - REFRESH_BEFORE_EXPIRY

    def _resolve_organization(self) -> str:
        response = self._request_raw("GET", "/users/me", headers={"Authorization": self._token})
        if response.status_code == HTTPStatus.FORBIDDEN:
            response = self._request_raw("GET", "/users/me/auth_info", headers={"Authorization": self._token})
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
        """Fresh locks and a session of the child's own at its next request; the token stays valid.

        The parent's pooled connections are the parent's: two processes writing to one socket garble
        both. The inherited session is dropped, not closed: its pool's lock may have been held at the fork.
        """
        self._session_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._session_made = None

    @property
    def _session(self) -> requests.Session:
        """Made at the first request, on the delivery thread: importing ``requests`` takes about 130 ms,
        which an application constructing the exporter at start-up should not wait for."""
        if self._session_made is None:
            with self._session_lock:
                if self._session_made is None:
                    self._session_made = pooled_session(self._base, self._settings.verify_ssl, self._session_given)
        return self._session_made

    def set_deadline(self, deadline: float) -> None:
        """From now on no request lasts past ``deadline`` (``time.monotonic()``), nor starts after it."""
        self._timeouts.deadline = deadline

    def _request_raw(self, method: str, path: str, *, read_timeout: float | None = None,
                     **kwargs: Any) -> requests.Response:
        connect, read = self._timeouts(method, path, read_timeout)
        with request_errors(method, path, self._settings.url, connect, read):
            return self._session.request(method, self._base + path, timeout=(connect, read), **kwargs)

    def _request(self, method: str, path: str, *, data: bytes | None = None, **kwargs: Any) -> requests.Response:
        """An authenticated request; a 401 on a JWT logs in once more (it can be revoked before exp)."""
        extra = {"Content-Type": JSON} if data is not None else {}
        response = self._request_raw(method, path, data=data, headers=self._auth_headers() | extra, **kwargs)
        if response.status_code == HTTPStatus.UNAUTHORIZED and not self._settings.has_api_key:
            self._forget_token()
            response = self._request_raw(method, path, data=data, headers=self._auth_headers() | extra, **kwargs)
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            raise AuthenticationError(f"Arthur refused the credentials for {method} {path} (401)")
        return response

    @staticmethod
    def _raise_for_status(response: requests.Response, what: str,
                          refusal: type[PermanentError] = SetupError) -> None:
        """Raise what a non-2xx answer means; ``refusal`` for a 4xx that is about the request itself."""
        status = response.status_code
        if status < 300:
            return
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

    def send_inferences(self, model_id: str, rows: list[dict[str, Any]], body: bytes | None = None,
                        read_timeout: float | None = None) -> list[RecordResult]:
        """POST nested rows; one ``RecordResult`` per row, in order. ``body`` may carry the rows pre-encoded;
        ``read_timeout`` replaces ``ARTHUR_TIMEOUT`` for the wait for the answer."""
        data = body if body is not None else encode_rows(rows)
        response = self._request("POST", f"/models/{model_id}/inferences", data=data, read_timeout=read_timeout)
        if response.status_code != HTTPStatus.MULTI_STATUS:
            self._raise_for_status(response, "sending inferences", refusal=PermanentError)
            raise RetryableError(f"sending inferences: Arthur answered {response.status_code}, expected 207")
        results = parse_multistatus(response)
        if len(results) != len(rows):
            raise RetryableError(f"Arthur's 207 has {len(results)} results for {len(rows)} rows")
        return results

    def close(self) -> None:
        if self._session_made is not None:
            self._session_made.close()


_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # json.dumps() builds one per call


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    return _encode_json(rows).encode("utf-8")


def encode_row(row: dict[str, Any]) -> bytes:
    """One row's JSON: ``b"[" + b",".join(encode_row(r) for r in rows) + b"]"`` is ``encode_rows(rows)``."""
    return _encode_json(row).encode("utf-8")


def _never_connected(error: BaseException) -> bool:
    """Whether a requests ``ConnectionError`` failed before any byte of the request went out."""
    from urllib3.exceptions import NewConnectionError  # refused, unreachable, name not resolved

    reason = error.args[0] if error.args else None
    return isinstance(getattr(reason, "reason", reason), NewConnectionError)


def _error_detail(response: requests.Response) -> str:
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
