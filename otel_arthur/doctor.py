"""``otel-arthur doctor``: would records reach Arthur with this configuration? Checks it all, says what is wrong.

It reads the configuration exactly as the exporter does (flags stand for the constructor's
arguments, then ``ARTHUR_*``, then defaults), connects with the ``arthurai`` SDK — or with the
exporter's own client where the SDK is not installed (it installs on Python <= 3.11 only) —
fetches the model and prints, on stdout:

    Configuration  URL, model, credentials (kind and where they came from, never their value)
    Arthur         the organization, the model and its attributes
    Binding        each field the bridge produces -> the attribute it lands in, or "skipped (no attribute)"
    Arthur Engine  when configured: URL, key and task (where each came from), which spans; the key
                   accepted and the task found, by one ``GET /api/v2/tasks/{id}``
    Privacy        content switches and redaction in force
    Spool          the directory (writable?), what waits in it, dead letters

With only Arthur Engine configured the v3 sections say "not configured" and are skipped.

Each problem is also one line on stderr, ``error: …``, and sets the exit code
(``otel_arthur.exit_codes``): 3 configuration, 4 unreachable (connection, DNS, TLS, timeout, 5xx),
5 refused set-up (401/403, unknown model, a model without a text input or output attribute),
6 spool; with several, the first in that order. 0 means records would reach Arthur.

Nothing is sent to Arthur but reads, and the spool directory is not created when missing (its
nearest existing parent is checked instead).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

from otel_arthur import __version__, exit_codes
from otel_arthur.binding import Binding, BindingError, bind
from otel_arthur.clients.http import is_uuid, network_reason
from otel_arthur.clients.v3 import ArthurModel, ModelAttribute, parse_model
from otel_arthur.config import (
    ARTHUR_ALLOW_INSECURE,
    ARTHUR_API_KEY,
    ARTHUR_ATTRIBUTE_MAP,
    ARTHUR_BASE_URL,
    ARTHUR_ENDPOINT_URL,
    ARTHUR_ENGINE_API_KEY,
    ARTHUR_ENGINE_SPANS,
    ARTHUR_ENGINE_URL,
    ARTHUR_LOGIN,
    ARTHUR_MODEL_ID,
    ARTHUR_ORGANIZATION_ID,
    ARTHUR_PASSWORD,
    ARTHUR_SPOOL_DIR,
    ARTHUR_TASK_ID,
    ENGINE_SPANS_AI,
    ENGINE_SPANS_ALL,
    ArthurSettings,
    ConfigurationError,
    EngineSettings,
    as_flags,
    display_url,
    engine_configured,
    resolve_privacy,
    resolve_spool_dir,
    v3_configured,
)
from otel_arthur.fields import FIELDS, Stage
from otel_arthur.privacy import ContentPolicy
from otel_arthur.spool import FILE_NAME, Spool, damaged_copies

logger = logging.getLogger(__name__)

CLIENTS = ("auto", "sdk", "native")
ORGANIZATION_HEADER = "Arthur-Organization-ID"  # the SDK keeps the organization in its session's headers
_REQUEST_PREFIX = re.compile(r"^[A-Z]+ /\S*: ")
_T = TypeVar("_T")

EPILOG = f"""\
examples:
  # the exporter's own environment, as the application would run
  ARTHUR_ENDPOINT_URL=https://app.arthur.ai ARTHUR_API_KEY=… ARTHUR_MODEL_ID=my-chatbot otel-arthur doctor

  # flags stand in for the exporter's constructor arguments
  otel-arthur doctor --url http://127.0.0.1:8787 --allow-insecure --model-id chat --spool-dir /var/spool/otel-arthur

  # Arthur Engine (alone, or beside v3): reachable, key accepted, task found
  ARTHUR_ENGINE_URL=https://engine.example ARTHUR_ENGINE_API_KEY=… ARTHUR_TASK_ID=… otel-arthur doctor

  # in a deployment script: stop when something would not work
  otel-arthur doctor >/dev/null || exit 1

