"""Zero-code set-up: the ``arthur`` distro and configurator that ``opentelemetry-instrument`` runs.

    OTEL_TRACES_EXPORTER=arthur opentelemetry-instrument python app.py

How ``opentelemetry-instrument`` chooses (opentelemetry-instrumentation 0.66b2,
``auto_instrumentation/_load.py``): it configures the distro named by ``OTEL_PYTHON_DISTRO``, else
the *first* ``opentelemetry_distro`` entry point; then runs the configurator named by
``OTEL_PYTHON_CONFIGURATOR``, else the first ``opentelemetry_configurator`` one, and logs a warning
for each other configurator. "First" is ``importlib.metadata`` order: ``sys.path`` order, then the
order the file system lists ``site-packages`` in, so it depends on the machine, not on names. With
``opentelemetry-distro`` installed too, either may win; ``OTEL_PYTHON_DISTRO=arthur
OTEL_PYTHON_CONFIGURATOR=arthur`` makes ours certain (the ``otel-arthur[langchain]`` extra does not
install ``opentelemetry-distro``, so there is then nothing to choose between).

What the ``arthur`` pair fixes, each measured with ``opentelemetry-distro`` 0.66b2 / SDK 1.45.2:

- ``opentelemetry-distro`` defaults ``OTEL_METRICS_EXPORTER`` and ``OTEL_LOGS_EXPORTER`` to
  ``otlp`` and the OTLP protocol to ``grpc``. The SDK imports every named exporter before building
  anything, so one that is not installed (with only the http OTLP exporter, ``otlp`` still means
  ``otlp_proto_grpc``) raises, the set-up is abandoned and the tracer provider stays a proxy: not
  one span, behind a traceback the application's own logging may hide. ``ArthurDistro`` defaults
  traces to ``arthur`` and metrics and logs to ``none`` (only where the user set nothing), and
  ``otlp`` to the OTLP exporter that is installed. ``ArthurConfigurator`` drops an exporter name
  that is not installed with one warning, so Arthur still gets the spans.
- OpenLLMetry and OpenInference both register the instrumentor name ``langchain``, and
  ``opentelemetry-instrument`` loads *every* entry point, so with both installed LangChain would be
  patched twice and each LLM call would reach Arthur twice. ``ArthurDistro`` activates one
  instrumentor per name: the first of ``ARTHUR_PREFERRED_INSTRUMENTORS`` (families ``openllmetry``,
  ``openinference``, or distribution names, comma-separated), then OpenLLMetry, then OpenInference,
  then the others by distribution name; one INFO line says which. OpenLLMetry first because it is
  what the ``langchain`` extra installs, so adding OpenInference (for Phoenix, say) leaves the
  records the docs describe as they were. A distribution named in
  ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` is never activated (the stock loader only matches
  entry-point names there), nor is one whose dependencies conflict.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts
from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.instrumentation.environment_variables import (
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS,
)
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_LOGS_PROTOCOL,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)

from otel_arthur.config import ARTHUR_PREFERRED_INSTRUMENTORS

__all__ = ["ArthurConfigurator", "ArthurDistro"]

_logger = logging.getLogger(__name__)

EXPORTER_NAME = "arthur"  # our entry point in opentelemetry_traces_exporter
_NONE = "none"
_OTLP = "otlp"
_GRPC, _HTTP = "grpc", "http/protobuf"
# What the SDK looks up for "otlp", by protocol (sdk/_configuration ``_EXPORTER_BY_OTLP_PROTOCOL``);
# with no protocol set it means grpc.
_OTLP_BY_PROTOCOL = {_GRPC: "otlp_proto_grpc", _HTTP: "otlp_proto_http"}
_SDK_DEFAULT_PROTOCOL = _GRPC
_INSTRUMENTORS = "opentelemetry_instrumentor"
OPENLLMETRY, OPENINFERENCE = "openllmetry", "openinference"
_DEFAULT_PREFERENCE = (OPENLLMETRY, OPENINFERENCE)
_OPENLLMETRY_DEPENDENCY = "opentelemetry-semantic-conventions-ai"  # every OpenLLMetry instrumentor needs it
_PACKAGE_BY_EXPORTER = {
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
}


@dataclass(frozen=True)
class _Signal:
    exporter_env: str
    group: str
    protocol_env: str


_TRACES = _Signal(OTEL_TRACES_EXPORTER, "opentelemetry_traces_exporter", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
_SIGNALS = (
    _TRACES,
    _Signal(OTEL_METRICS_EXPORTER, "opentelemetry_metrics_exporter", OTEL_EXPORTER_OTLP_METRICS_PROTOCOL),
    _Signal(OTEL_LOGS_EXPORTER, "opentelemetry_logs_exporter", OTEL_EXPORTER_OTLP_LOGS_PROTOCOL),
)
# Only what the user left unset: an explicit value, even "otlp", is theirs.
_DEFAULT_EXPORTERS = {OTEL_TRACES_EXPORTER: EXPORTER_NAME, OTEL_METRICS_EXPORTER: _NONE, OTEL_LOGS_EXPORTER: _NONE}


@cache
def _installed(group: str) -> frozenset[str]:
    return frozenset(ep.name for ep in entry_points(group=group))


def _normalize(distribution: str) -> str:
    """PEP 503 form, so ``OpenInference_Instrumentation.LangChain`` names the same distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _otlp_entry_point(signal: _Signal) -> str | None:
    """The entry point the SDK will look up for ``otlp``; None for a protocol it does not support."""
    protocol = os.environ.get(signal.protocol_env) or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
    return _OTLP_BY_PROTOCOL.get((protocol or _SDK_DEFAULT_PROTOCOL).strip())


