"""``otel-arthur``: command-line front door. Each subcommand lives with the code it drives."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from otel_arthur import __version__, exit_codes
from otel_arthur.config import ConfigurationError, as_flags

# subcommand -> module providing ``add_arguments(parser)`` and ``run(args) -> int``, in the order
# ``--help`` lists them: the operator's commands, then the local stand-ins. Each module imports its
# servers and SDKs inside ``run``, so building every parser keeps ``--help`` fast.
_SUBCOMMANDS = {
    "serve": ("otel_arthur.serve.cli", "Receive OTLP/HTTP and OTLP/gRPC traces beside a Collector and send the LLM calls to Arthur."),
    "doctor": ("otel_arthur.doctor", "Check that records would reach Arthur: credentials, model, binding, spool."),
    "spool": ("otel_arthur.spool_cli", "Inspect the spool, replay dead letters after a fix, purge them."),
    "create-model": ("otel_arthur.onboarding", "Onboard an Arthur generative-text model for these records."),
    "local-arthur": ("otel_arthur.local.arthur_cli", "Run a local server speaking Arthur's v3 API."),
    "local-engine": ("otel_arthur.local.engine_cli", "Run a local stand-in of the Arthur Engine's trace ingest."),
    "local-openai": ("otel_arthur.local.openai_cli", "Run a local OpenAI-compatible chat completions server."),
}

DEBUG_FLAG = "--debug"

EPILOG = f"""\
examples:
  otel-arthur doctor                    # would records reach Arthur with this environment?
  otel-arthur serve --port 4319         # beside a Collector: OTLP/HTTP in, Arthur inferences out
  otel-arthur spool stats               # what waits in the spool, and the dead letters
  otel-arthur doctor --debug            # DEBUG logs, and tracebacks instead of one-line errors
  otel-arthur COMMAND --help            # a command's flags, examples and exit codes

{exit_codes.epilog_table(tuple(exit_codes.DESCRIPTIONS))}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-arthur",
        description="Carry LLM calls from OpenTelemetry traces into Arthur:\ninference records for its v3 API,"
                    " OpenInference traces for Arthur Engine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="log at DEBUG level and show tracebacks; also accepted after the command")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in _SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(module=module)
        importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # --debug may also follow the command, at any depth (spool stats --debug): one flag, not one per subparser
    args, unrecognized = parser.parse_known_args(argv)
    args.debug = args.debug or DEBUG_FLAG in unrecognized
    unrecognized = [arg for arg in unrecognized if arg != DEBUG_FLAG]
    if unrecognized:
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")  # as parse_args would
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(args.module)
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130
    except ConfigurationError as exc:  # the settings, not a bug: one line in the command's terms
        logging.getLogger("otel_arthur").error("%s", as_flags(str(exc)))
        return exit_codes.CONFIGURATION
    except Exception as exc:  # one clear line; the traceback only when asked for
        if args.debug:
            raise
        logging.getLogger("otel_arthur").error("%s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
