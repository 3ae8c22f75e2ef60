"""The main job on embedded defaults, no keys needed: the chat example, traced into a local Arthur and Engine.

Starts the bundled local Arthur, local Arthur Engine and OpenAI-compatible endpoints on free ports,
onboards a model with ``create-model`` (the real arthurai SDK) and creates an Engine task, runs
``examples/chat.py`` configured by environment only (a scripted conversation, or yours when on a
terminal), then prints the inferences that arrived in Arthur and the Engine's view: each trace as
an indented tree of its spans with OpenInference kind, model and tokens.

    uv run --frozen python examples/demo.py
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from openinference.semconv.trace import SpanAttributes

from otel_arthur.local import arthur, engine, openai
from otel_arthur.local.runner import BackgroundServer
from otel_arthur.onboarding import create_model

CHAT = Path(__file__).with_name("chat.py")
PARTNER_MODEL_ID = "otel-arthur-demo-chat"
ENGINE_TASK_NAME = "otel-arthur demo chat"
SCRIPT = "What is a callback handler?\nWhat do I need to do to get the most out of it?\nq\n"

_logger = logging.getLogger("demo")


def onboard(local: arthur.RunningLocalArthur) -> str:
    _logger.info("Onboarding model %r with the arthurai SDK (its import takes a few seconds)", PARTNER_MODEL_ID)
    from arthurai import ArthurAI

    client = ArthurAI(url=local.url, access_key=local.api_key, organization_id=local.organization_id,
                      allow_insecure=True)
    return create_model(client, PARTNER_MODEL_ID, "otel-arthur demo chat")


def run_chat(local: arthur.RunningLocalArthur, local_engine: engine.RunningLocalEngine, task_id: str,
             openai_url: str, model_id: str, spool_dir: Path) -> None:
    env = os.environ | {
        "ARTHUR_ENDPOINT_URL": local.url,
        "ARTHUR_API_KEY": local.api_key,
        "ARTHUR_MODEL_ID": model_id,
        "ARTHUR_ENGINE_URL": local_engine.url,
        "ARTHUR_ENGINE_API_KEY": local_engine.api_key,
        "ARTHUR_TASK_ID": task_id,
        "ARTHUR_ALLOW_INSECURE": "true",  # both local stand-ins speak plain http
        "OPENAI_BASE_URL": openai_url + "/v1",
        "OPENAI_API_KEY": "local-no-key-needed",
        "OTEL_SERVICE_NAME": "demo-chat",
        "ARTHUR_SPOOL_DIR": str(spool_dir),  # the demo's records wait here, not in your state directory
    }
    interactive = sys.stdin.isatty()
    _logger.info("Running %s %s", CHAT.name, "interactively (q quits)" if interactive else "on a scripted conversation")
    subprocess.run([sys.executable, str(CHAT)], env=env, check=True,
                   input=None if interactive else SCRIPT, text=True)


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value).replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_inferences(rows: list[dict[str, Any]]) -> None:
    columns = (("#", 2), ("prompt (last 40 chars)", 40), ("completion", 36), ("tokens p/c/t", 12),
               ("seconds", 7), ("finish", 6), ("trace_id", 12))
    print(f"\n{len(rows)} inference(s) in Arthur:")
    print("  ".join(name.ljust(width) for name, width in columns))
    for number, row in enumerate(rows, 1):
        data = row["inference_data"]
        tokens = "/".join(str(data.get(k, "-")) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
        values = (number, "…" + str(data.get("prompt", ""))[-39:], data.get("completion"), tokens,
                  f"{data.get('duration', 0):.3f}", data.get("finish_reason"), data.get("trace_id"))
        print("  ".join(_cell(v, w).ljust(w) for v, (_, w) in zip(values, columns)))


def _span_start(span: Mapping[str, Any]) -> tuple[int, str]:
    return span["start_time_unix_nano"], span["span_id"]


def _span_tree(spans: list[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """One trace's spans as (depth, span) in tree order: children under their parent, siblings by start time."""
    ordered = sorted(spans, key=_span_start)
    span_ids = {span["span_id"] for span in ordered}
    children: dict[str, list[int]] = {}
    roots: list[int] = []
    for index, span in enumerate(ordered):
        parent = span["parent_span_id"]
        if parent in span_ids:
            children.setdefault(parent, []).append(index)
        else:  # a root, or its parent was never stored (not an AI span, or not delivered): shown, not lost
            roots.append(index)
    tree: list[tuple[int, Mapping[str, Any]]] = []
    shown: set[int] = set()  # indices, not ids: a span resent by at-least-once delivery is stored, and shown, twice
    # After the roots, every span in start order: spans whose parents form a cycle still show, once each.
    for start in roots + list(range(len(ordered))):
        stack = [(0, start)]
        while stack:
            depth, index = stack.pop()
            if index in shown:
                continue
            shown.add(index)
            tree.append((depth, ordered[index]))
            stack.extend((depth + 1, child) for child in reversed(children.get(ordered[index]["span_id"], [])))
    return tree


