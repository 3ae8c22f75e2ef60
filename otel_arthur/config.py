"""One home for settings: constructor argument -> ``ARTHUR_*`` environment variable -> default.

Environment variable names are the ``arthurai`` SDK's own where it has one, so an environment
already set up for the SDK works unchanged. A bad environment value is logged and the default
used; a bad explicit argument raises ``ValueError`` (the OpenTelemetry SDK's rule).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from otel_arthur.redaction import check_pattern, parse_builtins, parse_patterns

_logger = logging.getLogger(__name__)

# The SDK's names.
ARTHUR_ENDPOINT_URL = "ARTHUR_ENDPOINT_URL"
ARTHUR_API_KEY = "ARTHUR_API_KEY"
ARTHUR_LOGIN = "ARTHUR_LOGIN"
ARTHUR_PASSWORD = "ARTHUR_PASSWORD"
ARTHUR_ORGANIZATION_ID = "ARTHUR_ORGANIZATION_ID"
VERIFY_SSL = "VERIFY_SSL"
# Ours.
ARTHUR_MODEL_ID = "ARTHUR_MODEL_ID"
ARTHUR_ALLOW_INSECURE = "ARTHUR_ALLOW_INSECURE"
ARTHUR_TIMEOUT = "ARTHUR_TIMEOUT"
ARTHUR_ATTRIBUTE_MAP = "ARTHUR_ATTRIBUTE_MAP"
ARTHUR_BATCH_MAX_RECORDS = "ARTHUR_BATCH_MAX_RECORDS"
ARTHUR_BATCH_MAX_BYTES = "ARTHUR_BATCH_MAX_BYTES"
ARTHUR_SPOOL_DIR = "ARTHUR_SPOOL_DIR"
ARTHUR_SPOOL_MAX_BYTES = "ARTHUR_SPOOL_MAX_BYTES"
ARTHUR_MAX_TEXT_BYTES = "ARTHUR_MAX_TEXT_BYTES"
ARTHUR_DELIVERY_LINGER = "ARTHUR_DELIVERY_LINGER"
ARTHUR_DELIVERY = "ARTHUR_DELIVERY"
# Zero-code (otel_arthur.distro): which instrumentor is activated when several register one name.
ARTHUR_PREFERRED_INSTRUMENTORS = "ARTHUR_PREFERRED_INSTRUMENTORS"
# Privacy (otel_arthur.privacy, otel_arthur.redaction). A bad value here is a ConfigurationError, not
# a logged default: a typo must not send what it was meant to withhold.
ARTHUR_SEND_CONTENT = "ARTHUR_SEND_CONTENT"
ARTHUR_REDACT = "ARTHUR_REDACT"
ARTHUR_REDACT_PATTERNS = "ARTHUR_REDACT_PATTERNS"
# The XDG base directory specification's; the spool's default lives under it.
XDG_STATE_HOME = "XDG_STATE_HOME"

DEFAULT_TIMEOUT = 10.0  # seconds, per HTTP request to Arthur
DEFAULT_BATCH_MAX_RECORDS = 500
DEFAULT_BATCH_MAX_BYTES = 4 * 1024 * 1024  # JSON body size of one inferences POST
DEFAULT_SPOOL_MAX_BYTES = 512 * 1024 * 1024  # records and dead letters on disk, per spool directory
DEFAULT_MAX_TEXT_BYTES = 64 * 1024  # UTF-8 bytes of one prompt or completion
DEFAULT_DELIVERY_LINGER = 1.0  # seconds delivery waits for a batch's worth of records before sending fewer
DELIVERY_PROCESS = "process"  # the in-app exporter delivers from a child process (otel_arthur.delivery_process)
DELIVERY_THREAD = "thread"  # it delivers from a thread in the application's interpreter
DEFAULT_DELIVERY = DELIVERY_PROCESS  # the shorter tail for the application's calls, measured (docs/benchmarks.md)
SPOOL_SUBDIRECTORY = "otel-arthur"

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


class ConfigurationError(ValueError):
    """Settings that cannot work (no URL, no credentials, plain http without consent).

    Messages name constructor arguments (``pass url=``); commands put them in their own terms with ``as_flags``.
    """


_ARGUMENT_TO_FLAG = (("pass url=", "pass --url"), ("pass model_id=", "pass --model-id"),
                     ("pass engine_url=", "pass --engine-url"), ("pass engine_api_key=", "pass --engine-api-key"),
                     ("pass password=", "pass --password"), ("(or allow_insecure=True)", "(or pass --allow-insecure)"))


def as_flags(message: str) -> str:
    """A settings message in a command's terms: ``pass --url`` rather than the constructor's ``url=``."""
    for argument, flag in _ARGUMENT_TO_FLAG:
        message = message.replace(argument, flag)
    return message


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    _logger.warning("Ignoring %s=%r: expected true or false; using %s", name, raw, default)
    return default


def _env_number(name: str, default: float, kind: type[int] | type[float], *, zero_allowed: bool = False) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value < 0 or (value == 0 and not zero_allowed):
        _logger.warning("Ignoring %s=%r: expected a %s number; using %s", name, raw,
                        "non-negative" if zero_allowed else "positive", default)
        return default
    return value


def resolve_delivery(argument: str | None = None) -> str:
    """Where the in-app exporter delivers: argument -> ``ARTHUR_DELIVERY`` -> ``DEFAULT_DELIVERY``.

    A bad argument raises ``ValueError``; a bad environment value is logged and the default used.
    """
    choices = (DELIVERY_PROCESS, DELIVERY_THREAD)
    if argument is not None:
        if argument not in choices:
            raise ValueError(f"delivery must be {DELIVERY_PROCESS!r} or {DELIVERY_THREAD!r}, got {argument!r}")
        return argument
    raw = _env(ARTHUR_DELIVERY)
    if raw is None:
        return DEFAULT_DELIVERY
    if raw.strip().lower() in choices:
        return raw.strip().lower()
    _logger.warning("Ignoring %s=%r: expected %s or %s; using %s", ARTHUR_DELIVERY, raw, DELIVERY_PROCESS,
                    DELIVERY_THREAD, DEFAULT_DELIVERY)
    return DEFAULT_DELIVERY


def default_spool_dir() -> str:
    """``$XDG_STATE_HOME/otel-arthur``, else ``~/.local/state/otel-arthur`` (the XDG default).

    The specification says a relative ``XDG_STATE_HOME`` is invalid and to be ignored.
    """
    state_home = _env(XDG_STATE_HOME)
    if state_home is None or not os.path.isabs(state_home):
        state_home = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state_home, SPOOL_SUBDIRECTORY)


def resolve_spool_dir(argument: str | os.PathLike[str] | None = None) -> str:
    """The spool directory as the exporter resolves it: argument -> ``ARTHUR_SPOOL_DIR`` -> the XDG default."""
    directory = os.fspath(argument) if argument is not None else _env(ARTHUR_SPOOL_DIR)
    return directory if directory is not None else default_spool_dir()


def display_url(url: str) -> str:
    """``url`` as it may be shown in logs, messages and reprs: scheme, host, port and path only.

    User info (``https://user:password@host``) can carry a password, and a query string an API key.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: nothing of it is shown
        return "<unparsable URL>"
    if not parts.netloc:  # not scheme://host…; "user:password@host" parses as scheme "user"
        return url.rpartition("@")[2].partition("?")[0]
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _repr_for_display(settings: Any) -> str:
    """A dataclass's repr with its URL as ``display_url`` shows it; fields with ``repr=False`` (secrets) left out."""
    shown = []
    for f in fields(settings):
        if f.repr:
            value = getattr(settings, f.name)
            shown.append(f"{f.name}={display_url(value) if f.name == 'url' else value!r}")
    return f"{type(settings).__name__}({', '.join(shown)})"


def parse_attribute_map(text: str) -> dict[str, str]:
    """``"field=attribute,field2=attribute2"`` -> ``{"field": "attribute", ...}``."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, attribute = item.partition("=")
        if not sep or not name.strip() or not attribute.strip():
            raise ValueError(f"attribute map entry {item.strip()!r} is not field=attribute")
        mapping[name.strip()] = attribute.strip()
    return mapping


@dataclass(frozen=True)
class ArthurConnection:
    """Where Arthur is and how to authenticate: what every Arthur client needs (the exporter's
    native client, and the arthurai SDK behind ``create-model`` and ``doctor``). Secrets are kept
    out of ``repr``.
    """

    url: str
    api_key: str | None = field(default=None, repr=False)
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    organization_id: str | None = None
    allow_insecure: bool = False
    verify_ssl: bool = True

    __repr__ = _repr_for_display

    @classmethod
    def resolve(
        cls,
        *,
        url: str | None = None,
        api_key: str | None = None,
        login: str | None = None,
        password: str | None = None,
        organization_id: str | None = None,
        allow_insecure: bool | None = None,
        verify_ssl: bool | None = None,
    ) -> ArthurConnection:
        """Each setting from its argument, else its environment variable, else its default.

        Credentials: an argument beats the environment, and at one level an API key beats a login
        (the SDK's rule). Raises ``ConfigurationError`` naming what is missing or unsafe; never prompts.
        """
        url = url if url is not None else _env(ARTHUR_ENDPOINT_URL)
        if url is None:
            raise ConfigurationError(f"no Arthur URL: pass url= or set {ARTHUR_ENDPOINT_URL}")
        allow_insecure = allow_insecure if allow_insecure is not None else _env_bool(ARTHUR_ALLOW_INSECURE, False)
        # The SDK refuses plain http too, but only after sending the credentials to users/me over it.
        url = _checked_url(url, "Arthur", allow_insecure)
        if api_key is None and login is None:
            api_key = _env(ARTHUR_API_KEY)
        if api_key is not None:
            login = password = None
        else:
            login = login if login is not None else _env(ARTHUR_LOGIN)
            password = password if password is not None else _env(ARTHUR_PASSWORD)
            if login is None:
                raise ConfigurationError(
                    f"no Arthur credentials: set {ARTHUR_API_KEY}, or {ARTHUR_LOGIN} and {ARTHUR_PASSWORD}")
            if password is None:
                # the SDK would block on getpass(); an exporter or a scripted command must fail instead
                raise ConfigurationError(
                    f"login {login!r} has no password: pass password= or set {ARTHUR_PASSWORD} (otel-arthur never prompts)")
        return cls(
            url=url,
            api_key=api_key,
            login=login,
            password=password,
            organization_id=organization_id if organization_id is not None else _env(ARTHUR_ORGANIZATION_ID),
            allow_insecure=allow_insecure,
            verify_ssl=verify_ssl if verify_ssl is not None else _env_bool(VERIFY_SSL, True),
        )


@dataclass(frozen=True)
class ArthurSettings:
    """Where Arthur is, how to authenticate, which model. Secrets are kept out of ``repr``."""

    url: str
    model_id: str
    api_key: str | None = field(default=None, repr=False)
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    organization_id: str | None = None
    allow_insecure: bool = False
    verify_ssl: bool = True
    timeout: float = DEFAULT_TIMEOUT
    attribute_map: Mapping[str, str] = field(default_factory=dict)
    batch_max_records: int = DEFAULT_BATCH_MAX_RECORDS
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    spool_dir: str = field(default_factory=default_spool_dir)
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    delivery_linger: float = DEFAULT_DELIVERY_LINGER
    send_content: bool | None = None  # None: the instrumentors' own content switches decide (otel_arthur.privacy)
    redact_builtins: tuple[str, ...] = ()
    redact_patterns: tuple[tuple[str, str], ...] = ()

    __repr__ = _repr_for_display

    @property
    def has_api_key(self) -> bool:
        return self.api_key is not None

    @property
    def connection(self) -> ArthurConnection:
        return ArthurConnection(url=self.url, api_key=self.api_key, login=self.login, password=self.password,
                                organization_id=self.organization_id, allow_insecure=self.allow_insecure,
                                verify_ssl=self.verify_ssl)

    @classmethod
    def resolve(
        cls,
        *,
        url: str | None = None,
        api_key: str | None = None,
        login: str | None = None,
        password: str | None = None,
        organization_id: str | None = None,
        model_id: str | None = None,
        allow_insecure: bool | None = None,
        verify_ssl: bool | None = None,
        timeout: float | None = None,
        attribute_map: Mapping[str, str] | None = None,
        batch_max_records: int | None = None,
        batch_max_bytes: int | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
        max_text_bytes: int | None = None,
        send_content: bool | None = None,
        redact_builtins: str | Sequence[str] | None = None,
        redact_patterns: str | Mapping[str, str] | None = None,
    ) -> ArthurSettings:
        """Fill each setting from its argument, else its environment variable, else its default.

        Raises ``ConfigurationError`` naming what is missing or unsafe; never prompts.
        """
        connection = ArthurConnection.resolve(
            url=url, api_key=api_key, login=login, password=password, organization_id=organization_id,
            allow_insecure=allow_insecure, verify_ssl=verify_ssl,
        )
        model_id = model_id if model_id is not None else _env(ARTHUR_MODEL_ID)
        if model_id is None:
            raise ConfigurationError(f"no Arthur model: pass model_id= or set {ARTHUR_MODEL_ID}")

        if attribute_map is None:
            raw_map = _env(ARTHUR_ATTRIBUTE_MAP)
            try:
                attribute_map = parse_attribute_map(raw_map) if raw_map else {}
            except ValueError as exc:
                _logger.warning("Ignoring %s: %s", ARTHUR_ATTRIBUTE_MAP, exc)
                attribute_map = {}
        for name, value in (("batch_max_records", batch_max_records), ("batch_max_bytes", batch_max_bytes)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")

        return cls(
            **vars(connection),
            model_id=model_id,
            attribute_map=dict(attribute_map),
            batch_max_records=int(batch_max_records if batch_max_records is not None
                                  else _env_number(ARTHUR_BATCH_MAX_RECORDS, DEFAULT_BATCH_MAX_RECORDS, int)),
            batch_max_bytes=int(batch_max_bytes if batch_max_bytes is not None
                                else _env_number(ARTHUR_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_BYTES, int)),
            **_delivery_settings(timeout, spool_dir, spool_max_bytes, max_text_bytes, send_content, redact_builtins,
                                 redact_patterns),
        )


def _delivery_settings(timeout: float | None, spool_dir: str | os.PathLike[str] | None, spool_max_bytes: int | None,
                       max_text_bytes: int | None, send_content: bool | None,
                       redact_builtins: str | Sequence[str] | None,
                       redact_patterns: str | Mapping[str, str] | None) -> dict[str, Any]:
    """What every destination resolves alike: timeout, spool, text cap and privacy."""
    for name, value in (("timeout", timeout), ("spool_max_bytes", spool_max_bytes), ("max_text_bytes", max_text_bytes)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    return {
        "timeout": timeout if timeout is not None else _env_number(ARTHUR_TIMEOUT, DEFAULT_TIMEOUT, float),
        "spool_dir": resolve_spool_dir(spool_dir),
        "spool_max_bytes": int(spool_max_bytes if spool_max_bytes is not None
                               else _env_number(ARTHUR_SPOOL_MAX_BYTES, DEFAULT_SPOOL_MAX_BYTES, int)),
        "max_text_bytes": int(max_text_bytes if max_text_bytes is not None
                              else _env_number(ARTHUR_MAX_TEXT_BYTES, DEFAULT_MAX_TEXT_BYTES, int)),
        "delivery_linger": _env_number(ARTHUR_DELIVERY_LINGER, DEFAULT_DELIVERY_LINGER, float, zero_allowed=True),
        **resolve_privacy(send_content, redact_builtins, redact_patterns),
    }


def _parsed_env(name: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(_env(name) or "")
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def resolve_privacy(send_content: bool | None = None, builtins: str | Sequence[str] | None = None,
                           patterns: str | Mapping[str, str] | Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The privacy settings (``ArthurSettings`` fields); a bad argument raises ``ValueError``, a bad environment value ``ConfigurationError``."""
    raw = _env(ARTHUR_SEND_CONTENT)
    if send_content is None and raw is not None:
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise ConfigurationError(f"{ARTHUR_SEND_CONTENT}={raw!r}: expected true or false")
        send_content = raw.strip().lower() in _TRUE
    if builtins is None:
        builtins = _parsed_env(ARTHUR_REDACT, parse_builtins)
    if patterns is None:
        patterns = _parsed_env(ARTHUR_REDACT_PATTERNS, parse_patterns)
    if isinstance(builtins, str):
        builtins = parse_builtins(builtins)
    if isinstance(patterns, str):
        patterns = parse_patterns(patterns)
    elif isinstance(patterns, Mapping):
        patterns = tuple(patterns.items())
    return {
        "send_content": send_content,
        "redact_builtins": parse_builtins(",".join(builtins)) if builtins else (),
        "redact_patterns": tuple(check_pattern(name, regex) for name, regex in patterns),
    }


# Arthur Engine, the second destination (otel_arthur.destinations.engine).
ARTHUR_ENGINE_URL = "ARTHUR_ENGINE_URL"
ARTHUR_ENGINE_API_KEY = "ARTHUR_ENGINE_API_KEY"
ARTHUR_TASK_ID = "ARTHUR_TASK_ID"
ARTHUR_ENGINE_SPANS = "ARTHUR_ENGINE_SPANS"
# Arthur's own observability SDK's pair, understood only when no v3 URL is configured (the key
# would otherwise be the v3 one, and a credential never goes to a host it was not meant for).
ARTHUR_BASE_URL = "ARTHUR_BASE_URL"

ENGINE_SPANS_AI = "ai"  # the spans some supported convention marks as AI work
ENGINE_SPANS_ALL = "all"
DEFAULT_ENGINE_BATCH_MAX_SPANS = 512  # the SDK's BatchSpanProcessor export size
DEFAULT_ENGINE_BATCH_MAX_BYTES = 4 * 1024 * 1024  # protobuf bytes of one /api/v1/traces request


def v3_configured(url: str | None = None) -> bool:
    """Whether the v3 destination is asked for: a URL argument or ``ARTHUR_ENDPOINT_URL``."""
    return url is not None or _env(ARTHUR_ENDPOINT_URL) is not None


def engine_configured(engine_url: str | None = None, *, v3_url: str | None = None) -> bool:
    """Whether the Engine destination is asked for: an Engine URL from an argument or the environment."""
    return engine_url is not None or _env(ARTHUR_ENGINE_URL) is not None or (
        not v3_configured(v3_url) and _env(ARTHUR_BASE_URL) is not None)


def _checked_url(url: str, what: str, allow_insecure: bool) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in ("https", "http") or not urlsplit(url).netloc:
        raise ConfigurationError(f"{what} URL {display_url(url)!r} is not an http(s) URL")
    if scheme == "http" and not allow_insecure:
        raise ConfigurationError(
            f"{what} URL {display_url(url)!r} is plain http: set {ARTHUR_ALLOW_INSECURE}=true (or allow_insecure=True) to permit it")
    return url.rstrip("/")


@dataclass(frozen=True)
class EngineSettings:
    """Where Arthur Engine is, its key (kept out of ``repr``), which task, which spans; spool and privacy as v3's."""

    __repr__ = _repr_for_display

    url: str
    api_key: str = field(repr=False)
    task_id: str | None = None
    spans: str = ENGINE_SPANS_AI
    allow_insecure: bool = False
    verify_ssl: bool = True
    timeout: float = DEFAULT_TIMEOUT
    batch_max_records: int = DEFAULT_ENGINE_BATCH_MAX_SPANS  # spans per request
    batch_max_bytes: int = DEFAULT_ENGINE_BATCH_MAX_BYTES
    spool_dir: str = field(default_factory=default_spool_dir)
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    delivery_linger: float = DEFAULT_DELIVERY_LINGER
    send_content: bool | None = None
    redact_builtins: tuple[str, ...] = ()
    redact_patterns: tuple[tuple[str, str], ...] = ()

    @classmethod
    def resolve(
        cls,
        *,
        engine_url: str | None = None,
        engine_api_key: str | None = None,
        task_id: str | None = None,
        engine_spans: str | None = None,
        v3_url: str | None = None,
        allow_insecure: bool | None = None,
        verify_ssl: bool | None = None,
        timeout: float | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
        max_text_bytes: int | None = None,
        send_content: bool | None = None,
        redact_builtins: str | Sequence[str] | None = None,
        redact_patterns: str | Mapping[str, str] | None = None,
    ) -> EngineSettings:
        """Each setting from its argument, else its environment variable, else its default.

        ``ARTHUR_BASE_URL`` / ``ARTHUR_API_KEY`` (Arthur's own SDK's names) count only when no v3 URL
        is configured (``v3_url`` or ``ARTHUR_ENDPOINT_URL``). Raises ``ConfigurationError``.
        """
        sdk_pair = not v3_configured(v3_url)
        url = engine_url if engine_url is not None else _env(ARTHUR_ENGINE_URL)
        if url is None and sdk_pair:
            url = _env(ARTHUR_BASE_URL)
        if url is None:
            raise ConfigurationError(f"no Arthur Engine URL: pass engine_url= or set {ARTHUR_ENGINE_URL}")
        allow_insecure = allow_insecure if allow_insecure is not None else _env_bool(ARTHUR_ALLOW_INSECURE, False)
        url = _checked_url(url, "Arthur Engine", allow_insecure)
        api_key = engine_api_key if engine_api_key is not None else _env(ARTHUR_ENGINE_API_KEY)
        if api_key is None and sdk_pair:
            api_key = _env(ARTHUR_API_KEY)
        if api_key is None:
            where = f"{ARTHUR_ENGINE_API_KEY}" + ("" if not sdk_pair else f" (or {ARTHUR_API_KEY})")
            raise ConfigurationError(f"no Arthur Engine API key: pass engine_api_key= or set {where}")
        spans = (engine_spans if engine_spans is not None else _env(ARTHUR_ENGINE_SPANS) or ENGINE_SPANS_AI)
        if spans.strip().lower() not in (ENGINE_SPANS_AI, ENGINE_SPANS_ALL):
            raise ConfigurationError(f"{ARTHUR_ENGINE_SPANS}={spans!r}: expected {ENGINE_SPANS_AI} or {ENGINE_SPANS_ALL}")
        return cls(
            url=url,
            api_key=api_key,
            task_id=task_id if task_id is not None else _env(ARTHUR_TASK_ID),
            spans=spans.strip().lower(),
            allow_insecure=allow_insecure,
            verify_ssl=verify_ssl if verify_ssl is not None else _env_bool(VERIFY_SSL, True),
            **_delivery_settings(timeout, spool_dir, spool_max_bytes, max_text_bytes, send_content, redact_builtins,
                                 redact_patterns),
        )


# `otel-arthur serve`'s own settings: where it listens and what it lets in. Its Arthur side is
# ArthurSettings above, the same as the exporter's.
OTEL_ARTHUR_RECEIVER_HOST = "OTEL_ARTHUR_RECEIVER_HOST"
OTEL_ARTHUR_RECEIVER_PORT = "OTEL_ARTHUR_RECEIVER_PORT"
OTEL_ARTHUR_RECEIVER_MAX_BODY_BYTES = "OTEL_ARTHUR_RECEIVER_MAX_BODY_BYTES"
OTEL_ARTHUR_RECEIVER_TOKEN = "OTEL_ARTHUR_RECEIVER_TOKEN"
OTEL_ARTHUR_RECEIVER_SHUTDOWN_TIMEOUT = "OTEL_ARTHUR_RECEIVER_SHUTDOWN_TIMEOUT"
OTEL_ARTHUR_RECEIVER_DECODE_PROCESSES = "OTEL_ARTHUR_RECEIVER_DECODE_PROCESSES"
OTEL_ARTHUR_RECEIVER_MAX_SPANS_PER_REQUEST = "OTEL_ARTHUR_RECEIVER_MAX_SPANS_PER_REQUEST"
OTEL_ARTHUR_RECEIVER_HEADER_TIMEOUT = "OTEL_ARTHUR_RECEIVER_HEADER_TIMEOUT"
OTEL_ARTHUR_RECEIVER_BODY_TIMEOUT = "OTEL_ARTHUR_RECEIVER_BODY_TIMEOUT"
OTEL_ARTHUR_RECEIVER_MAX_CONNECTIONS = "OTEL_ARTHUR_RECEIVER_MAX_CONNECTIONS"
OTEL_ARTHUR_RECEIVER_GRPC_PORT = "OTEL_ARTHUR_RECEIVER_GRPC_PORT"
OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE = "OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE"
OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE = "OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE"
OTEL_ARTHUR_RECEIVER_TLS_CLIENT_CA_FILE = "OTEL_ARTHUR_RECEIVER_TLS_CLIENT_CA_FILE"
OTEL_ARTHUR_RECEIVER_ALLOW_PLAINTEXT_TOKEN = "OTEL_ARTHUR_RECEIVER_ALLOW_PLAINTEXT_TOKEN"

DEFAULT_RECEIVER_HOST = "127.0.0.1"  # beside the Collector; bind 0.0.0.0 explicitly to listen beyond the host
DEFAULT_RECEIVER_PORT = 4319  # next to the Collector's own OTLP ports, 4317 (gRPC) and 4318 (HTTP)
DEFAULT_RECEIVER_GRPC_PORT = 4320  # OTLP/gRPC, next to the HTTP one
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024  # one request once decompressed; the Collector's own receiver default
DEFAULT_RECEIVER_SHUTDOWN_TIMEOUT = 20.0  # seconds from SIGTERM to exit; under Kubernetes' default 30 s grace
# Spans (and resource or scope groups) in one request, counted before any is decoded. The shipped
# Collector configs send 256 at most; a 20 MiB body of empty spans would hold 10 million.
DEFAULT_MAX_SPANS_PER_REQUEST = 50_000
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a request's headers, from the connection or its first byte
DEFAULT_BODY_TIMEOUT = 30.0  # seconds for a body after its headers: the Collector's otlphttp gives up at 30 s
DEFAULT_MAX_CONNECTIONS = 512  # open at once; lowered at start-up to what the file-descriptor limit allows


@dataclass(frozen=True)
class ReceiverSettings:
    """``otel-arthur serve``: addresses, body limit, bearer token (kept out of ``repr``), TLS, shutdown budget."""

    host: str = DEFAULT_RECEIVER_HOST
    port: int = DEFAULT_RECEIVER_PORT
    grpc_port: int = DEFAULT_RECEIVER_GRPC_PORT
    """OTLP/gRPC's port, on ``host``."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    auth_token: str | None = field(default=None, repr=False)
    shutdown_timeout: float = DEFAULT_RECEIVER_SHUTDOWN_TIMEOUT
    decode_processes: int = 0
    """Processes that decode and map request bodies; 0 decodes in the serving process."""
    max_spans_per_request: int = DEFAULT_MAX_SPANS_PER_REQUEST
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    tls_cert_file: str | None = None
    """With ``tls_key_file``: both receivers speak TLS only."""
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    """Clients must present a certificate signed by this CA (mutual TLS)."""
    allow_plaintext_token: bool = False
    """A token without TLS beyond loopback is accepted: TLS ends in front (a proxy, a service mesh)."""

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def token_in_clear_beyond_host(self) -> bool:
        """Clients would send the bearer token unencrypted to an address other hosts can reach."""
        return self.auth_token is not None and not self.tls and not _loopback(self.host)

    @classmethod
    def resolve(
        cls,
        *,
        host: str | None = None,
        port: int | None = None,
        max_body_bytes: int | None = None,
        auth_token: str | None = None,
        shutdown_timeout: float | None = None,
        decode_processes: int | None = None,
        max_spans_per_request: int | None = None,
        header_timeout: float | None = None,
        body_timeout: float | None = None,
        max_connections: int | None = None,
        grpc_port: int | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_client_ca_file: str | None = None,
        allow_plaintext_token: bool | None = None,
    ) -> ReceiverSettings:
        """Each setting from its argument, else ``OTEL_ARTHUR_RECEIVER_*``, else its default.

        ``ConfigurationError`` when a TLS file cannot be read, or a certificate comes without its key.
        """
        for name, value in (("port", port), ("grpc_port", grpc_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be 0-65535, got {value!r}")
        if decode_processes is not None and decode_processes < 0:
            raise ValueError(f"decode processes must be 0 or more, got {decode_processes!r}")
        for name, value in (("max_body_bytes", max_body_bytes), ("shutdown_timeout", shutdown_timeout),
                            ("max_spans_per_request", max_spans_per_request), ("header_timeout", header_timeout),
                            ("body_timeout", body_timeout), ("max_connections", max_connections)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if host is None:
            host = _env(OTEL_ARTHUR_RECEIVER_HOST)
        if port is None:
            port = int(_env_number(OTEL_ARTHUR_RECEIVER_PORT, DEFAULT_RECEIVER_PORT, int))
            if port > 65535:
                _logger.warning("Ignoring %s=%s: not a port; using %s", OTEL_ARTHUR_RECEIVER_PORT, port,
                                DEFAULT_RECEIVER_PORT)
                port = DEFAULT_RECEIVER_PORT
        if grpc_port is None:
            grpc_port = int(_env_number(OTEL_ARTHUR_RECEIVER_GRPC_PORT, DEFAULT_RECEIVER_GRPC_PORT, int,
                                        zero_allowed=True))
            if grpc_port > 65535:
                _logger.warning("Ignoring %s=%s: not a port; using %s", OTEL_ARTHUR_RECEIVER_GRPC_PORT, grpc_port,
                                DEFAULT_RECEIVER_GRPC_PORT)
                grpc_port = DEFAULT_RECEIVER_GRPC_PORT
        tls_cert_file, tls_key_file, tls_client_ca_file = _tls_files(
            tls_cert_file if tls_cert_file is not None else _env(OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE),
            tls_key_file if tls_key_file is not None else _env(OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE),
            tls_client_ca_file if tls_client_ca_file is not None else _env(OTEL_ARTHUR_RECEIVER_TLS_CLIENT_CA_FILE))
        return cls(
            host=host if host is not None else DEFAULT_RECEIVER_HOST,
            port=port,
            max_body_bytes=int(max_body_bytes if max_body_bytes is not None
                               else _env_number(OTEL_ARTHUR_RECEIVER_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES, int)),
            auth_token=auth_token if auth_token is not None else _env(OTEL_ARTHUR_RECEIVER_TOKEN),
            shutdown_timeout=float(shutdown_timeout if shutdown_timeout is not None
                                   else _env_number(OTEL_ARTHUR_RECEIVER_SHUTDOWN_TIMEOUT,
                                                    DEFAULT_RECEIVER_SHUTDOWN_TIMEOUT, float)),
            decode_processes=int(decode_processes if decode_processes is not None
                                 else _env_number(OTEL_ARTHUR_RECEIVER_DECODE_PROCESSES, 0, int, zero_allowed=True)),
            max_spans_per_request=int(max_spans_per_request if max_spans_per_request is not None
                                      else _env_number(OTEL_ARTHUR_RECEIVER_MAX_SPANS_PER_REQUEST,
                                                       DEFAULT_MAX_SPANS_PER_REQUEST, int)),
            header_timeout=float(header_timeout if header_timeout is not None
                                 else _env_number(OTEL_ARTHUR_RECEIVER_HEADER_TIMEOUT, DEFAULT_HEADER_TIMEOUT, float)),
            body_timeout=float(body_timeout if body_timeout is not None
                               else _env_number(OTEL_ARTHUR_RECEIVER_BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT, float)),
            max_connections=int(max_connections if max_connections is not None
                                else _env_number(OTEL_ARTHUR_RECEIVER_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, int)),
            grpc_port=grpc_port,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_client_ca_file=tls_client_ca_file,
            allow_plaintext_token=(allow_plaintext_token if allow_plaintext_token is not None
                                   else _env_bool(OTEL_ARTHUR_RECEIVER_ALLOW_PLAINTEXT_TOKEN, False)),
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_TLS_FLAGS = {OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE: "--tls-cert-file",
              OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE: "--tls-key-file",
              OTEL_ARTHUR_RECEIVER_TLS_CLIENT_CA_FILE: "--tls-client-ca-file"}


def _tls_files(cert: str | None, key: str | None, client_ca: str | None) -> tuple[str | None, str | None, str | None]:
    """The receiver's TLS files, each readable, the certificate with its key; else ``ConfigurationError``.

    Checked before listening: a receiver that was asked for TLS must never come up without it.
    """
    if (cert is None) != (key is None):
        missing = OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE if key is None else OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE
        raise ConfigurationError(f"TLS needs both a certificate and its key: pass {_TLS_FLAGS[missing]} or set "
                                 f"{missing}")
    if client_ca is not None and cert is None:
        raise ConfigurationError("--tls-client-ca-file (mutual TLS) needs the receiver's own certificate: pass "
                                 f"--tls-cert-file and --tls-key-file or set {OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE} and "
                                 f"{OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE}")
    for env, path in ((OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE, cert), (OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE, key),
                      (OTEL_ARTHUR_RECEIVER_TLS_CLIENT_CA_FILE, client_ca)):
        if path is not None:
            try:
                with open(path, "rb") as file:
                    file.read(1)
            except OSError as exc:
                raise ConfigurationError(f"cannot read the TLS file {path} ({_TLS_FLAGS[env]} or {env}): "
                                         f"{exc.strerror or exc}") from None
    return cert, key, client_ca
