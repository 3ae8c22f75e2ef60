"""``otel-arthur spool``: what waits in the spool, the dead letters and why, replaying them, purging them.

    stats         depth, bytes, oldest age, dead letters by reason, per destination (``--json``)
    dead-letters  each refused record (v3) or span (Arthur Engine) with the service's message (``--json``)
    replay        re-queue dead letters after a fix, then deliver them here (or leave that to the exporter)
    purge         delete dead letters (and, with ``--pending``, records still waiting); asks first

Rows are kept per destination: v3 rows by ``<URL> <model>``, Arthur Engine rows by ``engine <URL>
<task or ->``. ``--destination v3|engine`` narrows dead-letters, replay and purge to one of the
two; replay delivers for each destination configured (flags or the exporter's environment).

The spool directory is the exporter's: ``--spool-dir``, else ``ARTHUR_SPOOL_DIR``, else the XDG
default. ``stats`` and ``dead-letters`` never create it. Opening the spool, like any process does,
re-queues records left in flight by processes that are gone.

Replay's progress goes to stderr, so stdout stays parseable: on a terminal one line redrawn in place
(done/total, rate, ETA), otherwise an INFO log line every ``LOG_EVERY`` seconds; nothing for runs
shorter than ``SHOW_AFTER``. No progress-bar dependency: one line does not earn one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

from otel_arthur import exit_codes
from otel_arthur.config import (
    DEFAULT_SPOOL_MAX_BYTES,
    ConfigurationError,
    as_flags,
    display_url,
    engine_configured,
    resolve_spool_dir,
    v3_configured,
)
from otel_arthur.destinations import Destination, codec_for, destination_name
from otel_arthur.doctor import (
    SetupRefused,
    Unreachable,
    add_connection_arguments,
    add_engine_arguments,
    add_spool_argument,
    check_engine,
    human_age,
    human_bytes,
    resolve_engine_settings,
    resolve_settings,
)
from otel_arthur.spool import FILE_NAME, Spool, damaged_copies
from otel_arthur.stats import DropReason

logger = logging.getLogger(__name__)

SHOW_AFTER = 1.0  # seconds before replay shows any progress: short runs stay quiet
REDRAW_EVERY = 0.2  # seconds between redraws of the progress line on a terminal
LOG_EVERY = 10.0  # seconds between progress log lines when stderr is not a terminal
POLL = 0.1  # seconds between looks at the spool while replaying
DEFAULT_REPLAY_TIMEOUT = 600.0  # seconds replay waits for delivery before leaving the rest to the exporter
DESTINATIONS = ("v3", "engine")  # Destination.name of each kind of row

_FORMAT = argparse.RawDescriptionHelpFormatter

EPILOG = f"""\
examples:
  otel-arthur spool stats
  otel-arthur spool dead-letters --reason record_rejected
  otel-arthur spool dead-letters --destination engine
  otel-arthur spool replay                       # after fixing the model: deliver the dead letters now
  otel-arthur spool purge --yes                  # drop the dead letters without asking

{exit_codes.epilog_table((exit_codes.OK, exit_codes.ERROR, exit_codes.USAGE, exit_codes.CONFIGURATION,
                          exit_codes.UNREACHABLE, exit_codes.REFUSED, exit_codes.SPOOL, exit_codes.INCOMPLETE))}
"""

STATS_EPILOG = """\
examples:
  otel-arthur spool stats
  otel-arthur spool stats --json | jq .dead_letters.by_reason
  otel-arthur spool stats --spool-dir /var/lib/otel-arthur
"""

DEAD_LETTERS_EPILOG = """\
examples:
  otel-arthur spool dead-letters
  otel-arthur spool dead-letters --reason record_rejected --limit 20
  otel-arthur spool dead-letters --json | jq -r '.[].message' | sort | uniq -c
  otel-arthur spool dead-letters --destination engine     # spans: trace/span id, name, the Engine's reason

reasons: record_rejected (Arthur refused the record inside its 207 answer),
         batch_refused (Arthur, or Arthur Engine, refused the whole request that carried it)