{exit_codes.epilog_table((exit_codes.OK, exit_codes.ERROR, exit_codes.USAGE, exit_codes.CONFIGURATION,
                          exit_codes.UNREACHABLE, exit_codes.REFUSED, exit_codes.SPOOL))}
  with several problems, the first in this order; each one is a line "error: …" on stderr
"""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The exporter's settings as flags; each falls back to its environment variable, as the exporter does."""
    group = parser.add_argument_group("Arthur (each defaults to the exporter's environment variable)")
    group.add_argument("--url", help=f"Arthur base URL (default: ${ARTHUR_ENDPOINT_URL})")
    group.add_argument("--model-id", help=f"model id or partner model id (default: ${ARTHUR_MODEL_ID})")
    group.add_argument("--api-key", help=f"API key; wins over a login (default: ${ARTHUR_API_KEY})")
    group.add_argument("--login", help=f"login, used when there is no API key (default: ${ARTHUR_LOGIN})")
    group.add_argument("--password", help=f"password for the login; never prompted for (default: ${ARTHUR_PASSWORD})")
    group.add_argument("--organization-id", help=f"(default: ${ARTHUR_ORGANIZATION_ID}, else the credentials' own)")
    group.add_argument("--allow-insecure", action="store_true", default=None,
                       help=f"permit a plain http:// URL (default: ${ARTHUR_ALLOW_INSECURE})")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Arthur Engine's settings as flags; each falls back to its environment variable, as the exporter does."""
    group = parser.add_argument_group("Arthur Engine (each defaults to the exporter's environment variable)")
    group.add_argument("--engine-url", help=f"Arthur Engine base URL (default: ${ARTHUR_ENGINE_URL}, or "
                                            f"${ARTHUR_BASE_URL} when no v3 URL is set)")
    group.add_argument("--engine-api-key", help=f"the Engine's API key (default: ${ARTHUR_ENGINE_API_KEY}, or "
                                                f"${ARTHUR_API_KEY} when no v3 URL is set)")
    group.add_argument("--task-id", help=f"the task spans go to (default: ${ARTHUR_TASK_ID}; without one the "
                                         "Engine routes them by service.name)")
    group.add_argument("--engine-spans", choices=(ENGINE_SPANS_AI, ENGINE_SPANS_ALL),
                       help=f"which spans go to the Engine (default: ${ARTHUR_ENGINE_SPANS}, else {ENGINE_SPANS_AI})")


def resolve_engine_settings(args: argparse.Namespace) -> EngineSettings:
    """``EngineSettings`` from the flags, the environment and the defaults; ``ConfigurationError`` when unusable."""
    return EngineSettings.resolve(
        engine_url=args.engine_url, engine_api_key=args.engine_api_key, task_id=args.task_id,
        engine_spans=args.engine_spans, v3_url=args.url, allow_insecure=args.allow_insecure,
        spool_dir=getattr(args, "spool_dir", None),
    )


def add_spool_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spool-dir", help=f"spool directory (default: ${ARTHUR_SPOOL_DIR}, else "
                                            "$XDG_STATE_HOME/otel-arthur, else ~/.local/state/otel-arthur)")


def resolve_settings(args: argparse.Namespace) -> ArthurSettings:
    """``ArthurSettings`` from the flags, the environment and the defaults; ``ConfigurationError`` when unusable."""
    return ArthurSettings.resolve(
        url=args.url, api_key=args.api_key, login=args.login, password=args.password,
        organization_id=args.organization_id, model_id=args.model_id, allow_insecure=args.allow_insecure,
        spool_dir=getattr(args, "spool_dir", None),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Check that records would reach Arthur with this configuration: credentials, "
                          "organization, model, binding, Arthur Engine and its task, privacy settings and spool.")
    parser.epilog = EPILOG
    add_connection_arguments(parser)
    add_engine_arguments(parser)
    add_spool_argument(parser)
    parser.add_argument("--client", choices=CLIENTS, default="auto",
                        help="connect with the arthurai SDK or the exporter's native client "
                             "(default: %(default)s, the SDK when installed)")


# -- the report --------------------------------------------------------------------------------


@dataclass
class Problem:
    code: int
    message: str


