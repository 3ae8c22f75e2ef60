"""Exit codes of the ``otel-arthur`` commands: one meaning each, the same in every command.

When ``doctor`` finds several problems it exits with the code of the first in this order
(configuration, reachability, set-up, spool): the one to fix first.
"""

OK = 0
"""Everything worked (``doctor``: records would reach Arthur)."""
ERROR = 1
"""An unexpected error: one line on stderr, the traceback with ``otel-arthur --debug``."""
USAGE = 2
"""A bad command line (argparse), or ``spool purge`` with no terminal to confirm on and no ``--yes``."""
CONFIGURATION = 3
"""Settings missing or invalid: no URL, no model, no credentials, plain http without consent, bad redaction patterns."""
UNREACHABLE = 4
"""Arthur cannot be reached: connection refused, host not resolved, TLS failure, timeout, 5xx."""
REFUSED = 5
"""Arthur refuses the set-up: credentials (401/403), organization, unknown model, a model that cannot hold the records."""
SPOOL = 6
"""The spool cannot be used: directory not writable or not creatable, file unreadable."""
INCOMPLETE = 7
"""Not done: ``spool purge`` declined; ``spool replay`` left records refused again or still waiting."""

DESCRIPTIONS = {
    OK: "success",
    ERROR: "unexpected error (traceback with --debug)",
    USAGE: "bad command line",
    CONFIGURATION: "configuration missing or invalid",
    UNREACHABLE: "Arthur unreachable (connection, DNS, TLS, timeout, 5xx)",
    REFUSED: "Arthur refuses the set-up (credentials, organization, model, attributes)",
    SPOOL: "spool not usable",
    INCOMPLETE: "not done (purge declined, replay incomplete)",
}


def epilog_table(codes: tuple[int, ...]) -> str:
    """The ``exit codes:`` block of a command's ``--help``."""
    return "exit codes:\n" + "\n".join(f"  {code}  {DESCRIPTIONS[code]}" for code in codes)
