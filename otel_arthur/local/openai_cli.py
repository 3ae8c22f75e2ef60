"""``otel-arthur local-openai``: serve :mod:`otel_arthur.local.openai` in the foreground."""

from __future__ import annotations

import argparse
import logging

from otel_arthur.local.openai import DEFAULT_MODEL

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001

logger = logging.getLogger(__name__)


EPILOG = """\
Answers POST /v1/chat/completions and Anthropic's POST /v1/messages (JSON and SSE streaming)
deterministically, for demos and tests.

examples:
  otel-arthur local-openai
  OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=unused python examples/chat.py
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model name the server answers as (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn  # the server extra; imported here so the CLI loads without it

    from otel_arthur.local.openai import create_app

    logger.info(
        "local OpenAI-compatible server on http://%s:%d/v1 answering as %s; '[error NNN]' in a prompt fails it",
        args.host,
        args.port,
        args.model,
    )
    uvicorn.run(create_app(model=args.model), host=args.host, port=args.port, log_level="warning")
    return 0
