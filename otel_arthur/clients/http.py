"""What the HTTP clients share: the errors that say what a caller should do next, one record's
result, ``Service`` (keep-alive connections to one service through urllib3, per-request timeouts
bounded by a deadline), and how a request that got no answer is said.

Errors: ``SetupError`` (the service refuses the credentials, organization, model or task: nothing
can be delivered until the set-up is fixed), ``PermanentError`` (it refuses these records; retrying
the same request cannot help), ``RetryableError`` (try again later; ``unanswered_for`` when the
request went out and its outcome is unknown), ``ThrottledError`` (no sooner than ``retry_after``).
No secret ever appears in a message.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import orjson

from otel_arthur import __version__, forking
from otel_arthur.config import display_url

if TYPE_CHECKING:
    from urllib3 import HTTPConnectionPool, HTTPHeaderDict

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


def refuse_redirect(response: Response, what: str, service: str) -> None:
    """``SetupError`` for a 3xx, saying where it points: redirects are not followed (a POST's body would
    not follow it, nor should the credentials to another host); the configured URL is to be fixed."""
    if 300 <= response.status_code < 400:
        location = response.headers.get("Location")
        where = f" to {display_url(location)}" if location else ""
        raise SetupError(f"{what}: {service} answered {response.status_code}, a redirect{where}: set the URL it"
                         " points to")


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


POOL_SIZE = 10  # keep-alive connections kept per service, as requests kept; delivery uses one at a time
# requests' requote_uri leaves these as they are in a request's path; anything else is percent-encoded.
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~"


class Response:
    """A service's answer, read whole: status, headers (case-insensitive), body, and the path it answered."""

    __slots__ = ("status_code", "headers", "content", "path_url")

    def __init__(self, status_code: int, headers: HTTPHeaderDict, content: bytes, path_url: str) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.path_url = path_url  # the request's path and query as sent

    def json(self) -> Any:
        """The body as JSON (orjson); ``ValueError`` when it is not JSON."""
        return orjson.loads(self.content)

    def cookie(self, name: str) -> str | None:
        """A cookie's value from the ``Set-Cookie`` headers; None when none sets it."""
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.getlist("Set-Cookie"):
            with suppress(CookieError):
                jar.load(header)
        morsel = jar.get(name)
        return None if morsel is None else morsel.value


class Service:
    """HTTP to one service: keep-alive connections, timeouts bounded by a deadline, failures as ``RetryableError``.

    urllib3 directly: ``requests`` on top of it cost ~0.4 ms more CPU per POST (benchmarks/post_bench.py).
    Thread-safe. The connections are made at the first request, on the delivery thread (importing
    urllib3 takes ~0.1 s, which an application constructing the exporter should not wait for), with
    what the environment says of proxies and certificates read then, once, as requests read it
    (``environment_proxy``, ``trusted_certificates``): per request, scanning os.environ cost ~0.45 ms.
    A URL's user info is never sent, and no ~/.netrc is read: nothing replaces the Authorization header.
    """

    def __init__(self, url: str, verify_ssl: bool, timeout: float, headers: Mapping[str, str],
                 prefix: str = "") -> None:
        """``url``: the service's configured URL (shown as ``display_url``); ``prefix``: the API's path under it."""
        self._url = url
        self._verify_ssl = verify_ssl
        self._headers = {"Accept": JSON, "User-Agent": USER_AGENT, **headers}
        parts = urlsplit(url)
        self._path_base = url[len(f"{parts.scheme}://{parts.netloc}"):] + prefix
        self._timeouts = Timeouts(timeout)
        self._lock = threading.Lock()
        self._pool_made: tuple[HTTPConnectionPool, str] | None = None
        forking.register(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """A pool of the child's own at its next request.

        The parent's connections are the parent's: two processes writing to one socket garble both.
        The inherited pool is dropped, not closed: its lock may have been held at the fork.
        """
        self._lock = threading.Lock()
        self._pool_made = None

    def _pool(self) -> tuple[HTTPConnectionPool, str]:
        """The pool, and what goes before a request's path: a proxy forwarding plain HTTP reads the whole URL."""
        if self._pool_made is None:
            with self._lock:
                if self._pool_made is None:
                    self._pool_made = _connection_pool(self._url, self._verify_ssl)
        return self._pool_made

    def set_deadline(self, deadline: float) -> None:
        """From now on no request lasts past ``deadline`` (``time.monotonic()``), nor starts after it."""
        self._timeouts.deadline = deadline

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                params: Mapping[str, str] | None = None, read_timeout: float | None = None) -> Response:
        """Send, and read the answer whole; ``path`` is shown in errors. The body goes out as given, uncopied."""
        from urllib3 import Timeout
        from urllib3.exceptions import HTTPError

        connect, read = self._timeouts(method, path, read_timeout)
        path_url = quote(self._path_base + path, safe=_PATH_SAFE) + (f"?{urlencode(params)}" if params else "")
        try:
            pool, origin = self._pool()
        except HTTPError as exc:  # e.g. a proxy of a scheme urllib3 cannot speak: nothing went out
            raise RetryableError(f"{method} {path}: {type(exc).__name__}") from None
        answered = False
        started = time.monotonic()
        try:
            answer = pool.urlopen(method, origin + path_url, body=body,
                                  headers=self._headers | headers if headers else self._headers,
                                  retries=False, redirect=False, assert_same_host=False,
                                  timeout=Timeout(connect=connect, read=read), preload_content=False)
            answered = True
            content = answer.read()
        except HTTPError as exc:
            raise _request_failure(exc, f"{method} {path}", self._url, (connect, read),
                                   time.monotonic() - started, answered) from None
        return Response(answer.status, answer.headers, content, path_url)

    def close(self) -> None:
        if self._pool_made is not None:
            self._pool_made[0].close()


