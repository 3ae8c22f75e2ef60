"""What the HTTP clients share: the errors that say what a caller should do next, one record's
result, a pooled session, per-request timeouts bounded by a deadline, and how a request that got no
answer is said.

Errors: ``SetupError`` (the service refuses the credentials, organization, model or task: nothing
can be delivered until the set-up is fixed), ``PermanentError`` (it refuses these records; retrying
the same request cannot help), ``RetryableError`` (try again later; ``unanswered_for`` when the
request went out and its outcome is unknown), ``ThrottledError`` (no sooner than ``retry_after``).
No secret ever appears in a message.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

from otel_arthur import __version__
from otel_arthur.config import display_url

JSON = "application/json"
USER_AGENT = f"otel-arthur/{__version__}"
_RETRYABLE_STATUS = {HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS}


class ArthurError(Exception):
    """Base of the clients' errors."""


class PermanentError(ArthurError):
    """Arthur refused the request and will refuse it again (a 4xx); ``SetupError`` when the set-up is at fault."""


class SetupError(PermanentError):
    """Arthur refuses the set-up, not the records: credentials, organization, URL or model.

    Every record would meet the same refusal, so delivery waits for the fix instead of discarding them.
    """


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


NOT_SENT = 0  # a RecordResult status of ours: the request for this record got no answer (see its message)
DROPPED = -1  # another of ours: answered, not stored, and nothing to send again (the sender counted it dropped)


@dataclass(frozen=True)
class RecordResult:
    """One entry of the 207's ``results``, in request order.

    What it means is worked out once, when made: delivery reads it for every record, and a 207's
    results are shared objects (``clients.v3``).
    """

    status: int
    message: str
    ok: bool = field(init=False, repr=False, compare=False)
    retryable: bool = field(init=False, repr=False, compare=False)
    """408, 429, 5xx or not sent: this record may be accepted if sent again."""
    dropped: bool = field(init=False, repr=False, compare=False)
    """Refused without a dead letter; the sender counted it as dropped (``DROPPED``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", 200 <= self.status < 300)
        object.__setattr__(self, "retryable", is_retryable_status(self.status))
        object.__setattr__(self, "dropped", self.status == DROPPED)


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


def _never_connected(error: BaseException) -> bool:
    """Whether a requests ``ConnectionError`` failed before any byte of the request went out."""
    from urllib3.exceptions import (
        NewConnectionError,  # refused, unreachable, name not resolved
    )

    reason = error.args[0] if error.args else None
    return isinstance(getattr(reason, "reason", reason), NewConnectionError)