"""

REPLAY_EPILOG = f"""\
Re-queues the matching dead letters as new records, then delivers everything waiting for each
configured destination (the exporter's settings, as for `otel-arthur doctor`: the v3 model when a
v3 URL is set, Arthur Engine when an Engine URL is) and reports what each did with them. Before
re-queueing it checks each one (the model fetched; the Engine's key and task read), so nothing
moves while one still refuses the set-up. --destination v3|engine replays one of them only. Dead
letters of destinations not configured here are re-queued too and wait for a process configured
for them; --requeue-only leaves all delivery to the exporter.

examples:
  otel-arthur spool replay
  otel-arthur spool replay --destination engine  # the Engine's dead letters, with ARTHUR_ENGINE_* set
  otel-arthur spool replay --reason record_rejected --timeout 120
  otel-arthur spool replay --seq 12 --seq 14
  otel-arthur spool replay --requeue-only        # no Arthur settings here; the app delivers them

{exit_codes.epilog_table((exit_codes.OK, exit_codes.CONFIGURATION, exit_codes.UNREACHABLE, exit_codes.REFUSED,
                          exit_codes.SPOOL, exit_codes.INCOMPLETE))}
"""

PURGE_EPILOG = f"""\
Deletes dead letters (all, or one --reason); with --pending also the records still waiting for
delivery (never those a running process has in flight). Asks for confirmation on a terminal;
elsewhere it refuses unless --yes is given, and never waits for input.

examples:
  otel-arthur spool purge
  otel-arthur spool purge --reason batch_refused --yes
  otel-arthur spool purge --destination engine --yes
  otel-arthur spool purge --pending --yes        # start from an empty spool

{exit_codes.epilog_table((exit_codes.OK, exit_codes.USAGE, exit_codes.SPOOL, exit_codes.INCOMPLETE))}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _FORMAT
    parser.description = "Inspect the spool, replay dead letters after a fix, purge what is not wanted."
    parser.epilog = EPILOG
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary, description=summary, epilog=epilog, formatter_class=_FORMAT)
        add_spool_argument(sub)
        return sub

    def destination_argument(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--destination", choices=DESTINATIONS,
                         help="only the rows of this destination: v3 (Arthur's inference API) or engine (Arthur "
                              "Engine); default: both")

    stats = action("stats", "Depth, bytes, oldest age and dead letters by reason.", STATS_EPILOG)
    stats.add_argument("--json", action="store_true", help="one JSON object on stdout")

    letters = action("dead-letters", "List the records (or Engine spans) Arthur refused, with its messages.",
                     DEAD_LETTERS_EPILOG)
    letters.add_argument("--json", action="store_true",
                         help="a JSON list on stdout, each with its record (v3) or span (engine)")
    letters.add_argument("--reason", help="only dead letters of this reason")
    letters.add_argument("--limit", type=int, help="at most this many, the newest")
    destination_argument(letters)

    replay = action("replay", "Re-queue dead letters after a fix and deliver them.", REPLAY_EPILOG)
    replay.add_argument("--reason", help="only dead letters of this reason")
    replay.add_argument("--seq", type=int, action="append", help="only this dead letter (repeatable; see dead-letters)")
    replay.add_argument("--requeue-only", action="store_true",
                        help="re-queue and exit; the exporter (or serve) delivers them next time it runs")
    replay.add_argument("--timeout", type=float, default=DEFAULT_REPLAY_TIMEOUT,
                        help="seconds to wait for delivery; what is left stays queued (default: %(default)g)")
    destination_argument(replay)
    add_connection_arguments(replay)
    add_engine_arguments(replay)

    purge = action("purge", "Delete dead letters (and, with --pending, waiting records).", PURGE_EPILOG)
    purge.add_argument("--reason", help="only dead letters of this reason")
    purge.add_argument("--pending", action="store_true", help="also delete records still waiting for delivery")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    destination_argument(purge)


