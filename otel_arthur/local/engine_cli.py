"""``otel-arthur local-engine``: serve the local Arthur Engine's trace ingest in the foreground until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

from otel_arthur.local import arthur_faults
from otel_arthur.local.engine import (
    DEFAULT_API_KEY,
    LOCAL_PREFIX,
    TRACES_PATH,
    create_app,
)
from otel_arthur.local.stand_in import add_server_arguments

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3030  # the port of a developer's Engine install
DEFAULT_DB = os.path.join(tempfile.gettempdir(), "otel-arthur", "local-engine.sqlite3")

EPILOG = """\
Serves POST /api/v1/traces (and the deprecated /v1/traces: OTLP protobuf, Bearer key, no gzip),
GET/POST /api/v2/tasks, and /_local (stored spans, tasks, stats, faults) until interrupted.
Spans are routed by the resource's arthur.task, else service.name (a task is auto-created for a new
one). Not for production: one API key, no JWT.

examples:
  otel-arthur local-engine
  otel-arthur local-engine --port 3031 --db :memory: --api-key my-key
  otel-arthur local-engine --fault-rate-503 0.2 --fault-seed 1
  curl -s -X POST -H 'Authorization: Bearer local-engine-api-key' -H 'Content-Type: application/json' \\
    -d '{"name": "my-app"}' http://127.0.0.1:3030/api/v2/tasks
  curl -s 'http://127.0.0.1:3030/_local/spans?task_id=<task id>'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser, epilog=EPILOG, host=DEFAULT_HOST, port=DEFAULT_PORT, db=DEFAULT_DB,
                         holding="tasks and spans")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY,
                        help="API key clients must send as 'Authorization: Bearer <key>' (default: %(default)s)")
    arthur_faults.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # the server extra; imported here so the CLI's --help never needs it

    if args.db != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    faults = arthur_faults.from_arguments(args)
    app = create_app(args.db, api_key=args.api_key, faults=faults)
    logger.info("local Arthur Engine at http://%s:%d%s, stored in %s; API key %s; local views under %s/",
                args.host, args.port, TRACES_PATH, args.db,
                "built-in default" if args.api_key == DEFAULT_API_KEY else "from --api-key", LOCAL_PREFIX)
    if faults != arthur_faults.Faults():
        logger.info("injecting faults %s; change them with POST %s/faults", faults.to_json(), LOCAL_PREFIX)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        app.state.store.close()
    return 0