@dataclass
class Report:
    """What ``doctor`` found: lines for stdout, problems for stderr and the exit code."""

    lines: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def section(self, title: str) -> None:
        if self.lines:
            self.lines.append("")
        self.lines.append(title)

    def item(self, name: str, value: str) -> None:
        self.lines.append(f"  {name:<14} {value}")

    def problem(self, code: int, message: str) -> None:
        self.problems.append(Problem(code, message))
        self.lines.append(f"  {'PROBLEM':<14} {message}")

    @property
    def exit_code(self) -> int:
        order = (exit_codes.CONFIGURATION, exit_codes.UNREACHABLE, exit_codes.REFUSED, exit_codes.SPOOL)
        codes = {p.code for p in self.problems}
        return next((code for code in order if code in codes), exit_codes.OK)


def _source(flag_value: object, flag: str, variable: str) -> str:
    """Where a setting came from: the flag, else its environment variable (never the value)."""
    return f"from {flag}" if flag_value is not None else f"from ${variable}"


def _credentials(args: argparse.Namespace, settings: ArthurSettings) -> str:
    if settings.api_key is not None:
        used = f"API key ({_source(args.api_key, '--api-key', ARTHUR_API_KEY)})"
        if args.login is not None or os.environ.get(ARTHUR_LOGIN):
            used += "; the login is ignored: an API key wins"
        return used
    return (f"login {settings.login!r} ({_source(args.login, '--login', ARTHUR_LOGIN)}) with a password "
            f"({_source(args.password, '--password', ARTHUR_PASSWORD)})")


def _url_item(report: Report, args: argparse.Namespace, url: str, source: str) -> None:
    """The URL as shown (no secrets), where it came from, and what permits plain http."""
    insecure = ""
    if url.startswith("http://"):
        insecure = f"; plain http permitted {_source(args.allow_insecure, '--allow-insecure', ARTHUR_ALLOW_INSECURE)}"
    report.item("URL", f"{display_url(url)} ({source}{insecure})")


def _configuration(report: Report, args: argparse.Namespace) -> ArthurSettings | None:
    report.section("Configuration")
    try:
        settings = resolve_settings(args)
    except ConfigurationError as exc:
        report.problem(exit_codes.CONFIGURATION, as_flags(str(exc)))
        return None
    _url_item(report, args, settings.url, _source(args.url, "--url", ARTHUR_ENDPOINT_URL))
    report.item("model", f"{settings.model_id} ({_source(args.model_id, '--model-id', ARTHUR_MODEL_ID)})")
    report.item("credentials", _credentials(args, settings))
    if not settings.verify_ssl:
        report.item("TLS", "certificates are NOT verified (VERIFY_SSL=false)")
    if settings.attribute_map:
        report.item("attribute map", f"{', '.join(f'{k}={v}' for k, v in settings.attribute_map.items())} "
                                     f"(${ARTHUR_ATTRIBUTE_MAP})")
    return settings


# -- reaching Arthur ---------------------------------------------------------------------------


class Unreachable(Exception):
    """Arthur could not be reached (connection, DNS, TLS, timeout, 5xx)."""


class SetupRefused(Exception):
    """Arthur answered, and refuses the set-up (credentials, organization, model)."""


def _with_deadline(call: Callable[[], _T], seconds: float, url: str) -> _T:
    """``call()`` on a daemon thread; ``Unreachable`` when it has not returned within ``seconds``.

    The SDK's login and organization lookup send requests without any timeout: a host that drops
    packets would hang the command for minutes.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="otel-arthur-doctor", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise Unreachable(f"no answer from {url} within {seconds:g}s (ARTHUR_TIMEOUT)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _raise_for_status(status: int, what: str, settings: ArthurSettings, detail: str = "") -> None:
    if status < 300:
        return
    if status == HTTPStatus.UNAUTHORIZED:
        kind = "API key" if settings.has_api_key else f"login {settings.login!r}"
        raise SetupRefused(f"Arthur refused the {kind} (401 Unauthorized)" + (f" {what}" if what else ""))
    if status == HTTPStatus.FORBIDDEN:
        raise SetupRefused(f"Arthur forbids {what} (403) for these credentials{detail}: check ARTHUR_ORGANIZATION_ID")
    if status >= 500:
        raise Unreachable(f"Arthur answered {status} {what}{detail}")
    raise SetupRefused(f"Arthur answered {status} {what}{detail}")


class _Found(NamedTuple):
    organization: str
    model: ArthurModel


def _sdk_version() -> str:
    try:
        return importlib.metadata.version("arthurai")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _model_id_types(model_id: str) -> tuple[str, str]:
    """The likelier kind of id first, as the exporter's client tries them."""
    return ("id", "partner_model_id") if is_uuid(model_id) else ("partner_model_id", "id")