def run(args: argparse.Namespace) -> int:
    directory = resolve_spool_dir(args.spool_dir)
    try:
        return _ACTIONS[args.action](args, directory)
    except _Exit as stop:
        print(f"error: {stop}", file=sys.stderr)
        return stop.code
    except (OSError, sqlite3.Error) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: cannot use the spool in {directory}: {exc}", file=sys.stderr)
        return exit_codes.SPOOL


# -- helpers -------------------------------------------------------------------------------------


def _exists(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, FILE_NAME))


def _open(directory: str, destination: str = "") -> Spool:
    """A handle on the whole file; ``max_bytes`` only bounds appends, which these commands never make.

    A damaged file is an error here: the exporter or ``serve`` keeps a copy and starts afresh when it opens it.
    """
    return Spool(directory, destination, DEFAULT_SPOOL_MAX_BYTES, replace_damaged=False)


def _keys(spool: Spool, name: str | None) -> list[str] | None:
    """The spool keys of destination ``name`` (``v3``/``engine``) found in the file; None for every destination."""
    if name is None:
        return None
    return [entry.destination for entry in spool.inventory() if destination_name(entry.destination) == name]


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


class _Exit(Exception):
    """Stop the command: one ``error:`` line on stderr and this exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- stats ---------------------------------------------------------------------------------------


def stats_document(directory: str) -> dict[str, Any]:
    """What ``stats --json`` prints: the whole file, then each destination."""
    path = os.path.join(directory, FILE_NAME)
    document: dict[str, Any] = {"path": path, "exists": _exists(directory), "depth": 0, "in_flight": 0, "bytes": 0,
                                "oldest_age_seconds": 0.0, "dead_letters": {"total": 0, "by_reason": {}},
                                "destinations": [], "damaged_copies": []}
    if not document["exists"]:
        return document
    spool = _open(directory)
    try:
        spool.check()
        gauges, inventory = spool.gauges(), spool.inventory()
    finally:
        spool.close()
    document["damaged_copies"] = damaged_copies(directory)
    now = time.time()
    by_reason: dict[str, int] = {}
    for entry in inventory:
        for reason, count in entry.dead_letters.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
        document["destinations"].append({
            "destination": entry.destination, "kind": destination_name(entry.destination),
            "pending": entry.pending, "in_flight": entry.in_flight,
            "bytes": entry.bytes, "dead_letters": dict(sorted(entry.dead_letters.items())),
            "oldest_age_seconds": 0.0 if entry.oldest_enqueued_at is None else max(0.0, now - entry.oldest_enqueued_at),
        })
    document.update(depth=gauges.depth, in_flight=sum(e.in_flight for e in inventory), bytes=gauges.bytes,
                    oldest_age_seconds=gauges.oldest_age,
                    dead_letters={"total": gauges.dead_letters, "by_reason": dict(sorted(by_reason.items()))})
    return document


def _stats(args: argparse.Namespace, directory: str) -> int:
    document = stats_document(directory)
    if args.json:
        print(json.dumps(document, indent=2))
        return exit_codes.OK
    if not document["exists"]:
        print(f"spool         {document['path']} (none: nothing has been spooled there)")
        return exit_codes.OK
    dead = document["dead_letters"]
    reasons = ", ".join(f"{reason} {count}" for reason, count in dead["by_reason"].items())
    print(f"spool         {document['path']}")
    print(f"waiting       {document['depth']} records ({document['in_flight']} in flight), oldest "
          f"{human_age(document['oldest_age_seconds']) if document['depth'] else '-'}")
    print(f"size          {human_bytes(document['bytes'])} (records and dead letters)")
    print(f"dead letters  {dead['total']}" + (f" ({reasons})" if reasons else ""))
    for copy in document["damaged_copies"]:
        print(f"damaged       {copy} (a copy of the spool found damaged, which started afresh: its records were"
              " not delivered)")
    if document["destinations"]:
        print()
        print(f"{'waiting':>8} {'in flight':>9} {'dead':>6} {'oldest':>8}  destination (v3: URL model; "
              "Arthur Engine: engine URL task)")
        for entry in document["destinations"]:
            waiting = entry["pending"] + entry["in_flight"]
            print(f"{waiting:>8} {entry['in_flight']:>9} {sum(entry['dead_letters'].values()):>6} "
                  f"{human_age(entry['oldest_age_seconds']) if waiting else '-':>8}  {entry['destination']}")
    return exit_codes.OK


# -- dead letters --------------------------------------------------------------------------------


def engine_span(item: Any) -> dict[str, Any]:
    """A spooled Engine span (``EngineSpan``) as JSON: ids, name, times, attributes and the resource's."""
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from otel_arthur.otlp import any_value

    span, resource = Span.FromString(item.span), Resource.FromString(item.resource)
    return {"trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
            "parent_span_id": span.parent_span_id.hex() or None, "name": span.name,
            "start_time_unix_nano": span.start_time_unix_nano, "end_time_unix_nano": span.end_time_unix_nano,
            "attributes": {kv.key: any_value(kv.value) for kv in span.attributes},
            "resource": {kv.key: any_value(kv.value) for kv in resource.attributes}}


