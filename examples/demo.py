"""The main job on embedded defaults, no keys needed: the chat example, traced into a local Arthur.

Starts the bundled local Arthur and OpenAI-compatible endpoints on free ports, onboards a model
with ``create-model`` (the real arthurai SDK), runs ``examples/chat.py`` configured by environment
only (a scripted conversation, or yours when on a terminal), then prints the inferences that
arrived in Arthur.

    uv run --frozen python examples/demo.py
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from otel_arthur.local import arthur, openai
from otel_arthur.local.runner import BackgroundServer
from otel_arthur.onboarding import create_model

CHAT = Path(__file__).with_name("chat.py")
PARTNER_MODEL_ID = "otel-arthur-demo-chat"
SCRIPT = "What is a callback handler?\nWhat do I need to do to get the most out of it?\nq\n"

_logger = logging.getLogger("demo")


def onboard(local: arthur.RunningLocalArthur) -> str:
    _logger.info("Onboarding model %r with the arthurai SDK (its import takes a few seconds)", PARTNER_MODEL_ID)
    from arthurai import ArthurAI

    client = ArthurAI(url=local.url, access_key=local.api_key, organization_id=local.organization_id,
                      allow_insecure=True)
    return create_model(client, PARTNER_MODEL_ID, "otel-arthur demo chat")


def run_chat(local: arthur.RunningLocalArthur, openai_url: str, model_id: str, spool_dir: Path) -> None:
    env = os.environ | {
        "ARTHUR_ENDPOINT_URL": local.url,
        "ARTHUR_API_KEY": local.api_key,
        "ARTHUR_MODEL_ID": model_id,
        "ARTHUR_ALLOW_INSECURE": "true",
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


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="otel-arthur-demo-") as workdir, \
            arthur.running(Path(workdir) / "arthur.db") as local_arthur, \
            BackgroundServer(openai.create_app()) as local_openai:
        _logger.info("Local Arthur on %s, local OpenAI on %s", local_arthur.url, local_openai.url)
        model_id = onboard(local_arthur)
        run_chat(local_arthur, local_openai.url, model_id, Path(workdir) / "spool")
        print_inferences(local_arthur.inferences(model_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
