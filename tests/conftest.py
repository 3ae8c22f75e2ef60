"""Fixtures shared by the test modules. Keep each small and generic; module-specific ones live with their tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from arthurmodel import create_model_over_http

from otel_arthur.local import arthur, engine


@pytest.fixture(autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test, and every process it starts, spools under a fresh state directory, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def arthur_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without the developer's ``ARTHUR_*`` / ``VERIFY_SSL``, restored afterwards.

    The arthurai SDK reads those variables whenever an argument is missing, and sets
    ``ARTHUR_LAST_MODEL_ID`` itself; both are undone when the test ends.
    """
    for name in list(os.environ):
        if name.startswith("ARTHUR_") or name == "VERIFY_SSL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("ARTHUR_LAST_MODEL_ID", "")  # recorded as unset, so removed at teardown
    monkeypatch.delenv("ARTHUR_LAST_MODEL_ID")
    return monkeypatch


@pytest.fixture(scope="module")
def local_arthur(tmp_path_factory: pytest.TempPathFactory) -> Iterator[arthur.RunningLocalArthur]:
    """A local Arthur v3 API over a fresh SQLite file, on a free 127.0.0.1 port; always stopped.

    One per test module, so module-scoped fixtures can use it and tests share it: give each test
    its own model (a unique partner_model_id) and read back per model. Yields ``.url``,
    ``.api_key``, ``.login``, ``.password``, ``.organization_id``, ``.store`` and
    ``.inferences(model_id)`` / ``.stats()``.
    """
    with arthur.running(tmp_path_factory.mktemp("local-arthur") / "arthur.sqlite3") as server:
        yield server


@pytest.fixture
def arthur_with_model(tmp_path: Path) -> Iterator[tuple[arthur.RestartableLocalArthur, str]]:
    """A restartable local Arthur (started) holding a fresh model, and the model's id."""
    db = tmp_path / "arthur.sqlite3"
    with arthur.running(db) as plain:  # onboard before any fault is switched on
        model_id = create_model_over_http(plain)
    server = arthur.RestartableLocalArthur(db)
    server.start()
    try:
        yield server, model_id
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[engine.RunningLocalEngine]:
    """A local Arthur Engine over a fresh SQLite file, on a free 127.0.0.1 port; always stopped. One per
    test module, shared by its tests: give each test its own service or task."""
    with engine.running(tmp_path_factory.mktemp("local-engine") / "engine.sqlite3") as server:
        yield server


@pytest.fixture
def new_model(local_arthur: arthur.RunningLocalArthur) -> Callable[..., str]:
    """``new_model(partner_model_id=None)``: a fresh model on the module's local Arthur; its id."""
    return lambda partner_model_id=None: create_model_over_http(local_arthur, partner_model_id)


@pytest.fixture(scope="session")
def openllmetry_provider():
    """One tracer provider with LangChain instrumented by OpenLLMetry, for the whole session.

    OpenLLMetry cannot instrument again after ``uninstrument()`` in the same process (measured:
    the second time no spans appear), so tests add span processors to this provider instead and
    shut them down when done (a shut-down processor ignores later spans).
    """
    from opentelemetry.instrumentation.langchain import LangchainInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": "e2e-chat"}))
    instrumentor = LangchainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


@pytest.fixture
def add_processors(openllmetry_provider):
    """``add_processors(*processors)`` attaches processors to the instrumented provider for this test only."""
    added = []

    def add(*processors):
        for processor in processors:
            openllmetry_provider.add_span_processor(processor)
            added.append(processor)

    try:
        yield add
    finally:
        for processor in added:
            processor.shutdown()


@pytest.fixture(scope="module")
def openai_server():
    """The local OpenAI-compatible endpoint on a free 127.0.0.1 port; always stopped."""
    from otel_arthur.local import openai
    from otel_arthur.local.runner import BackgroundServer

    with BackgroundServer(openai.create_app()) as server:
        yield server


@pytest.fixture(scope="module")
def sdk_client(local_arthur):
    """The real arthurai SDK logged into this module's local Arthur (the import costs ~5 s, once)."""
    from arthurai import ArthurAI

    return ArthurAI(url=local_arthur.url, access_key=local_arthur.api_key,
                    organization_id=local_arthur.organization_id, allow_insecure=True)


@pytest.fixture(scope="module")
def figures(request):
    """Each test's figures, written to the terminal when the module is done (captured output or not)."""
    collected = {}
    yield collected
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not collected:
        return
    with capture.global_and_fixture_disabled():  # past pytest's capture: shown on every run, not only -s
        reporter.ensure_newline()
        reporter.section(f"{request.module.__name__} figures", sep="-")
        for name, values in collected.items():
            reporter.write_line(f"{name}: " + ", ".join(f"{key}={value}" for key, value in values.items()))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Builds the Collector before the first test when a collected test needs it, so that a first build
    (about 6 minutes on 2 cores) is not counted against one test's timeout; later runs find it built."""
    if any("collector_binary" in getattr(item, "fixturenames", ()) for item in session.items):
        from collector import go_command, run_build_script

        if go_command() is not None:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line("building the OpenTelemetry Collector (collector-config/build-collector) ...")
            run_build_script()


@pytest.fixture(scope="session")
def collector_binary() -> Path:
    """The real OpenTelemetry Collector, built once per run by collector-config/build-collector (reused
    while its inputs are unchanged); skips loudly without Go, fails instead with OTEL_ARTHUR_REQUIRE_COLLECTOR=1."""
    from collector import build_collector

    return build_collector()
