"""The ``arthur`` distro and configurator, in process: defaults, dropped exporters, instrumentor choice.

The zero-code runs themselves (``opentelemetry-instrument`` in a subprocess) are in test_zero_code.py.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
from opentelemetry.sdk._configuration import _get_exporter_entry_point

from otel_arthur import distro
from otel_arthur.distro import ArthurDistro

_VARIABLES = (
    "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``OTEL_*`` the distro reads; whatever the code under test sets is undone afterwards."""
    for name in _VARIABLES:
        monkeypatch.setenv(name, "")  # recorded, so removed or restored at teardown
        monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_send_traces_to_arthur_and_nothing_else(otel_env):
    ArthurDistro().configure()
    assert os.environ["OTEL_TRACES_EXPORTER"] == "arthur"
    assert os.environ["OTEL_METRICS_EXPORTER"] == "none"
    assert os.environ["OTEL_LOGS_EXPORTER"] == "none"


def test_defaults_never_override_the_user(otel_env):
    for name, value in (("OTEL_TRACES_EXPORTER", "console"), ("OTEL_METRICS_EXPORTER", "otlp"),
                        ("OTEL_LOGS_EXPORTER", "console"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")):
        otel_env.setenv(name, value)
    ArthurDistro().configure()
    assert [os.environ[name] for name in _VARIABLES[:4]] == ["console", "otlp", "console", "grpc"]


def test_otlp_means_the_installed_otlp_exporter(otel_env):
    installed = distro._installed("opentelemetry_traces_exporter")
    ArthurDistro().configure()
    if installed & {"otlp_proto_grpc", "otlp_proto_http"}:
        assert distro._missing_reason("otlp", distro._TRACES) is None
    if "otlp_proto_grpc" not in installed and "otlp_proto_http" in installed:  # the dev environment
        assert os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"  # the SDK alone would say grpc


@pytest.mark.parametrize("generic, traces", [(None, None), ("grpc", None), ("http/protobuf", None),
                                             ("grpc", "http/protobuf"), (None, "grpc")])
def test_otlp_resolution_matches_the_sdk(otel_env, generic, traces):
    if generic:
        otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", generic)
    if traces:
        otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", traces)
    assert distro._otlp_entry_point(distro._TRACES) == _get_exporter_entry_point("otlp", "traces")


def test_missing_exporters_are_dropped_with_one_warning_each(otel_env, caplog):
    # As the zero-code extra installs it: the OTLP exporter over http only (this environment has gRPC's too).
    installed = distro._installed
    otel_env.setattr(distro, "_installed", lambda group: installed(group) - {"otlp_proto_grpc"})
    otel_env.setenv("OTEL_TRACES_EXPORTER", " arthur , otlp,console,nosuch ")
    otel_env.setenv("OTEL_METRICS_EXPORTER", "otlp")
    otel_env.setenv("OTEL_LOGS_EXPORTER", "none")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")  # what opentelemetry-distro sets
    with caplog.at_level(logging.WARNING, logger="otel_arthur.distro"):
        for signal in distro._SIGNALS:
            distro._drop_missing_exporters(signal)
    assert os.environ["OTEL_TRACES_EXPORTER"] == "arthur,console"
    assert os.environ["OTEL_METRICS_EXPORTER"] == "none"
    assert os.environ["OTEL_LOGS_EXPORTER"] == "none"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "pip install opentelemetry-exporter-otlp-proto-grpc" in messages[0] and "'nosuch'" in messages[1]


def test_installed_exporters_are_left_untouched(otel_env):
    otel_env.setenv("OTEL_TRACES_EXPORTER", "arthur, otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    distro._drop_missing_exporters(distro._TRACES)
    assert os.environ["OTEL_TRACES_EXPORTER"] == "arthur, otlp"  # not even re-spelled


def test_unsupported_otlp_protocol_drops_otlp_not_the_whole_set_up(otel_env, caplog):
    otel_env.setenv("OTEL_TRACES_EXPORTER", "arthur,otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    distro._drop_missing_exporters(distro._TRACES)
    assert os.environ["OTEL_TRACES_EXPORTER"] == "arthur"
    assert "neither grpc nor http/protobuf" in caplog.text


class _FakeInstrumentor:
    instrumented: list[dict] = []  # each instrument() call: which distribution, with what arguments


def _entry_point(name: str, distribution: str) -> SimpleNamespace:
    requires = ["opentelemetry-semantic-conventions-ai<0.6.0,>=0.5.1"] if distribution.startswith("opentelemetry") \
        else []  # what marks OpenLLMetry's instrumentors
    loaded = type(distribution, (_FakeInstrumentor,), {"instrument": lambda self, **kwargs: self.instrumented.append(
        {"from": distribution, **kwargs})})
    return SimpleNamespace(name=name, value=f"{distribution}:Instrumentor",
                           dist=SimpleNamespace(name=distribution, requires=requires), load=lambda: loaded)


@pytest.fixture
def fake_instrumentors():
    _FakeInstrumentor.instrumented = []
    return _FakeInstrumentor.instrumented


OPENINFERENCE_LANGCHAIN = _entry_point("langchain", "openinference-instrumentation-langchain")
OPENLLMETRY_LANGCHAIN = _entry_point("langchain", "opentelemetry_instrumentation_langchain")
FAKES = {"langchain": [OPENINFERENCE_LANGCHAIN, OPENLLMETRY_LANGCHAIN],
         "openai": [_entry_point("openai", "opentelemetry-instrumentation-openai")]}


def load_all(chosen: ArthurDistro) -> None:
    """As ``opentelemetry-instrument`` does: every entry point in turn, OpenInference's first here."""
    chosen.load_instrumentor(OPENINFERENCE_LANGCHAIN, skip_dep_check=True)
    chosen.load_instrumentor(OPENLLMETRY_LANGCHAIN)
    chosen.load_instrumentor(FAKES["openai"][0])


def test_two_instrumentors_of_one_name_one_is_activated_openllmetry_first_with_one_info_line(
        otel_env, fake_instrumentors, caplog):
    with caplog.at_level(logging.INFO, logger="otel_arthur.distro"):
        load_all(ArthurDistro(instrumentors=FAKES.__getitem__))
    assert fake_instrumentors == [{"from": "opentelemetry_instrumentation_langchain"},  # arguments passed through
                                  {"from": "opentelemetry-instrumentation-openai"}]
    [line] = caplog.records
    assert line.levelno == logging.INFO
    assert line.getMessage() == ("Instrumentors named 'langchain': activating opentelemetry-instrumentation-langchain,"
                                 " not openinference-instrumentation-langchain (set ARTHUR_PREFERRED_INSTRUMENTORS"
                                 " to choose)")


@pytest.mark.parametrize("preferred", ["openinference", " OpenInference_Instrumentation.LangChain ,openllmetry"])
def test_the_preference_can_be_named_by_family_or_distribution(otel_env, fake_instrumentors, preferred):
    otel_env.setenv("ARTHUR_PREFERRED_INSTRUMENTORS", preferred)
    load_all(ArthurDistro(instrumentors=FAKES.__getitem__))
    assert fake_instrumentors == [{"from": "openinference-instrumentation-langchain", "skip_dep_check": True},
                                  {"from": "opentelemetry-instrumentation-openai"}]


def test_a_disabled_distribution_is_never_the_one_chosen(otel_env, fake_instrumentors, caplog):
    otel_env.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "opentelemetry-instrumentation-langchain")
    with caplog.at_level(logging.INFO, logger="otel_arthur.distro"):
        load_all(ArthurDistro(instrumentors=FAKES.__getitem__))
    assert [call["from"] for call in fake_instrumentors] == ["openinference-instrumentation-langchain",
                                                             "opentelemetry-instrumentation-openai"]
    assert not caplog.records  # nothing to choose between


def test_the_installed_instrumentors_are_found_with_their_families():
    langchain = {distro._identity(ep): distro._family(ep) for ep in distro._loadable_instrumentors("langchain")}
    assert langchain == {"opentelemetry-instrumentation-langchain": "openllmetry",
                         "openinference-instrumentation-langchain": "openinference"}


def test_a_distribution_name_disables_just_that_instrumentor(otel_env, fake_instrumentors, caplog):
    otel_env.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "requests, OpenInference_Instrumentation.LangChain")
    chosen = ArthurDistro()
    with caplog.at_level(logging.WARNING, logger="otel_arthur.distro"):
        chosen.load_instrumentor(_entry_point("langchain", "openinference-instrumentation-langchain"))
        chosen.load_instrumentor(_entry_point("langchain", "opentelemetry-instrumentation-langchain"))
    assert len(fake_instrumentors) == 1
    assert not caplog.records