def _via_sdk(settings: ArthurSettings) -> _Found:
    """Connect and fetch the model with the arthurai SDK (imported here: about 5 s)."""
    import arthurai  # noqa: F401
    import requests
    from arthurai.common.exceptions import ArthurError, ResponseServerError

    from otel_arthur.onboarding import connect

    # The SDK logs to stdout through its own handlers, and at DEBUG it logs request headers, the
    # API key among them: keep it to warnings, through our handlers.
    logging.getLogger("arthurai").handlers.clear()
    logging.getLogger("arthurai").setLevel(logging.WARNING)
    connection = settings.connection

    def fetch() -> _Found:
        client = connect(connection)
        client.client.timeout = settings.timeout
        if not settings.verify_ssl:
            _never_verify(client.client.session)
        organization = str(client.client.session.headers.get(ORGANIZATION_HEADER))
        for id_type in _model_id_types(settings.model_id):
            response = client.client.get(f"/models/{quote(settings.model_id, safe='')}",
                                         params={"id_type": id_type, "expand": "attributes"},
                                         return_raw_response=True, validate_response_status=False, retries=0)
            if response.status_code == HTTPStatus.NOT_FOUND:
                continue
            _raise_for_status(response.status_code, f"fetching model {settings.model_id!r}", settings)
            return _Found(organization, parse_model(response.json()))
        raise SetupRefused(f"Arthur has no model {settings.model_id!r} (as id or partner_model_id) "
                           f"in organization {organization}")

    try:
        return _with_deadline(fetch, settings.timeout, display_url(settings.url))
    except requests.exceptions.SSLError as exc:
        raise Unreachable(f"TLS with {display_url(settings.url)} failed: {network_reason(exc)}") from None
    except requests.RequestException as exc:
        raise Unreachable(f"cannot connect to {display_url(settings.url)}: {network_reason(exc)}") from None
    except ResponseServerError as exc:
        raise Unreachable(f"Arthur answered {str(exc).splitlines()[0][:200]}") from None
    except ArthurError as exc:
        cause = exc.__cause__
        if isinstance(cause, requests.exceptions.SSLError):
            raise Unreachable(f"TLS with {display_url(settings.url)} failed: {network_reason(cause)}") from None
        if isinstance(cause, requests.RequestException):
            raise Unreachable(f"cannot connect to {display_url(settings.url)}: {network_reason(cause)}") from None
        if str(exc).startswith("Unauthorized"):
            _raise_for_status(HTTPStatus.UNAUTHORIZED, "looking up the organization", settings)
        raise SetupRefused(f"Arthur refused the set-up: {' '.join(str(exc).split())[:300]}") from None


def _never_verify(session: Any) -> None:
    """Make ``verify=False`` stick: requests lets REQUESTS_CA_BUNDLE override a session's ``verify=False``
    (the exporter's client passes ``verify`` per request; the SDK's sessions do not)."""
    merge = session.merge_environment_settings
    session.merge_environment_settings = lambda *args: {**merge(*args), "verify": False}


def _via_native(settings: ArthurSettings) -> _Found:
    """Connect and fetch the model with the exporter's own client."""
    from otel_arthur.clients.http import RetryableError, SetupError
    from otel_arthur.clients.v3 import ArthurClient, AuthenticationError

    client = ArthurClient(settings)
    try:
        organization = client.organization_id
        model = client.get_model(settings.model_id)
    except AuthenticationError:
        _raise_for_status(HTTPStatus.UNAUTHORIZED, "", settings)
        raise
    except RetryableError as exc:  # "GET /users/me: cannot connect to …": the request is noise here
        raise Unreachable(_REQUEST_PREFIX.sub("", str(exc))) from None
    except SetupError as exc:
        raise SetupRefused(str(exc)) from None
    finally:
        client.close()
    return _Found(organization, model)