def trace_trees(spans: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[tuple[int, Mapping[str, Any]]]]]:
    """Spans as (trace_id, tree) per trace, the earliest trace first; every span appears exactly once."""
    by_trace: dict[str, list[Mapping[str, Any]]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    ordered = sorted(by_trace.items(), key=lambda item: min(_span_start(span) for span in item[1]))
    return [(trace_id, _span_tree(members)) for trace_id, members in ordered]


_TOKEN_COUNTS = (SpanAttributes.LLM_TOKEN_COUNT_PROMPT, SpanAttributes.LLM_TOKEN_COUNT_COMPLETION,
                 SpanAttributes.LLM_TOKEN_COUNT_TOTAL)
_SPAN_COLUMNS = (("span", 44), ("kind", 9), ("model", 24), ("tokens p/c/t", 12))


def _token_counts(attributes: Mapping[str, Any]) -> str | None:
    """``prompt/completion/total``, ``-`` for a missing one; None for a span without any (a CHAIN)."""
    counts = [attributes.get(key) for key in _TOKEN_COUNTS]
    if all(count is None for count in counts):
        return None
    return "/".join("-" if count is None else str(count) for count in counts)


def span_tree_lines(spans: Iterable[Mapping[str, Any]]) -> list[str]:
    """The Engine's view as text: a column header, then per trace its id and its spans indented by depth."""
    lines = ["  ".join(name.ljust(width) for name, width in _SPAN_COLUMNS).rstrip()]
    for trace_id, tree in trace_trees(spans):
        lines.append(f"trace {trace_id}")
        for depth, span in tree:
            attributes = span["attributes"]
            values = ("  " * (depth + 1) + span["name"], attributes.get(SpanAttributes.OPENINFERENCE_SPAN_KIND),
                      attributes.get(SpanAttributes.LLM_MODEL_NAME), _token_counts(attributes))
            lines.append("  ".join(_cell(v, w).ljust(w) for v, (_, w) in zip(values, _SPAN_COLUMNS)).rstrip())
    return lines


def print_engine_view(task: Mapping[str, Any], spans: list[dict[str, Any]]) -> None:
    traces = len({span["trace_id"] for span in spans})
    print(f"\n{len(spans)} span(s) in {traces} trace(s) in Arthur Engine, task {task['name']!r}:")
    print("\n".join(span_tree_lines(spans)))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="otel-arthur-demo-") as workdir, \
            arthur.running(Path(workdir) / "arthur.db") as local_arthur, \
            engine.running(Path(workdir) / "engine.db") as local_engine, \
            BackgroundServer(openai.create_app()) as local_openai:
        _logger.info("Local Arthur on %s, local Arthur Engine on %s, local OpenAI on %s",
                     local_arthur.url, local_engine.url, local_openai.url)
        model_id = onboard(local_arthur)
        task = local_engine.store.create_task(ENGINE_TASK_NAME)  # what the Engine's POST /api/v2/tasks does
        _logger.info("Created Arthur Engine task %r: %s", task["name"], task["id"])
        run_chat(local_arthur, local_engine, task["id"], local_openai.url, model_id, Path(workdir) / "spool")
        print_inferences(local_arthur.inferences(model_id))
        print_engine_view(task, local_engine.spans(task_id=task["id"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
