"""``examples/demo.py``: the one command, run as a person runs it, and the Engine's trace trees it prints.

The demo runs as a subprocess with its conversation piped (so scripted), in an environment without
the developer's ``ARTHUR_*`` / ``OTEL_*`` / ``OPENAI_*`` settings. Its tree rendering is also checked on
a real LangChain chain delivered into a local Engine (CHAIN spans over the LLM span), and as a pure
function on hand-made and generated spans.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_openai import ChatOpenAI
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_arthur import ArthurSpanExporter
from otel_arthur.local import engine, openai

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
demo = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(demo)  # type: ignore[union-attr]

RUN_TIMEOUT = 180.0  # seconds: the arthurai import alone takes several
_FOREIGN = ("OTEL_", "ARTHUR_", "OPENAI_", "TRACELOOP_", "OPENINFERENCE_", "VERIFY_SSL")
TRACE_LINE = re.compile(r"trace ([0-9a-f]{32})")


def cells(line: str) -> list[str]:
    """A tree line's cells: columns are two or more spaces apart (a span name may hold one)."""
    return re.split(r" {2,}", line.strip())


def expected_turns() -> list[openai.Completion]:
    """What the local OpenAI answers to each scripted turn, history included (chat.py keeps it)."""
    history: list[dict[str, str]] = []
    answers = []
    for turn in demo.SCRIPT.splitlines()[:-1]:  # the last line is q
        history.append({"role": "user", "content": turn})
        answers.append(openai.complete(history))
        history.append({"role": "assistant", "content": answers[-1].content})
    return answers