def _arthur(report: Report, settings: ArthurSettings, client: str) -> ArthurModel | None:
    report.section("Arthur")
    installed = importlib.util.find_spec("arthurai") is not None
    if client == "sdk" and not installed:
        report.problem(exit_codes.CONFIGURATION, "--client sdk: arthurai is not installed "
                                                 "(pip install 'otel-arthur[sdk]'; Python <= 3.11)")
        return None
    use_sdk = client == "sdk" or (client == "auto" and installed)
    report.item("client", f"arthurai {_sdk_version()} (the SDK)" if use_sdk else
                "the exporter's native client" + ("" if installed else " (arthurai is not installed)"))
    try:
        found = _via_sdk(settings) if use_sdk else _via_native(settings)
    except Unreachable as exc:
        report.problem(exit_codes.UNREACHABLE, str(exc))
        return None
    except SetupRefused as exc:
        report.problem(exit_codes.REFUSED, str(exc))
        return None
    source = "configured" if settings.organization_id is not None else "the credentials' own"
    report.item("organization", f"{found.organization} ({source})")
    model = found.model
    count = len(model.attributes)
    report.item("model", f"{model.partner_model_id} (id {model.id}), {count} attribute{'s' if count != 1 else ''}")
    width = max([len(a.name) for a in model.attributes] + [9])
    report.lines.append(f"    {'attribute':<{width}}  {'stage':<16} value type")
    for attribute in model.attributes:
        report.lines.append(f"    {attribute.name:<{width}}  {attribute.stage:<16} {attribute.value_type}")
    return model


# -- binding -----------------------------------------------------------------------------------


def binding_table(binding: Binding, overrides: dict[str, str]) -> Iterator[tuple[str, str]]:
    """``(field, where it lands)`` for every field the bridge produces, in ``FIELDS`` order."""
    for name in FIELDS:
        target = binding.targets.get(name)
        if target is None:
            yield name, "skipped (no attribute)"
            continue
        notes = []
        if name in overrides:
            notes.append(ARTHUR_ATTRIBUTE_MAP)
        if target.value_type != FIELDS[name].value_type:
            notes.append(f"{FIELDS[name].value_type} coerced to {target.value_type}")
        yield name, target.name + (f" ({'; '.join(notes)})" if notes else "")


def _unfilled_inputs(model: ArthurModel, binding: Binding) -> list[ModelAttribute]:
    """Model inputs no field fills: Arthur refuses every inference that lacks one."""
    filled = {target.name for target in binding.targets.values()}
    return [a for a in model.attributes if a.stage == Stage.PIPELINE_INPUT and a.name not in filled]


def _binding(report: Report, model: ArthurModel, settings: ArthurSettings) -> None:
    report.section("Binding (field -> Arthur attribute)")
    try:
        binding = bind(model, settings.attribute_map)
    except BindingError as exc:
        report.problem(exit_codes.REFUSED, str(exc))
        return
    width = max(len(name) for name in FIELDS)
    for name, lands in binding_table(binding, dict(settings.attribute_map)):
        report.lines.append(f"  {name:<{width}} -> {lands}")
    for attribute in _unfilled_inputs(model, binding):
        report.problem(exit_codes.REFUSED,
                       f"model attribute {attribute.name!r} is a PIPELINE_INPUT no field fills: Arthur refuses every "
                       f"record without it (map a field to it with {ARTHUR_ATTRIBUTE_MAP})")


# -- Arthur Engine ------------------------------------------------------------------------------


_TRACE_WRITERS = "ORG-ADMIN, TASK-ADMIN, VALIDATION-USER or CHAT-USER"  # its trace-writing roles


class EngineCheck(NamedTuple):
    """What one read of ``/api/v2/tasks/{id}`` says: the task (when a task id is set and readable)."""

    task: dict[str, Any] | None
    may_read_tasks: bool  # False: the key is accepted, and its role may not read tasks (403)