def _missing_reason(name: str, signal: _Signal) -> str | None:
    """Why the SDK would fail to load exporter ``name`` for ``signal``; None when it is installed."""
    entry_point = _otlp_entry_point(signal) if name == _OTLP else name
    if entry_point is None:
        return "its OTLP protocol is neither grpc nor http/protobuf"
    if entry_point in _installed(signal.group):
        return None
    package = _PACKAGE_BY_EXPORTER.get(entry_point)
    return f"{entry_point!r} is not installed" + (f" (pip install {package})" if package else "")


def _drop_missing_exporters(signal: _Signal) -> None:
    """Keep only the exporters that will load: one missing must not cost the others their spans."""
    raw = os.environ.get(signal.exporter_env)
    if not raw or raw.strip().lower() == _NONE:
        return
    names = [name.strip() for name in raw.split(",") if name.strip()]
    kept = []
    for name in names:
        reason = _missing_reason(name, signal)
        if reason is None:
            kept.append(name)
        else:
            _logger.warning("Ignoring exporter %r in %s: %s", name, signal.exporter_env, reason)
    if kept != names:
        # The SDK reads the variable itself (``_initialize_components``), so the fix goes there.
        os.environ[signal.exporter_env] = ",".join(kept) or _NONE


def _disabled_distributions() -> frozenset[str]:
    raw = os.environ.get(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, "")
    return frozenset(_normalize(item.strip()) for item in raw.split(",") if item.strip())


def _distribution_of(entry_point: EntryPoint) -> str | None:
    dist = getattr(entry_point, "dist", None)  # set by importlib.metadata on Python >= 3.10
    return _normalize(dist.name) if dist is not None else None


def _identity(entry_point: EntryPoint) -> str:
    """The distribution that registered it, else its ``module:attribute``."""
    return _distribution_of(entry_point) or entry_point.value


def _family(entry_point: EntryPoint) -> str | None:
    """``openinference``, ``openllmetry`` or None, from the distribution's name and dependencies."""
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None
    if _normalize(dist.name).startswith(OPENINFERENCE + "-"):
        return OPENINFERENCE
    requires = getattr(dist, "requires", None) or ()
    return OPENLLMETRY if any(_normalize(r).startswith(_OPENLLMETRY_DEPENDENCY) for r in requires) else None