@pytest.fixture(scope="module")
def demo_stdout() -> str:
    env = {name: value for name, value in os.environ.items() if not name.startswith(_FOREIGN)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=ROOT, env=env, input="",
                            capture_output=True, text=True, timeout=RUN_TIMEOUT, start_new_session=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_demo_prints_each_engine_trace_as_a_tree_of_llm_spans_with_kind_model_and_tokens(demo_stdout):
    answers = expected_turns()
    assert f"\n{len(answers)} inference(s) in Arthur:" in demo_stdout  # the v3 table, still first
    title = f"\n{len(answers)} span(s) in {len(answers)} trace(s) in Arthur Engine, task '{demo.ENGINE_TASK_NAME}':\n"
    assert title in demo_stdout
    header, *body = demo_stdout.split(title)[1].strip("\n").splitlines()
    assert header.split() == ["span", "kind", "model", "tokens", "p/c/t"]
    assert len(body) == 2 * len(answers)  # a trace line and its one span: chat.py calls the model directly
    inferences_table = demo_stdout.split(title)[0].splitlines()
    for trace_line, span_line, answer in zip(body[::2], body[1::2], answers):
        trace_id = TRACE_LINE.fullmatch(trace_line).group(1)
        name, kind, model, tokens = cells(span_line)
        assert span_line.startswith("  ChatOpenAI.chat ")  # indented under its trace
        assert (name, kind) == ("ChatOpenAI.chat", "LLM")
        assert model.startswith("gpt-")
        assert tokens == f"{answer.prompt_tokens}/{answer.completion_tokens}/{answer.total_tokens}"
        # the same call as a v3 row: that row's trace id and tokens
        [row] = [line for line in inferences_table if line.endswith(f"  {trace_id[:11]}…")]
        assert f"  {tokens}  " in row


@pytest.fixture
def local_engine(tmp_path):
    with engine.running(tmp_path / "engine.sqlite3") as server:
        yield server


def test_a_chain_shows_its_llm_span_under_its_chain_spans(openllmetry_provider, add_processors, openai_server,
                                                           local_engine, arthur_env):
    exporter = ArthurSpanExporter(engine_url=local_engine.url, engine_api_key=local_engine.api_key,
                                  allow_insecure=True)
    processor = BatchSpanProcessor(exporter)
    add_processors(processor)
    llm = ChatOpenAI(base_url=openai_server.url + "/v1", api_key="unused", model="gpt-4o-mini", max_retries=0)
    chain = ChatPromptTemplate.from_messages([MessagesPlaceholder("history")]) | llm
    chain.invoke({"history": [("human", "What is a span?")]})
    assert processor.force_flush() and exporter.force_flush()
    answer = openai.complete([{"role": "user", "content": "What is a span?"}])

    [(trace_id, tree)] = demo.trace_trees(local_engine.spans())
    _, trace_line, chain_line, prompt_line, llm_line = demo.span_tree_lines(local_engine.spans())
    assert trace_line == f"trace {trace_id}"
    # The workflow, then its two steps one level deeper: the prompt template (OpenLLMetry names it
    # "execute_task ChatPromptTemplate"), then the model call.
    assert chain_line.startswith("  RunnableSequence") and cells(chain_line) == ["RunnableSequence.workflow", "CHAIN"]
    assert prompt_line.startswith("    ") and cells(prompt_line)[1:] == ["CHAIN"]
    assert "ChatPromptTemplate" in cells(prompt_line)[0]
    name, kind, model, tokens = cells(llm_line)
    assert llm_line.startswith("    ChatOpenAI") and (name, kind) == ("ChatOpenAI.chat", "LLM")
    assert model.startswith("gpt-4o-mini")
    assert tokens == f"{answer.prompt_tokens}/{answer.completion_tokens}/{answer.total_tokens}"
    assert [depth for depth, _ in tree] == [0, 1, 1]


def span(span_id: str, parent: str | None, start: int, trace_id: str = "t1", **attributes: Any) -> dict[str, Any]:
    return {"trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "name": f"span-{span_id}",
            "start_time_unix_nano": start, "attributes": attributes}


def shape(spans: list[dict[str, Any]]) -> list[tuple[str, list[tuple[int, str]]]]:
    return [(trace_id, [(depth, s["span_id"]) for depth, s in tree]) for trace_id, tree in demo.trace_trees(spans)]


def test_children_follow_their_parent_by_start_time_whatever_the_arrival_order():
    # Children end, and so arrive, before their parent; traces are ordered by their first span.
    spans = [span("c2", "root", 30), span("c1", "root", 20), span("g1", "c2", 35), span("late", None, 50, "t2"),
             span("root", None, 10), span("early", None, 5, "t0")]
    assert shape(spans) == [("t0", [(0, "early")]),
                            ("t1", [(0, "root"), (1, "c1"), (1, "c2"), (2, "g1")]),
                            ("t2", [(0, "late")])]


def test_a_span_whose_parent_was_not_stored_is_a_root_not_lost():
    # engine_spans=ai leaves a framework's non-AI parent out; its AI children still show.
    spans = [span("llm", "http-handler", 20), span("chain", None, 10)]
    assert shape(spans) == [("t1", [(0, "chain"), (0, "llm")])]


def test_resent_and_cyclic_spans_each_show_once():
    # At-least-once delivery can store a span twice; ids from the wire may even point in a circle.
    spans = [span("p", None, 10), span("p", None, 10), span("c", "p", 20), span("a", "b", 30), span("b", "a", 40)]
    assert shape(spans) == [("t1", [(0, "p"), (1, "c"), (0, "p"), (0, "a"), (1, "b")])]


def test_token_counts_show_only_where_the_span_has_them():
    spans = [span("chain", None, 10, **{"openinference.span.kind": "CHAIN"}),
             span("llm", "chain", 20, **{"openinference.span.kind": "LLM", "llm.model_name": "m",
                                         "llm.token_count.prompt": 3, "llm.token_count.total": 3})]
    _, _, chain_line, llm_line = demo.span_tree_lines(spans)
    assert cells(chain_line) == ["span-chain", "CHAIN"]
    assert cells(llm_line) == ["span-llm", "LLM", "m", "3/-/3"]


span_ids = st.sampled_from([f"s{n}" for n in range(6)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(span_ids, st.none() | span_ids, st.integers(0, 5), st.sampled_from(["t1", "t2"])),
                max_size=12))
def test_every_span_shows_exactly_once_and_below_its_parent(rows):
    spans = [span(span_id, parent, start, trace_id) for span_id, parent, start, trace_id in rows]
    trees = demo.trace_trees(spans)
    shown = [s for _, tree in trees for _, s in tree]
    assert sorted(map(id, shown)) == sorted(map(id, spans))
    for _, tree in trees:
        for position, (depth, child) in enumerate(tree):
            if depth:  # the nearest shallower span above it is its parent
                parent_depth, parent = next(entry for entry in reversed(tree[:position]) if entry[0] < depth)
                assert parent_depth == depth - 1 and parent["span_id"] == child["parent_span_id"]