def check_engine(settings: EngineSettings) -> EngineCheck:
    """Reach the Engine with its key, read-only: ``GET /api/v2/tasks/{task id}``, or a random UUID without one.

    The Engine authenticates before anything else (401), then checks the role (403), then looks
    the task up: 404 naming the id means the key was accepted and there is no such task. A random
    UUID is never a task, so its 404 proves the key without reading any task. ``Unreachable``
    (connection, TLS, timeout, 429, 5xx) or ``SetupRefused`` (key, unknown task, not an Engine).
    """
    from otel_arthur.clients.engine import EngineClient
    from otel_arthur.clients.http import RetryableError, is_uuid

    task_id = settings.task_id if settings.task_id and is_uuid(settings.task_id) else None
    probe = task_id or str(uuid.uuid4())
    client = EngineClient(settings)
    try:
        response = client.task_answer(probe)
    except RetryableError as exc:  # "GET /api/v2/tasks/…: cannot connect to …": the request is noise here
        raise Unreachable(_REQUEST_PREFIX.sub("", str(exc))) from None
    finally:
        client.close()
    status, detail = response.status_code, _engine_detail(response)
    if status == HTTPStatus.OK:
        return EngineCheck(_json_object(response) if task_id else None, True)
    if status == HTTPStatus.UNAUTHORIZED:
        raise SetupRefused(f"Arthur Engine refused the API key (401 Unauthorized{detail})")
    if status == HTTPStatus.FORBIDDEN:  # the exporter too then delivers to the task unchecked
        return EngineCheck(None, False)
    if status == HTTPStatus.NOT_FOUND and probe in detail:  # the Engine's own "Task <id> not found."
        if task_id:
            raise SetupRefused(f"Arthur Engine has no task {task_id} ({ARTHUR_TASK_ID}): it refuses (500) every "
                               "request carrying it")
        return EngineCheck(None, True)
    if status == HTTPStatus.NOT_FOUND:
        raise SetupRefused(f"Arthur Engine answered 404 for {response.path_url}: is "
                           f"{display_url(settings.url)} an Arthur Engine? (check {ARTHUR_ENGINE_URL})")
    if status == HTTPStatus.TOO_MANY_REQUESTS or status >= 500:
        raise Unreachable(f"Arthur Engine answered {status}{detail}")
    raise SetupRefused(f"Arthur Engine answered {status} to GET {response.path_url}{detail}")