def _preference() -> list[str]:
    """``ARTHUR_PREFERRED_INSTRUMENTORS`` (families or distribution names), then the default order."""
    named = [_normalize(item.strip()) for item in os.environ.get(ARTHUR_PREFERRED_INSTRUMENTORS, "").split(",")
             if item.strip()]
    return named + [family for family in _DEFAULT_PREFERENCE if family not in named]


def _rank(entry_point: EntryPoint, preference: Sequence[str]) -> tuple[int, str]:
    identity, family = _identity(entry_point), _family(entry_point)
    rank = next((i for i, wanted in enumerate(preference) if wanted in (identity, family)), len(preference))
    return rank, identity


def _loadable_instrumentors(name: str) -> list[EntryPoint]:
    """The instrumentors ``opentelemetry-instrument`` will offer under ``name`` (it skips conflicting ones)."""
    return [ep for ep in entry_points(group=_INSTRUMENTORS, name=name)
            if ep.dist is None or get_dist_dependency_conflicts(ep.dist) is None]


class ArthurDistro(BaseDistro):
    """Defaults for Arthur (traces to ``arthur``, nothing else exported) and instrumentor choice."""

    def __init__(self, instrumentors: Callable[[str], list[EntryPoint]] = _loadable_instrumentors) -> None:
        """``instrumentors(name)``: the entry points registered under an instrumentor name (tests pass fakes)."""
        self._instrumentors = instrumentors
        self._chosen: dict[str, EntryPoint] = {}  # instrumentor name -> the one activated

    def _configure(self, **kwargs: Any) -> None:
        for name, value in _DEFAULT_EXPORTERS.items():
            os.environ.setdefault(name, value)
        # "otlp" in a fan-out means the OTLP exporter that is installed; the SDK assumes grpc.
        traces_exporters = _installed(_TRACES.group)
        if (OTEL_EXPORTER_OTLP_PROTOCOL not in os.environ and _OTLP_BY_PROTOCOL[_GRPC] not in traces_exporters
                and _OTLP_BY_PROTOCOL[_HTTP] in traces_exporters):
            os.environ[OTEL_EXPORTER_OTLP_PROTOCOL] = _HTTP

    def load_instrumentor(self, entry_point: EntryPoint, **kwargs: Any) -> None:
        distribution = _distribution_of(entry_point)
        if distribution is not None and distribution in _disabled_distributions():
            _logger.debug("Instrumentation %s from %s disabled by %s", entry_point.name, distribution,
                          OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)
            return
        chosen = self._chosen.get(entry_point.name) or self._choose(entry_point)
        if _identity(chosen) != _identity(entry_point):
            _logger.debug("Instrumentation %s from %s not activated: %s is", entry_point.name,
                          _identity(entry_point), _identity(chosen))
            return
        super().load_instrumentor(entry_point, **kwargs)

    def _choose(self, entry_point: EntryPoint) -> EntryPoint:
        """The one instrumentor of this name to activate, decided when the loader offers the first."""
        disabled = _disabled_distributions()
        offered = [ep for ep in self._instrumentors(entry_point.name) if _distribution_of(ep) not in disabled]
        if _identity(entry_point) not in {_identity(ep) for ep in offered}:
            offered.append(entry_point)
        preference = _preference()
        offered.sort(key=lambda ep: _rank(ep, preference))
        chosen = self._chosen[entry_point.name] = offered[0]
        if len(offered) > 1:
            _logger.info("Instrumentors named %r: activating %s, not %s (set %s to choose)", entry_point.name,
                         _identity(chosen), ", ".join(_identity(ep) for ep in offered[1:]),
                         ARTHUR_PREFERRED_INSTRUMENTORS)
        return chosen


class ArthurConfigurator(_OTelSDKConfigurator):
    """The SDK's own set-up (``OTEL_*``), minus exporters that are not installed."""

    def _configure(self, **kwargs: Any) -> None:
        for signal in _SIGNALS:
            _drop_missing_exporters(signal)
        super()._configure(**kwargs)
