"""``otel-arthur local-arthur``: serve the local Arthur v3 API in the foreground until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

from otel_arthur.local import arthur_faults
from otel_arthur.local.arthur import (
    API_PREFIX,
    DEFAULT_API_KEY,
    DEFAULT_LOGIN,
    DEFAULT_ORGANIZATION_ID,
    DEFAULT_PASSWORD,
    LOCAL_PREFIX,
    create_app,
)
from otel_arthur.local.stand_in import add_server_arguments

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_DB = os.path.join(tempfile.gettempdir(), "otel-arthur", "local-arthur.sqlite3")


EPILOG = """\
Serves /api/v3 (what the arthurai SDK and otel-arthur use) and /_local (stored inferences, stats,
faults) until interrupted. Not for production: one organization, built-in credentials.

examples:
  otel-arthur local-arthur
  otel-arthur local-arthur --port 9000 --db :memory:
  otel-arthur local-arthur --certfile cert.pem --keyfile key.pem   # HTTPS
  curl -s http://127.0.0.1:8787/_local/models/$ARTHUR_MODEL_ID/inferences
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser, epilog=EPILOG, host=DEFAULT_HOST, port=DEFAULT_PORT, db=DEFAULT_DB,
                         holding="models and inferences")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="API key clients must send (default: %(default)s)")
    parser.add_argument("--login", default=DEFAULT_LOGIN, help="login accepted by /login (default: %(default)s)")
    parser.add_argument("--password", default=DEFAULT_PASSWORD, help="password for --login (default: %(default)s)")
    parser.add_argument(
        "--organization-id", default=DEFAULT_ORGANIZATION_ID, help="the one organization (default: %(default)s)"
    )
    parser.add_argument("--certfile", help="PEM certificate: serve HTTPS (default: none, plain HTTP)")
    parser.add_argument("--keyfile", help="PEM private key for --certfile (default: none)")
    arthur_faults.add_arguments(parser)


def _origin(value: str, default: str, flag: str) -> str:
    """Where a credential came from, for the log: never the value itself."""
    return "built-in default" if value == default else f"from {flag}"


def run(args: argparse.Namespace) -> int:
    import uvicorn  # the server extra; imported here so the CLI's --help never needs it

    if (args.certfile is None) != (args.keyfile is None):
        raise ValueError("--certfile and --keyfile go together")
    if args.db != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    faults = arthur_faults.from_arguments(args)
    app = create_app(
        args.db,
        api_key=args.api_key,
        login=args.login,
        password=args.password,
        organization_id=args.organization_id,
        faults=faults,
    )
    scheme = "https" if args.certfile else "http"
    logger.info("local Arthur at %s://%s:%d%s, stored in %s", scheme, args.host, args.port, API_PREFIX, args.db)
    logger.info(
        "accepting login %r (password %s), API key %s, organization %s; local views under %s/",
        args.login,
        _origin(args.password, DEFAULT_PASSWORD, "--password"),
        _origin(args.api_key, DEFAULT_API_KEY, "--api-key"),
        args.organization_id,
        LOCAL_PREFIX,
    )
    if faults != arthur_faults.Faults():
        logger.info("injecting faults %s; change them with POST %s/faults", faults.to_json(), LOCAL_PREFIX)
    try:
        uvicorn.run(
            app, host=args.host, port=args.port, ssl_certfile=args.certfile, ssl_keyfile=args.keyfile, log_level="info"
        )
    finally:
        app.state.store.close()
    return 0