def _json_object(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _engine_detail(response: Any) -> str:
    detail = _json_object(response).get("detail")
    return f": {str(detail)[:200]}" if detail else ""


def _engine_source(value: object, flag: str, variable: str, sdk_variable: str) -> str:
    """Where an Engine setting came from: its flag, its variable, else the Arthur SDK's variable."""
    if value is not None:
        return f"from {flag}"
    return f"from ${variable}" if os.environ.get(variable) else f"from ${sdk_variable}"


def _engine(report: Report, args: argparse.Namespace) -> EngineSettings | None:
    from otel_arthur.clients.http import is_uuid

    report.section("Arthur Engine")
    try:
        settings = resolve_engine_settings(args)
    except ConfigurationError as exc:
        report.problem(exit_codes.CONFIGURATION, as_flags(str(exc)))
        return None
    _url_item(report, args, settings.url, _engine_source(args.engine_url, "--engine-url", ARTHUR_ENGINE_URL,
                                                         ARTHUR_BASE_URL))
    report.item("credentials", "API key (" + _engine_source(args.engine_api_key, "--engine-api-key",
                                                            ARTHUR_ENGINE_API_KEY, ARTHUR_API_KEY) + ")")
    if settings.task_id:
        report.item("task id", f"{settings.task_id} ({_source(args.task_id, '--task-id', ARTHUR_TASK_ID)}): "
                               "every span goes to this task")
    else:
        report.item("task id", f"none ({ARTHUR_TASK_ID}): the Engine routes each service's spans by service.name, "
                               "to the task mapped to it, else to one it creates for it")
    spans_source = (_source(args.engine_spans, "--engine-spans", ARTHUR_ENGINE_SPANS)
                    if args.engine_spans is not None or os.environ.get(ARTHUR_ENGINE_SPANS) else "the default")
    report.item("spans", f"{settings.spans} ({spans_source}): " + (
        "AI spans only (LLM calls, chains, agents, tools, retrievers…)" if settings.spans == ENGINE_SPANS_AI
        else "every span"))
    if settings.task_id and not is_uuid(settings.task_id):
        report.problem(exit_codes.CONFIGURATION, f"task id {settings.task_id!r} "
                                                 f"({_source(args.task_id, '--task-id', ARTHUR_TASK_ID)}) is not a "
                                                 "UUID, as every Arthur Engine task id is")
    started = time.monotonic()
    try:
        found = check_engine(settings)
    except Unreachable as exc:
        report.problem(exit_codes.UNREACHABLE, str(exc))
        return settings
    except SetupRefused as exc:
        report.problem(exit_codes.REFUSED, str(exc))
        return settings
    report.item("reached", f"answered in {time.monotonic() - started:.2f}s; the API key is accepted")
    if not found.may_read_tasks:
        unchecked = f"; task {settings.task_id} cannot be checked, the exporter delivers to it unchecked" \
            if settings.task_id else ""
        report.item("role", f"the key may not read tasks (403): the trace ingest does not need to; it needs one of "
                            f"the roles {_TRACE_WRITERS}, which a read-only check cannot confirm{unchecked}")
    if found.task is not None:
        name = found.task.get("name")
        report.item("task", f"{name!r} exists" if name else "exists")
    return settings


# -- privacy -----------------------------------------------------------------------------------


def _privacy(report: Report, settings: ArthurSettings | EngineSettings | None) -> None:
    report.section("Privacy")
    if settings is None:  # the settings stopped at their first problem: check these on their own
        try:
            privacy = resolve_privacy()
        except ConfigurationError as exc:
            if str(exc) not in (p.message for p in report.problems):
                report.problem(exit_codes.CONFIGURATION, str(exc))
            return
    else:
        privacy = {"send_content": settings.send_content, "redact_builtins": settings.redact_builtins,
                   "redact_patterns": settings.redact_patterns}
    content = ContentPolicy.resolve(privacy["send_content"])
    if content.sends_everything:
        text = "prompts and completions are sent"
    else:
        withheld = [name for name, sent in (("prompts", content.send_prompt), ("completions", content.send_completion))
                    if not sent]
        text = f"{' and '.join(withheld)} withheld ({content.reason}); metrics are still sent"
    report.item("content", text)
    redaction = []
    if privacy["redact_builtins"]:
        redaction.append("built-in " + ", ".join(privacy["redact_builtins"]))
    if privacy["redact_patterns"]:
        redaction.append("patterns " + ", ".join(name for name, _ in privacy["redact_patterns"]))
    report.item("redaction", "; ".join(redaction) if redaction else "off")


# -- spool -------------------------------------------------------------------------------------


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _writable(directory: str) -> None:
    """Raise ``OSError`` unless ``directory`` is a directory a file can be created in (root ignores modes: try it)."""
    if not os.path.isdir(directory):
        raise NotADirectoryError(0, "not a directory")
    with tempfile.TemporaryFile(dir=directory, prefix=".otel-arthur-doctor-"):
        pass


def _can_make_directory_in(parent: str) -> None:
    """Raise ``OSError`` unless a directory can be made in ``parent``, as the exporter's ``os.makedirs`` would.

    The probe is removed at once: the spool directory itself is never created here.
    """
    os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".otel-arthur-doctor-"))