def _connection_pool(url: str, verify_ssl: bool) -> tuple[HTTPConnectionPool, str]:
    import urllib3

    tls = {"cert_reqs": "CERT_REQUIRED", **trusted_certificates()} if verify_ssl else {"cert_reqs": "CERT_NONE"}
    proxy = environment_proxy(url)
    if proxy is None:
        return urllib3.PoolManager(num_pools=1, maxsize=POOL_SIZE, **tls).connection_from_url(url), ""
    manager = urllib3.ProxyManager(proxy, num_pools=1, maxsize=POOL_SIZE, proxy_headers=_proxy_authorization(proxy),
                                   **tls)
    parts = urlsplit(url)
    # Plain HTTP is forwarded with the whole URL in the request line (its Host from it: no user info);
    # HTTPS goes through a CONNECT tunnel, and the request line carries the path only.
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.scheme == "http" else ""
    return manager.connection_from_url(url), origin


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, as requests chose it: ``<scheme>_proxy``, else ``all_proxy``
    (either case), none when ``no_proxy`` lists the host (``*``, a name or its domain, an address or a CIDR network)."""
    from urllib.request import getproxies_environment, proxy_bypass_environment

    proxies = getproxies_environment()
    parts = urlsplit(url)
    host = parts.hostname
    if not host or _in_no_proxy_network(host, proxies.get("no", "")) or \
            proxy_bypass_environment(parts.netloc.rpartition("@")[2], proxies):
        return None
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    return proxy if not proxy or "://" in proxy else f"http://{proxy}"  # requests' default scheme of a proxy


def _in_no_proxy_network(host: str, no_proxy: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in no_proxy.replace(" ", "").split(","):
        with suppress(ValueError):
            if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                return True
    return False


def _proxy_authorization(proxy: str) -> dict[str, str]:
    """``Proxy-Authorization`` from the proxy URL's user info, as requests sent it."""
    from urllib3 import make_headers

    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    return make_headers(proxy_basic_auth=f"{unquote(parts.username)}:{unquote(parts.password or '')}")


def trusted_certificates() -> dict[str, str]:
    """What verifies a service's certificate, as requests chose it: ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``
    (a file, or a directory of certificates), else certifi's bundle. requests never read ``SSL_CERT_FILE``."""
    import certifi

    path = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    return {"ca_cert_dir": path} if os.path.isdir(path) else {"ca_certs": path}


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


def _request_failure(error: Exception, request: str, url: str, timeouts: tuple[float, float], waited: float,
                     answered: bool) -> RetryableError:
    """What urllib3's ``error`` means for ``request`` ("POST /path"): why it got no answer, and whether it went out.

    One that may have reached the service (sent, then no answer or a broken connection) carries
    ``unanswered_for``: its outcome is unknown.
    """
    from urllib3 import exceptions as failed

    shown = display_url(url)
    if isinstance(error, failed.ReadTimeoutError):  # sent, and no answer in time: the service may still store it
        return RetryableError(f"{request}: timed out after {timeouts[1]:g}s", unanswered_for=waited)
    if answered:  # the status came, the body broke off; requests' name for it, which logs and alerts may match
        return RetryableError(f"{request}: ChunkedEncodingError", unanswered_for=waited)
    if isinstance(error, failed.NewConnectionError):  # refused, unreachable, name not resolved: nothing went out
        return RetryableError(f"{request}: cannot connect to {shown}: {network_reason(error)}")
    if isinstance(error, failed.ConnectTimeoutError):
        return RetryableError(f"{request}: timed out after {timeouts[0]:g}s")
    if isinstance(error, failed.SSLError):
        return RetryableError(f"{request}: TLS with {shown} failed: {network_reason(error)}")
    if isinstance(error, failed.ProxyError):  # the proxy's URL may hold a password: it is not shown
        never_connected = isinstance(error.original_error, failed.ConnectTimeoutError)
        return RetryableError(f"{request}: cannot connect to {shown} through the environment's proxy: "
                              f"{network_reason(error)}", unanswered_for=None if never_connected else waited)
    if isinstance(error, failed.ProtocolError):  # a connection broken after the request went out
        return RetryableError(f"{request}: cannot connect to {shown}: {network_reason(error)}", unanswered_for=waited)
    return RetryableError(f"{request}: {type(error).__name__}", unanswered_for=waited)