def _letter_json(letter: dict[str, Any]) -> dict[str, Any]:
    common = {"seq": letter["seq"], "destination": letter["destination"],
              "kind": destination_name(letter["destination"]), "reason": letter["reason"],
              "message": letter["message"], "dead_at": _iso(letter["dead_at"]), "size": letter["size"]}
    if common["kind"] == "engine":
        span = engine_span(letter["record"])
        return {**common, "trace_id": span["trace_id"], "span_id": span["span_id"], "name": span["name"], "span": span}
    record = letter["record"]
    return {**common, "partner_inference_id": record.partner_inference_id,
            "record": {"inference_timestamp": record.inference_timestamp, **record.fields}}


def _letter_line(letter: dict[str, Any]) -> str:
    """``#seq  when  reason  what  destination``: what is the record's id, or the span's ids and name."""
    if destination_name(letter["destination"]) == "engine":
        span = engine_span(letter["record"])
        what = f"span {span['trace_id']}/{span['span_id']} {span['name']!r}"
    else:
        what = letter["record"].partner_inference_id
    return f"#{letter['seq']}  {_iso(letter['dead_at'])}  {letter['reason']}  {what}  {letter['destination']}"


def _dead_letters(args: argparse.Namespace, directory: str) -> int:
    letters: list[dict[str, Any]] = []
    if _exists(directory):
        spool = _open(directory)
        try:
            letters = spool.dead_letters(everywhere=True, reason=args.reason,
                                         destinations=_keys(spool, args.destination), codec_of=codec_for)
        finally:
            spool.close()
    total = len(letters)
    if args.limit is not None:
        letters = letters[-args.limit:] if args.limit > 0 else []
    if args.json:
        print(json.dumps([_letter_json(letter) for letter in letters], indent=2, ensure_ascii=False))
        return exit_codes.OK
    if not letters:
        print("no dead letters" + (f" of reason {args.reason}" if args.reason else "")
              + (f" for destination {args.destination}" if args.destination else ""))
        return exit_codes.OK
    for letter in letters:
        print(_letter_line(letter))
        print(f"    {letter['message']}")
    shown = f"the newest {len(letters)} of {total}" if len(letters) < total else f"{total}"
    print(f"\n{shown} dead letters; `otel-arthur spool replay` re-queues them once the cause is fixed")
    return exit_codes.OK


# -- replay --------------------------------------------------------------------------------------