def _spool(report: Report, directory: str, destinations: list[str]) -> None:
    """``destinations``: the spool keys of the configured destinations (their latest refusal is shown)."""
    report.section("Spool")
    if not os.path.exists(directory):
        parent = os.path.dirname(os.path.abspath(directory))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            report.problem(exit_codes.SPOOL, f"spool directory {directory} cannot be created: {parent} is not "
                                             "a directory")
            return
        try:
            _can_make_directory_in(parent)
        except OSError as exc:
            report.problem(exit_codes.SPOOL, f"spool directory {directory} cannot be created: making a directory "
                                             f"in {parent} fails: {(exc.strerror or str(exc)).lower()}")
            return
        report.item("directory", f"{directory} (does not exist yet; created at the first export)")
        return
    try:
        _writable(directory)
    except OSError as exc:
        report.problem(exit_codes.SPOOL, f"spool directory {directory} is not usable: "
                                         f"{(exc.strerror or str(exc)).lower()}")
        return
    report.item("directory", f"{directory} (writable)")
    if not os.path.exists(os.path.join(directory, FILE_NAME)):
        report.item("waiting", "nothing (no spool file yet)")
        return
    from otel_arthur.destinations import codec_for

    try:
        spool = Spool(directory, destinations[0] if destinations else "", 1, replace_damaged=False)
    except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError: the exporter would fail alike
        report.problem(exit_codes.SPOOL, f"spool {os.path.join(directory, FILE_NAME)} cannot be opened: {exc}")
        return
    try:
        try:
            spool.check()
        except sqlite3.DatabaseError as exc:
            report.problem(exit_codes.SPOOL, f"spool {spool.path} cannot be used ({exc}): the exporter or serve keeps a "
                                             "copy of it and starts afresh when it next opens it")
            return
        gauges = spool.gauges()
        inventory = spool.inventory()
        latest = spool.dead_letters(destinations=destinations, codec_of=codec_for)[-1:] if destinations else []
    finally:
        spool.close()
    report.item("waiting", f"{gauges.depth} records, oldest {human_age(gauges.oldest_age) if gauges.depth else '-'}"
                           f" ({human_bytes(gauges.bytes)} with dead letters)")
    reasons: dict[str, int] = {}
    for entry in inventory:
        for reason, count in entry.dead_letters.items():
            reasons[reason] = reasons.get(reason, 0) + count
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
    report.item("dead letters", f"{gauges.dead_letters}" + (f" ({by_reason}); list them with "
                                                             "`otel-arthur spool dead-letters`" if by_reason else ""))
    if latest:
        report.item("latest refusal", str(latest[0]["message"])[:200])
    for copy in damaged_copies(directory):
        report.item("damaged copy", f"{copy} (the spool was found damaged and started afresh: its records were "
                                    "not delivered)")
    others = [e for e in inventory if e.destination not in destinations]
    if others and destinations:
        report.item("other models", f"{len(others)} other destinations share this spool")


# -- the command -------------------------------------------------------------------------------


def diagnose(args: argparse.Namespace) -> Report:
    report = Report()
    report.lines.append(f"otel-arthur {__version__} (Python {platform.python_version()})")  # for a bug report
    wants_engine = engine_configured(args.engine_url, v3_url=args.url)
    settings = None
    if v3_configured(args.url) or not wants_engine:  # with neither, the v3 lines say what is missing, as ever
        settings = _configuration(report, args)
        if settings is not None:
            model = _arthur(report, settings, args.client)
            if model is not None:
                _binding(report, model, settings)
    else:
        report.section("Configuration")
        report.item("Arthur (v3)", f"not configured (no --url or ${ARTHUR_ENDPOINT_URL}): records go to Arthur "
                                   "Engine only")
    engine = _engine(report, args) if wants_engine else None
    _privacy(report, settings or engine)
    from otel_arthur.destinations.engine import engine_key
    from otel_arthur.destinations.v3 import destination

    keys = ([destination(settings)] if settings is not None else []) + ([engine_key(engine)] if engine else [])
    configured = settings or engine
    _spool(report, configured.spool_dir if configured is not None else resolve_spool_dir(args.spool_dir), keys)
    return report


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    report = diagnose(args)
    print("\n".join(report.lines))
    print()
    if report.problems:
        print(f"{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''}: records would not all reach "
              f"Arthur (exit code {report.exit_code}).")
    else:
        print(f"All checks passed in {time.monotonic() - started:.1f}s: records would reach Arthur.")
    sys.stdout.flush()
    for problem in report.problems:
        print(f"error: {problem.message}", file=sys.stderr)
    return report.exit_code