class Progress:
    """``replaying 1200/5000 (24%) · 350 records/s · ETA 11s`` on ``stream`` (stderr).

    On a terminal the line is redrawn in place; elsewhere it is logged every ``LOG_EVERY`` seconds,
    so a CI log gets a few lines, not a flood. Nothing is shown before ``SHOW_AFTER`` seconds.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.total = total
        self.label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._clock = clock
        self._started = clock()
        self._shown_at: float | None = None
        self._drawn = False

    def line(self, done: int) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = done / elapsed
        percent = f" ({100 * done // self.total}%)" if self.total else ""
        eta = f" · ETA {human_age((self.total - done) / rate)}" if rate > 0 and done < self.total else ""
        return f"{self.label} {done}/{self.total}{percent} · {rate:.0f} records/s{eta}"

    def update(self, done: int) -> None:
        now = self._clock()
        if now - self._started < SHOW_AFTER:
            return
        interval = REDRAW_EVERY if self._tty else LOG_EVERY
        if self._shown_at is not None and now - self._shown_at < interval:
            return
        self._shown_at = now
        if self._tty:
            self._stream.write("\r\033[K" + self.line(done))
            self._stream.flush()
            self._drawn = True
        else:
            logger.info("%s", self.line(done))

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _replay(args: argparse.Namespace, directory: str) -> int:
    if not _exists(directory):
        print(f"no spool at {directory}: nothing to replay")
        return exit_codes.OK
    seqs = args.seq
    spool = _open(directory)
    try:
        chosen = _keys(spool, args.destination)
        letters = spool.dead_letters(everywhere=True, reason=args.reason, seqs=seqs, destinations=chosen,
                                     codec_of=codec_for)
        if not letters:
            print("no dead letters match: nothing to replay")
            return exit_codes.OK
        targets = [] if args.requeue_only else _checked_destinations(args)
        requeued = spool.requeue_dead_letters(everywhere=True, reason=args.reason, seqs=seqs, destinations=chosen)
    finally:
        spool.close()
    print(f"re-queued {requeued} dead letters")
    if not targets:
        print("they are delivered by the next process configured for their destination (exporter or serve)")
        return exit_codes.OK
    ours = sum(1 for letter in letters if letter["destination"] in {target.key for target in targets})
    if ours < requeued:
        print(f"{requeued - ours} of them are for destinations not configured here: processes configured for those "
              "deliver them")
    deadline = time.monotonic() + args.timeout
    codes = [_deliver(target, max(0.0, deadline - time.monotonic())) for target in targets]
    return max(codes)


def _checked_destinations(args: argparse.Namespace) -> list[Destination]:
    """The destinations to deliver to (``--destination``, else each configured one), once each accepts the set-up.

    ``_Exit`` when one is not configured, unreachable or refusing: nothing is re-queued then.
    """
    wanted = [args.destination] if args.destination else [
        name for name, configured in (("v3", v3_configured(args.url)),
                                      ("engine", engine_configured(args.engine_url, v3_url=args.url))) if configured]
    return [_check_engine(args) if name == "engine" else _check_arthur(args) for name in wanted or ["v3"]]


def _configuration_error(exc: ConfigurationError) -> _Exit:
    return _Exit(f"{as_flags(str(exc))} (or pass --requeue-only to leave delivery to the exporter)",
                 exit_codes.CONFIGURATION)


def _check_arthur(args: argparse.Namespace) -> Destination:
    """The v3 destination, once Arthur accepts the set-up (the model fetched and bound); ``_Exit`` otherwise."""
    from otel_arthur.clients.http import RetryableError, SetupError
    from otel_arthur.destinations.v3 import ArthurSender, V3Destination

    try:
        settings = resolve_settings(args)
    except ConfigurationError as exc:
        raise _configuration_error(exc) from None
    sender = ArthurSender(settings)
    try:
        sender.binding  # noqa: B018 - fetches the model and binds: what delivery needs first
    except RetryableError as exc:
        raise _Exit(f"Arthur is unreachable, nothing re-queued: {exc}", exit_codes.UNREACHABLE) from None
    except SetupError as exc:
        raise _Exit(f"Arthur refuses the set-up, nothing re-queued: {exc} (`otel-arthur doctor` says more)",
                    exit_codes.REFUSED) from None
    finally:
        sender.close()
    return V3Destination(settings)


def _check_engine(args: argparse.Namespace) -> Destination:
    """The Engine destination, once the Engine accepts its key (and task); ``_Exit`` otherwise."""
    from otel_arthur.destinations.engine import EngineDestination

    try:
        settings = resolve_engine_settings(args)
    except ConfigurationError as exc:
        raise _configuration_error(exc) from None
    try:
        check_engine(settings)
    except Unreachable as exc:
        raise _Exit(f"Arthur Engine is unreachable, nothing re-queued: {exc}", exit_codes.UNREACHABLE) from None
    except SetupRefused as exc:
        raise _Exit(f"Arthur Engine refuses the set-up, nothing re-queued: {exc} (`otel-arthur doctor` says more)",
                    exit_codes.REFUSED) from None
    return EngineDestination(settings)


def _deliver(destination: Destination, timeout: float) -> int:
    """Run a pipeline until what waits for ``destination`` is settled or ``timeout`` passes; summarise."""
    from otel_arthur.pipeline import Pipeline

    watch = _open(destination.settings.spool_dir, destination.key)
    pipeline = Pipeline(to=destination)
    try:
        mark = watch.last_seq()
        total = watch.pending(upto=mark)
        progress = Progress(total, "delivering")
        deadline = time.monotonic() + timeout
        left = total
        while left and time.monotonic() < deadline:
            progress.update(total - left)
            time.sleep(POLL)
            left = watch.pending(upto=mark)
        progress.close()
    finally:
        pipeline.shutdown(timeout=1.0)
        watch.close()
    stats = pipeline.stats()
    # The Engine answers a 206 with how many spans it refused, not which: those leave the spool counted as dropped.
    refused_in_answer = stats.dropped.get(DropReason.ENGINE_REJECTED, 0)
    refused = stats.dead_lettered + refused_in_answer
    if destination.name == "engine":
        task = destination.settings.task_id
        waiting_for = f"Arthur Engine {'task ' + task if task else 'at ' + display_url(destination.settings.url)}"
    else:
        waiting_for = destination.settings.model_id
    print(f"delivered {stats.delivered}, refused again {refused}, still waiting {left} "
          f"(of {total} waiting for {waiting_for})")
    if stats.dead_lettered:
        print("see `otel-arthur spool dead-letters` for Arthur's messages")
    if refused_in_answer:
        print(f"Arthur Engine refused {refused_in_answer} spans inside its answer (its reasons are in the log); "
              "they are not kept")
    if left:
        print("the rest stays queued: the exporter delivers it (or run replay again)")
    return exit_codes.INCOMPLETE if refused or left else exit_codes.OK


# -- purge ---------------------------------------------------------------------------------------


def _confirm(question: str) -> bool | None:
    """True/False from the terminal; None when there is no terminal to ask on (never waits for a pipe)."""
    stdin = sys.stdin
    if stdin is None or stdin.closed or not stdin.isatty():
        return None
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _purge(args: argparse.Namespace, directory: str) -> int:
    if not _exists(directory):
        print(f"no spool at {directory}: nothing to purge")
        return exit_codes.OK
    spool = _open(directory)
    try:
        options = {"dead_letters": True, "pending": args.pending, "everywhere": True, "reason": args.reason,
                   "destinations": _keys(spool, args.destination)}
        preview = spool.purge(**options, dry_run=True)
        what = "dead letters" + (" and waiting records" if args.pending else "")
        if args.reason:
            what += f" (dead letters of reason {args.reason})"
        if args.destination:
            what += f" of destination {args.destination}"
        if not preview.rows:
            print(f"nothing to purge: no {what}")
            return exit_codes.OK
        if not args.yes:
            answer = _confirm(f"Delete {preview.rows} {what} ({human_bytes(preview.bytes)}) from "
                              f"{os.path.join(directory, FILE_NAME)}?")
            if answer is None:
                raise _Exit(f"refusing to delete {preview.rows} {what} without confirmation: stdin is not a "
                            "terminal; pass --yes", exit_codes.USAGE)
            if not answer:
                print("nothing deleted")
                return exit_codes.INCOMPLETE
        done = spool.purge(**options)
    finally:
        spool.close()
    print(f"deleted {done.rows} {what} ({human_bytes(done.bytes)})")
    return exit_codes.OK


_ACTIONS = {"stats": _stats, "dead-letters": _dead_letters, "replay": _replay, "purge": _purge}
