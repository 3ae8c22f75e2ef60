"""The spool: a durable, bounded queue of inference records on disk, shared safely between processes.

Layout::

    $ARTHUR_SPOOL_DIR/             default $XDG_STATE_HOME/otel-arthur, else ~/.local/state/otel-arthur (0700)
    ├── spool.sqlite3              SQLite in WAL mode (0600), the tables below
    ├── spool.sqlite3-wal, -shm    SQLite's write-ahead log (cut back to a quarter of the bound, 4 MiB at most) and its index
    └── owners/
        └── <owner>.lock           one per open Spool, flock()ed for as long as its process lives

    records       seq │ destination │ partner_inference_id │ body │ size │ enqueued_at │ owner
                  seq is arrival order; body is the item as its destination's codec writes it (v3: the record as
                  JSON, Arthur's row itself when it needs no binding), size its UTF-8 bytes;
                  owner NULL = pending, else in flight, claimed by that Spool
    dead_letters  seq │ destination │ partner_inference_id │ body │ size │ reason │ message │ dead_at
    totals        name ('records' | 'dead_letters') │ rows │ bytes, kept by each transaction that adds or removes
                  rows (once per transaction, not per row): the bound costs no scan

Protocol, at least once like the Collector's persistent queue:

    append  INSERT pending rows. Past ``max_bytes`` the oldest dead letters go first (they were logged and
            counted, and will never be sent), then the oldest pending records, counted as dropped ``spool_full``;
            or, with ``refuse_when_full`` (``serve``, whose clients retry), nothing is stored: ``SpoolFull``.
    claim   mark the oldest pending rows of this destination as ours, in one IMMEDIATE transaction.
    settle  in one transaction: delete the acknowledged, move the refused to dead_letters, return the rest
            to pending. A crash before ``settle`` re-sends at most that claim: the bound on duplicates.
            When every record this handle has in flight is acknowledged, its rows are deleted by seq range.
    adopt   at open, and whenever the worker asks: rows whose owner's lock can be taken (its process
            exited, crashed or was killed -9) go back to pending.
    requeue (``otel-arthur spool replay``) move dead letters back to pending as new arrivals, in one transaction.
    purge   (``otel-arthur spool purge``) delete dead letters, or pending records; never a live process's in-flight ones.

Why one shared file rather than one per process: SQLite serialises writers itself. In WAL mode
readers never wait for the writer, and every write here is one short ``BEGIN IMMEDIATE``
transaction under a busy timeout, so two processes queue for the lock for milliseconds instead of
failing or corrupting the file. One file keeps one byte bound for the directory, and any process
can deliver what another left behind. What a file per process would buy, no write contention,
does not matter at the rate spans arrive (one small transaction per exported batch).

Owner liveness is ``flock()`` on ``owners/<owner>.lock``: the kernel drops the lock when its
process dies, however it dies, so adoption is exact and immediate, with no lease to tune and no
pid to be reused. The file is locked under a temporary name and only then renamed into place, so
no one can find it unlocked. ``flock`` makes the spool POSIX-only (Linux, macOS).

A damaged file (SQLite finds it malformed or not a database: at open, in ``check()`` — which the
delivery thread runs at start — or in any operation) is copied to ``spool.sqlite3.corrupt-<UTC time>``
for inspection and emptied in place, with one ERROR line; the operation that met it runs again on
the empty spool. Log pages lost whole are not damage to SQLite: it stops reading the log there.

``synchronous=NORMAL`` in WAL mode: a commit survives the process being killed, not necessarily a
power cut, and costs no fsync per exported batch. Rows hold what spans said (prompts, completions)
and the destination (URL without user info, model id): never a credential.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from otel_arthur import forking
from otel_arthur.binding import takes_as_is
from otel_arthur.mapping import InferenceRecord

try:
    import fcntl
except ImportError:  # Windows: the spool refuses to open, saying why (see Spool.__init__)
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

FILE_NAME = "spool.sqlite3"
CORRUPT_MARK = ".corrupt-"  # spool.sqlite3.corrupt-<UTC time>: a copy of a damaged spool, kept for inspection
OWNERS = "owners"
BUSY_TIMEOUT = 10.0  # seconds to wait for another process's write lock; transactions take milliseconds
WAL_MAX_PAGES = 1000  # SQLite's own checkpoint threshold (~4 MiB of log): what a large bound keeps
WAL_MIN_PAGES = 16  # fewer would checkpoint (and fsync) every few transactions
PROBE_BYTES = 64 * 1024  # what ``can_write`` writes: room for a few SQLite pages and their write-ahead log frames
_OWNER_ID = re.compile(r"^[0-9a-f]{32}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    partner_inference_id TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS records_by_destination ON records (destination, seq);
CREATE INDEX IF NOT EXISTS records_in_flight ON records (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    partner_inference_id TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES ('records', 0, 0), ('dead_letters', 0, 0);
"""
# Spools written before the totals were kept by the transactions had per-row triggers keep them: at open,
# drop them and count the totals afresh (once: the triggers' presence is the old format).
_MIGRATE = "".join(
    f"""
UPDATE totals SET rows = (SELECT COUNT(*) FROM {table}), bytes = (SELECT COALESCE(SUM(size), 0) FROM {table})
    WHERE name = '{table}' AND EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = '{table}_added');
DROP TRIGGER IF EXISTS {table}_added;
DROP TRIGGER IF EXISTS {table}_removed;
"""
    for table in ("records", "dead_letters")
)
_IN_CHUNK = 900  # seqs per "seq IN (…)": under SQLite's 999 host parameters of old builds


class SpoolClosed(RuntimeError):
    """The spool was closed; nothing more can be read or written through this handle."""


class SpoolFull(RuntimeError):
    """``append(…, refuse_when_full=True)``: the records do not fit under the bound; none was stored."""


class SpoolDamaged(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found the file damaged."""


class _Replaced(sqlite3.DatabaseError):
    """An operation met a damaged file, which was replaced by an empty one: ``_retried`` runs it again."""


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (their messages: Python 3.10 has no ``sqlite_errorcode``)."""
    return isinstance(error, SpoolDamaged) or any(
        text in str(error) for text in ("database disk image is malformed", "file is not a database"))


def _retried(method: Callable) -> Callable:
    """Run ``method`` once more when it met a damaged file: the second run is on the fresh one."""

    @functools.wraps(method)
    def run(self: Spool, *args: object, **kwargs: object) -> object:
        try:
            return method(self, *args, **kwargs)
        except _Replaced:
            return method(self, *args, **kwargs)

    return run


class Claimed(NamedTuple):
    """A record taken from the spool by ``claim``; ``seq`` settles it. A tuple: one is made per record delivered."""

    seq: int
    record: Any  # what the spool's codec hands delivery (``Codec.claimed``): a StoredRecord for v3


@dataclass(frozen=True, slots=True)
class Refused:
    """A claimed record Arthur will never accept: it goes to the dead letters with why."""

    seq: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Appended:
    stored: int
    dropped: int  # given up for the bound: the oldest pending (any destination), or a new one alone over it


@dataclass(frozen=True, slots=True)
class Gauges:
    """The whole spool file, every destination: what waits, its size on the bound, the oldest's age."""

    depth: int
    bytes: int
    dead_letters: int
    oldest_age: float  # seconds; 0 when nothing waits


@dataclass(frozen=True, slots=True)
class Inventory:
    """One destination's share of the spool file, for ``otel-arthur spool stats``."""

    destination: str
    pending: int
    in_flight: int
    bytes: int  # records and dead letters
    oldest_enqueued_at: float | None  # epoch seconds of the oldest waiting record; None when none waits
    dead_letters: dict[str, int]  # by reason


@dataclass(frozen=True, slots=True)
class Purged:
    rows: int
    bytes: int


# What orjson would write differently from the stdlib (dataclasses, datetimes, subclasses of str…) it refuses instead.
_ORJSON_PLAIN = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
_stdlib_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


_ROW_KEY = '"inference_data":'  # only ever the top-level key: inside a JSON string every " is escaped


def encode(record: InferenceRecord) -> str:
    """The record as JSON: Arthur's inference row itself (``inference_data``) when the fields need no binding for a
    model whose attributes are the fields (``takes_as_is``), else its ``fields`` for ``Binding.to_row`` to bind."""
    # The dict asdict() would build, without its recursive deep copy (which cost more than the rest of export()).
    data = {"partner_inference_id": record.partner_inference_id, "inference_timestamp": record.inference_timestamp,
            ("inference_data" if takes_as_is(record.fields) else "fields"): record.fields}
    try:
        return orjson.dumps(data, option=_ORJSON_PLAIN).decode()  # a tenth of the stdlib's time on a 2 KB record
    except orjson.JSONEncodeError:
        # A value orjson refuses: the stdlib stores it or raises as it always did (a lone surrogate only fails
        # as UTF-8, the text's own error).
        return _stdlib_encode(data)


def decode(body: str | bytes) -> InferenceRecord:
    data = orjson.loads(body)
    fields = data["inference_data"] if "inference_data" in data else data["fields"]
    return InferenceRecord(data["partner_inference_id"], data["inference_timestamp"], fields)


class StoredRecord:
    """A claimed v3 record, decoded only if something reads more than its identity.

    ``row``: the stored JSON when it is Arthur's inference row already (see ``encode``), for a sender whose
    model takes it as it is to send it without decoding and encoding it again.
    """

    __slots__ = ("partner_inference_id", "body", "_record")

    def __init__(self, partner_inference_id: str, body: str) -> None:
        self.partner_inference_id = partner_inference_id
        self.body = body
        self._record: InferenceRecord | None = None

    @property
    def row(self) -> str | None:
        return self.body if _ROW_KEY in self.body else None

    @property
    def record(self) -> InferenceRecord:
        if self._record is None:
            self._record = decode(self.body)
        return self._record

    @property
    def inference_timestamp(self) -> str:
        return self.record.inference_timestamp

    @property
    def fields(self) -> dict[str, Any]:
        return self.record.fields

    @property
    def origin(self) -> None:
        return None  # never spooled

    def __eq__(self, other: object) -> bool:
        """Equal to the record it stores (and to another of the same)."""
        if isinstance(other, StoredRecord):
            other = other.record
        return self.record == other if isinstance(other, InferenceRecord) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like the record's, whose fields are a dict

    def __repr__(self) -> str:
        return f"StoredRecord({self.partner_inference_id!r})"  # not its content: prompts stay out of logs


class Encoded(NamedTuple):
    """An item already as its spool row stores it: privacy applied, in its codec's text. What a decode process
    (``serve --decode-processes``) hands back, so the serving process only stores it; ``append`` takes it as is.

    ``call``: what ``dedupe`` compares of the item, worked out before privacy changed its texts (None: nothing).
    """

    identity: str
    body: str
    call: Any = None


def unspoolable(identity: str, error: Exception) -> str:
    """Why an item was left out, for the ``unmappable`` count: the exception's type only (its message may quote
    the record's content)."""
    return f"record {identity} cannot be spooled: {type(error).__name__}"


class Codec(Protocol):
    """How one destination's items are stored: a row's body, and the identity a re-send keeps."""

    def encode(self, item: Any) -> str: ...

    def decode(self, body: str) -> Any: ...

    def identity(self, item: Any) -> str: ...

    def claimed(self, identity: str, body: str) -> Any:
        """What delivery is handed for a claimed row (``decode(body)``, or something that reads like it)."""
        ...


class RecordCodec:
    """v3 inference records: the record as JSON, identified by its ``partner_inference_id``."""

    encode = staticmethod(encode)
    decode = staticmethod(decode)

    @staticmethod
    def identity(record: InferenceRecord) -> str:
        return record.partner_inference_id

    claimed = StoredRecord


RECORD_CODEC = RecordCodec()


class Spool:
    """One process's handle on a spool directory, for one destination.

    Thread-safe: one connection behind one lock (the exporter's thread appends while the worker
    claims and settles). Writes are short IMMEDIATE transactions, so other processes wait for
    milliseconds at most.

    Fork-safe: no SQLite connection crosses a fork (see ``_before_fork``); each side opens a new
    one at its next use. A forked child is a new owner, with its own lock file from its first use:
    the parent's in-flight records stay the parent's, which the child can neither settle nor release.
    """

    def __init__(self, directory: str | os.PathLike[str], destination: str, max_bytes: int,
                 codec: Codec = RECORD_CODEC, *, replace_damaged: bool = True) -> None:
        """``replace_damaged=False`` (the inspecting commands): a damaged file raises ``sqlite3.DatabaseError`` instead."""
        if fcntl is None:
            raise OSError("the spool needs flock() (POSIX); it is not available on this platform")
        self.directory = os.fspath(directory)
        self.destination = destination
        self.max_bytes = max_bytes
        self.codec = codec
        self.path = os.path.join(self.directory, FILE_NAME)
        self.owner = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight: set[int] = set()  # seqs claimed through this handle and not yet settled
        for path in (self.directory, os.path.join(self.directory, OWNERS)):
            os.makedirs(path, mode=0o700, exist_ok=True)  # the mode applies only when it creates them
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # prompts are private: 0600 before SQLite opens it
        self.replace_damaged = replace_damaged
        self.recovered_from: str | None = None  # the copy of a damaged file this handle replaced, if it did
        self._owner_fd: int | None = _hold_owner_lock(self._owner_path(self.owner))
        self._db: sqlite3.Connection | None = None  # None: opened at the next use (after a fork)
        try:
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError as exc:
                self._db = self._replace_damaged(exc)
        except BaseException:
            self._release_owner_lock()
            raise
        try:
            self.adopt_orphans()
        except BaseException:
            self._db.close()
            self._release_owner_lock()
            raise
        forking.register(before=self._before_fork, after_in_parent=self._after_fork_in_parent,
                         after_in_child=self._after_fork_in_child)

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, destination={self.destination!r})"

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            _bound_wal(db, self.max_bytes)
            # executescript runs statement by statement: one IMMEDIATE transaction around it, so two
            # processes creating the file at once do not interleave.
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + _MIGRATE + "COMMIT;")
        except BaseException:
            db.close()
            raise
        return db

    # -- connection and fork -----------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open connection, under ``self._lock``; opened anew at the first use after a fork."""
        if self._closed:
            raise SpoolClosed(self.path)
        if self._db is None:
            if self._owner_fd is None:  # a forked child's first use: its lock file before it claims anything
                self._owner_fd = _hold_owner_lock(self._owner_path(self.owner))
            self._db = self._connect()
        return self._db

    def _before_fork(self) -> None:
        """Close the connection, holding the lock (so no transaction is open) until the fork is done.

        SQLite forbids carrying a connection across a fork, and abandoning it in the child is not
        enough: a new connection there would share the old one's lock bookkeeping and take no lock
        of its own on the file (seen in /proc/locks), so another process could delete the log or
        reset its index under it. So nothing of SQLite crosses; the parent reopens at its next use.
        A fork waits for a transaction in progress (milliseconds; at most the busy timeout).
        """
        self._lock.acquire()
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        """A new owner: the parent's in-flight records stay claimed by the parent, which settles them."""
        self._lock = threading.Lock()
        self.owner = uuid.uuid4().hex
        self._in_flight = set()
        if self._owner_fd is not None:
            # Closes only the child's copy: the parent keeps its flock, and its records are adopted
            # when the parent dies, not when every child it forked has died too.
            os.close(self._owner_fd)
            self._owner_fd = None

    # -- a damaged file ----------------------------------------------------------------------

    def check(self) -> None:
        """``PRAGMA quick_check`` on a connection of its own, so appends go on meanwhile; a damaged file is replaced
        (or, with ``replace_damaged=False``, raises ``SpoolDamaged``).

        It reads the whole file: 7 ms for 10k records of 1 KB (14 MiB) cached, 0.3 s from a cold
        disk, so it is not done on the application's thread (the delivery thread does it at start).
        """
        try:
            _verify(self.path, "quick_check")
        except sqlite3.DatabaseError as exc:
            if not self.replace_damaged:
                raise
            with self._lock, suppress(_Replaced):
                if self._closed:
                    raise SpoolClosed(self.path) from None
                self._replace_if_damaged(exc)

    def _replace_if_damaged(self, error: sqlite3.DatabaseError) -> None:
        """Called holding ``_lock``: when ``error`` says the file is damaged, replace it and raise ``_Replaced``."""
        if isinstance(error, _Replaced) or not _is_damage(error) or not self.replace_damaged:
            return
        if self._db is not None:
            self._db.close()
        self._db = self._replace_damaged(error)
        raise _Replaced(str(error)) from error

    def _replace_damaged(self, error: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Keep a copy of the damaged file for inspection, empty the spool, log one ERROR; a connection to it.

        Emptied in place through SQLite (an empty database backed up over it), never renamed: other
        processes' connections to the file see the change, where after a rename SQLite would, closing
        the last one, delete the new file's log by its name. One process does it, under a lock on the
        directory; the others then find the file sound and carry on.
        """
        if not _is_damage(error) or not self.replace_damaged:
            raise error
        with _directory_locked(self.directory):
            try:
                _verify(self.path, "integrity_check")
                return self._connect()  # sound: another process replaced it while this one waited
            except sqlite3.DatabaseError as exc:
                if not _is_damage(exc):
                    raise
            waiting, last_seq = _salvage_counts(self.path)
            kept = _keep_copy(self.path)
            _empty(self.path, last_seq)
            db = self._connect()
        _logger.error("The spool %s is damaged (%s): %s records that waited in it are not delivered. A copy is kept"
                      " at %s for inspection; the spool starts empty.", self.path, error,
                      "an unknown number of" if waiting is None else waiting, kept)
        self.recovered_from = kept
        return db

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: takes the write lock up front, so it never deadlocks upgrading."""
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:  # SQLite may have ended it already (a damaged file)
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._replace_if_damaged(exc)
                raise

    def _read(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            db = self._connection()
            try:
                return db.execute(sql, parameters).fetchall()
            except sqlite3.DatabaseError as exc:
                self._replace_if_damaged(exc)
                raise

    # -- the queue ---------------------------------------------------------------------------

    @_retried
    def append(self, records: Sequence[Any], *, refuse_when_full: bool = False) -> Appended:
        """Store records (the codec's items, or ``Encoded`` ones) as pending; past the bound, drop the oldest (a
        record alone over it is dropped itself).

        ``refuse_when_full``: dead letters still make room, pending records never do; if the records
        still do not fit, the transaction is rolled back and ``SpoolFull`` raised.
        """
        now = time.time()
        rows, too_big, total = [], 0, 0
        encode, identity = self.codec.encode, self.codec.identity
        for record in records:
            if type(record) is Encoded:
                body, key = record.body, record.identity
            else:
                body, key = encode(record), identity(record)
            size = len(body) if body.isascii() else len(body.encode("utf-8"))  # isascii() reads a flag: no copy
            if size > self.max_bytes:
                too_big += 1
                continue
            total += size
            rows.append((self.destination, key, body, size, now))
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO records (destination, partner_inference_id, body, size, enqueued_at)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            _add_totals(db, "records", len(rows), total)
            dropped = self._make_room(db, refuse_when_full)
        return Appended(len(rows), dropped + too_big)

    def _make_room(self, db: sqlite3.Connection, refuse_when_full: bool) -> int:
        excess = db.execute("SELECT SUM(bytes) FROM totals").fetchone()[0] - self.max_bytes
        if excess <= 0:
            return 0
        freed, _ = _delete_oldest(db, "dead_letters", "1", excess)
        if refuse_when_full and excess > freed:
            raise SpoolFull(f"{self.path} holds {self.max_bytes} bytes at most")  # _transaction rolls back
        _, dropped = _delete_oldest(db, "records", "owner IS NULL", excess - freed)
        return dropped

    @_retried
    def claim(self, limit: int, minimum: int = 1) -> list[Claimed]:
        """Take up to ``limit`` of this destination's oldest pending records; they are ours until settled.

        None unless at least ``minimum`` wait (a worker that just sent a full batch takes only another full one).
        """
        with self._transaction() as db:
            if minimum > 1 and db.execute(  # counted without reading the bodies of fewer than wanted
                    "SELECT COUNT(*) FROM (SELECT 1 FROM records WHERE destination = ? AND owner IS NULL LIMIT ?)",
                    (self.destination, minimum)).fetchone()[0] < minimum:
                return []
            rows = db.execute(
                "SELECT seq, partner_inference_id, body FROM records WHERE destination = ? AND owner IS NULL"
                " ORDER BY seq LIMIT ?",
                (self.destination, limit),
            ).fetchall()
            if rows:  # in this transaction the pending rows between the first and last claimed are exactly those
                db.execute("UPDATE records SET owner = ? WHERE destination = ? AND owner IS NULL AND seq BETWEEN ? AND ?",
                           (self.owner, self.destination, rows[0][0], rows[-1][0]))
        self._in_flight.update(row[0] for row in rows)  # once committed
        claimed = self.codec.claimed
        return [Claimed(seq, claimed(identity, body)) for seq, identity, body in rows]

    @_retried
    def settle(self, acked: Sequence[int] = (), refused: Sequence[Refused] = (), released: Sequence[int] = ()) -> None:
        """Delete the acknowledged, dead-letter the refused, return the released to pending: one transaction."""
        now = time.time()
        refused_seqs = {r.seq for r in refused}
        with self._transaction() as db:
            if (not refused and not released and len(acked) == len(self._in_flight)
                    and self._in_flight.issuperset(acked)):
                # Every record in flight acknowledged at once (the usual answer): this owner's rows in their seq
                # range are exactly those, so delete by range, not by a list of seqs (half the CPU).
                _delete_range(db, self.owner, min(acked), max(acked))
            else:
                self._settle_each(db, now, acked, refused, refused_seqs, released)
        # Once committed: a failed settle leaves its rows ours, so no later range may cover them.
        self._in_flight.difference_update(acked)
        self._in_flight.difference_update(refused_seqs)
        self._in_flight.difference_update(released)

    def _settle_each(self, db: sqlite3.Connection, now: float, acked: Sequence[int], refused: Sequence[Refused],
                     refused_seqs: set[int], released: Sequence[int]) -> None:
        db.executemany(
            "INSERT INTO dead_letters (seq, destination, partner_inference_id, body, size, reason, message,"
            " dead_at) SELECT seq, destination, partner_inference_id, body, size, ?, ?, ? FROM records"
            " WHERE seq = ? AND owner = ?",
            [(r.reason, r.message, now, r.seq, self.owner) for r in refused],
        )
        removed = dead = removed_bytes = dead_bytes = 0
        for chunk in _chunks([*acked, *refused_seqs]):
            for seq, size in db.execute(f"DELETE FROM records WHERE owner = ? AND seq IN ({_marks(chunk)})"
                                        " RETURNING seq, size", (self.owner, *chunk)):
                removed, removed_bytes = removed + 1, removed_bytes + size
                if seq in refused_seqs:  # moved: the insert above took the same rows (ours, by seq)
                    dead, dead_bytes = dead + 1, dead_bytes + size
        _add_totals(db, "records", -removed, -removed_bytes)
        _add_totals(db, "dead_letters", dead, dead_bytes)
        for chunk in _chunks(released):
            db.execute(f"UPDATE records SET owner = NULL WHERE owner = ? AND seq IN ({_marks(chunk)})",
                       (self.owner, *chunk))

    @_retried
    def pending(self, upto: int | None = None) -> int:
        """This destination's records not yet delivered or dead-lettered (with ``seq <= upto`` when given)."""
        sql = "SELECT COUNT(*) FROM records WHERE destination = ?"
        parameters: list[object] = [self.destination]
        if upto is not None:
            sql += " AND seq <= ?"
            parameters.append(upto)
        return int(self._read(sql, parameters)[0][0])

    @_retried
    def dead_lettered_since(self, since: float, upto: int) -> int:
        """This destination's records with ``seq <= upto`` dead-lettered at or after ``since`` (epoch seconds)."""
        return int(self._read("SELECT COUNT(*) FROM dead_letters WHERE destination = ? AND seq <= ? AND dead_at >= ?",
                              (self.destination, upto, since))[0][0])

    @_retried
    def last_seq(self) -> int:
        """The newest record of this destination, 0 when none waits."""
        return int(self._read("SELECT MAX(seq) FROM records WHERE destination = ?", (self.destination,))[0][0] or 0)

    @_retried
    def gauges(self) -> Gauges:
        totals = {name: (rows, size) for name, rows, size in self._read("SELECT name, rows, bytes FROM totals")}
        oldest = self._read("SELECT enqueued_at FROM records ORDER BY seq LIMIT 1")
        return Gauges(
            depth=totals["records"][0],
            bytes=totals["records"][1] + totals["dead_letters"][1],
            dead_letters=totals["dead_letters"][0],
            oldest_age=max(0.0, time.time() - oldest[0][0]) if oldest else 0.0,
        )

    def can_write(self) -> bool:
        """Whether ``PROBE_BYTES`` can be written and synced beside the spool now (a full disk, a read-only
        mount say no): a probe that needs no record, for readiness after a write failed."""
        probe = os.path.join(self.directory, f".write-probe-{self.owner}")
        try:
            descriptor = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.write(descriptor, bytes(PROBE_BYTES))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
                with suppress(OSError):
                    os.unlink(probe)
        except OSError:
            return False
        return True

    @_retried
    def dead_letters(self, *, everywhere: bool = False, reason: str | None = None, seqs: Sequence[int] | None = None,
                     destinations: Sequence[str] | None = None,
                     codec_of: Callable[[str], Codec] | None = None) -> list[dict[str, object]]:
        """Dead letters, oldest first: the record, why, Arthur's message, when, and ``seq`` to name it by.

        This destination's unless ``everywhere`` (or ``destinations``, those only); only ``reason``'s, or
        only ``seqs``, when given. Each record is decoded by ``codec_of(its destination)``, else this spool's codec.
        """
        where, parameters = self._matching(everywhere, reason, seqs, destinations)
        rows = self._read(
            "SELECT seq, destination, body, size, reason, message, dead_at FROM dead_letters"
            f" WHERE {where} ORDER BY seq", parameters)
        codec_of = codec_of or (lambda destination: self.codec)
        return [{"seq": seq, "destination": destination, "record": codec_of(destination).decode(body), "size": size,
                 "reason": reason, "message": message, "dead_at": dead_at}
                for seq, destination, body, size, reason, message, dead_at in rows]

    @_retried
    def requeue_dead_letters(self, *, everywhere: bool = False, reason: str | None = None,
                             seqs: Sequence[int] | None = None, destinations: Sequence[str] | None = None) -> int:
        """Move matching dead letters back to pending, as new arrivals (new ``seq``, enqueued now); how many.

        One transaction, so a crash leaves each either dead or pending, never both or neither. They
        are delivered by whichever process serves their destination.
        """
        where, parameters = self._matching(everywhere, reason, seqs, destinations)
        with self._transaction() as db:
            rows, size = db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM dead_letters WHERE {where}",
                                    parameters).fetchone()
            _add_totals(db, "records", rows, size)
            _add_totals(db, "dead_letters", -rows, -size)
            db.execute(
                "INSERT INTO records (destination, partner_inference_id, body, size, enqueued_at)"
                f" SELECT destination, partner_inference_id, body, size, ? FROM dead_letters WHERE {where}"
                " ORDER BY seq", [time.time(), *parameters])
            return db.execute(f"DELETE FROM dead_letters WHERE {where}", parameters).rowcount

    @_retried
    def purge(self, *, dead_letters: bool = True, pending: bool = False, everywhere: bool = False,
              reason: str | None = None, destinations: Sequence[str] | None = None, dry_run: bool = False) -> Purged:
        """Delete matching dead letters and/or pending records (what ``dry_run`` only counts).

        Records in flight are left alone: their process settles them. ``reason`` applies to dead letters.
        """
        rows = size = 0
        with self._transaction() as db:
            for table, wanted, (where, parameters) in (
                ("dead_letters", dead_letters, self._matching(everywhere, reason, None, destinations)),
                ("records", pending, self._matching(everywhere, None, None, destinations)),
            ):
                if not wanted:
                    continue
                where = where if table == "dead_letters" else f"{where} AND owner IS NULL"
                count, total = db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {table} WHERE {where}",
                                          parameters).fetchone()
                if not dry_run:
                    db.execute(f"DELETE FROM {table} WHERE {where}", parameters)
                    _add_totals(db, table, -count, -total)
                rows, size = rows + count, size + total
        return Purged(rows, size)

    @_retried
    def inventory(self) -> list[Inventory]:
        """The whole file by destination: what waits (pending, in flight), its bytes, the oldest, dead letters by reason."""
        found: dict[str, dict[str, object]] = {}
        for destination, pending, in_flight, size, oldest in self._read(
                "SELECT destination, SUM(owner IS NULL), SUM(owner IS NOT NULL), SUM(size), MIN(enqueued_at)"
                " FROM records GROUP BY destination"):
            found[destination] = {"pending": pending, "in_flight": in_flight, "bytes": size,
                                  "oldest_enqueued_at": oldest, "dead_letters": {}}
        for destination, reason, count, size in self._read(
                "SELECT destination, reason, COUNT(*), SUM(size) FROM dead_letters GROUP BY destination, reason"):
            entry = found.setdefault(destination, {"pending": 0, "in_flight": 0, "bytes": 0,
                                                   "oldest_enqueued_at": None, "dead_letters": {}})
            entry["dead_letters"][reason] = count  # type: ignore[index]
            entry["bytes"] += size  # type: ignore[operator]
        return [Inventory(destination, **entry) for destination, entry in sorted(found.items())]  # type: ignore[arg-type]

    def _matching(self, everywhere: bool, reason: str | None, seqs: Sequence[int] | None,
                  destinations: Sequence[str] | None = None) -> tuple[str, list[object]]:
        """A WHERE clause (and its parameters) for this destination's rows, every one's, or ``destinations``'."""
        clauses, parameters = (["1"], []) if everywhere else (["destination = ?"], [self.destination])
        if destinations is not None:
            clauses = [f"destination IN ({', '.join('?' * len(destinations))})" if destinations else "0"]
            parameters = list(destinations)
        if reason is not None:
            clauses.append("reason = ?")
            parameters.append(reason)
        if seqs is not None:
            clauses.append(f"seq IN ({', '.join('?' * len(seqs))})" if seqs else "0")
            parameters.extend(int(seq) for seq in seqs)
        return " AND ".join(clauses), parameters

    # -- owners ------------------------------------------------------------------------------

    def _owner_path(self, owner: str) -> str:
        return os.path.join(self.directory, OWNERS, f"{owner}.lock")

    @_retried
    def adopt_orphans(self) -> int:
        """Return to pending the in-flight rows of owners that are gone; sweep their lock files. How many rows."""
        owners = [row[0] for row in self._read(
            "SELECT DISTINCT owner FROM records WHERE owner IS NOT NULL AND owner != ?", (self.owner,))]
        adopted = 0
        for owner in owners:
            if _OWNER_ID.match(owner) and _is_held(self._owner_path(owner)):
                continue
            with self._transaction() as db:
                adopted += db.execute("UPDATE records SET owner = NULL WHERE owner = ?", (owner,)).rowcount
        self._sweep_lock_files()
        if adopted:
            _logger.info("Re-queued %d in-flight records left by processes that are gone (%s)", adopted, self.path)
        return adopted

    def _sweep_lock_files(self) -> None:
        for name in os.listdir(os.path.join(self.directory, OWNERS)):
            if name.endswith(".lock"):
                _is_held(os.path.join(self.directory, OWNERS, name))  # removes it when nobody holds it

    def _release_owner_lock(self) -> None:
        if self._owner_fd is None:  # a forked child that never used the spool: it has no lock file
            return
        with suppress(FileNotFoundError):
            os.unlink(self._owner_path(self.owner))
        os.close(self._owner_fd)
        self._owner_fd = None

    def close(self) -> None:
        """Return our in-flight records to pending and let go of the file. Idempotent.

        Call it only once nothing is being sent: a record released while its POST is still on the
        wire could be claimed and sent again by another process.
        """
        with self._lock:
            if self._closed:
                return
            if self._owner_fd is not None:  # else a forked child that never used the spool: it owns nothing
                db = self._connection()
                db.execute("UPDATE records SET owner = NULL WHERE owner = ?", (self.owner,))
                db.close()
                self._in_flight.clear()
            self._db = None
            self._closed = True
            self._release_owner_lock()


def _delete_oldest(db: sqlite3.Connection, table: str, condition: str, excess: int) -> tuple[int, int]:
    """Delete the oldest rows of ``table`` matching ``condition`` until ``excess`` bytes are freed: (bytes, rows)."""
    if excess <= 0:
        return 0, 0
    freed, last = 0, None
    for seq, size in db.execute(f"SELECT seq, size FROM {table} WHERE {condition} ORDER BY seq"):
        freed, last = freed + size, seq
        if freed >= excess:
            break
    if last is None:
        return 0, 0
    deleted = db.execute(f"DELETE FROM {table} WHERE seq <= ? AND {condition}", (last,)).rowcount
    _add_totals(db, table, -deleted, -freed)
    return freed, deleted


def _delete_range(db: sqlite3.Connection, owner: str, first: int, last: int) -> None:
    """Delete ``owner``'s rows with ``first <= seq <= last``, keeping the totals."""
    rows, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE owner = ? AND seq BETWEEN ? AND ?",
                            (owner, first, last)).fetchone()
    db.execute("DELETE FROM records WHERE owner = ? AND seq BETWEEN ? AND ?", (owner, first, last))
    _add_totals(db, "records", -rows, -size)


def _add_totals(db: sqlite3.Connection, table: str, rows: int, size: int) -> None:
    """Keep ``totals`` in step with rows added to (or, negative, removed from) ``table`` in this transaction."""
    if rows:
        db.execute("UPDATE totals SET rows = rows + ?, bytes = bytes + ? WHERE name = ?", (rows, size, table))


def _chunks(seqs: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(seqs), _IN_CHUNK):
        yield seqs[start:start + _IN_CHUNK]


def _marks(chunk: Sequence[int]) -> str:
    return ", ".join("?" * len(chunk))


def _use_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting like any other statement when another process holds the file.

    While another process is switching the same new file to WAL, SQLite answers "database is
    locked" at once, without its busy timeout (two exporters started together lost one spool).
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _bound_wal(db: sqlite3.Connection, max_bytes: int) -> None:
    """Keep the write-ahead log a fraction of the bound: a checkpoint once it holds a quarter of the bound
    (at most SQLite's 1000 pages), and the log cut back to that size after it (SQLite would leave it at its largest).

    Without this a 1 MiB spool kept a 4 MiB log beside it for good (7.7 MB on disk in all).
    """
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = max(WAL_MIN_PAGES, min(WAL_MAX_PAGES, max_bytes // 4 // page_size))
    db.execute(f"PRAGMA wal_autocheckpoint={pages}")
    db.execute(f"PRAGMA journal_size_limit={pages * page_size}")


def damaged_copies(directory: str) -> list[str]:
    """The copies of damaged spool files kept in ``directory``, oldest first."""
    prefix = FILE_NAME + CORRUPT_MARK
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.startswith(prefix) and not name.endswith(("-wal", "-shm")))


@contextmanager
def _directory_locked(directory: str) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and with it the lock


def _verify(path: str, pragma: str) -> None:
    """Raise ``SpoolDamaged`` unless ``PRAGMA quick_check`` (or ``integrity_check``) finds the file sound."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    try:
        found = db.execute(f"PRAGMA {pragma}(1)").fetchone()[0]
    finally:
        db.close()
    if found != "ok":
        raise SpoolDamaged(f"damaged, {pragma} says: {found.splitlines()[-1]}")


def _salvage_counts(path: str) -> tuple[int | None, int]:
    """What can still be read of a damaged file: records waiting (None if unreadable) and the last seq handed out."""
    waiting, last_seq = None, 0
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    try:
        with suppress(sqlite3.DatabaseError, TypeError):
            waiting = int(db.execute("SELECT rows FROM totals WHERE name = 'records'").fetchone()[0])
        with suppress(sqlite3.DatabaseError, TypeError):
            last_seq = int(db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()[0])
    finally:
        db.close()
    return waiting, last_seq


def _keep_copy(path: str) -> str:
    """Copy the file and its log to ``<path>.corrupt-<UTC time>`` (and ``-wal``), as SQLite can open them; the name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept, taken = f"{path}{CORRUPT_MARK}{stamp}", 1
    while os.path.exists(kept):
        taken += 1
        kept = f"{path}{CORRUPT_MARK}{stamp}-{taken}"
    shutil.copy(path, kept)  # with its 0600 mode: it holds prompts
    if os.path.exists(f"{path}-wal"):
        shutil.copy(f"{path}-wal", f"{kept}-wal")
    return kept


def _empty(path: str, last_seq: int) -> None:
    """Make ``path`` an empty spool, its seq going on after ``last_seq`` (processes may still settle older ones).

    SQLite's backup writes an empty spool over it, through the log like any transaction. A file
    whose header SQLite cannot read is replaced instead: nobody can have been using it.
    """
    empty = sqlite3.connect(":memory:")
    empty.executescript(_SCHEMA)
    empty.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (last_seq,))
    empty.commit()
    target = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
    try:
        empty.backup(target)
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        target.close()
        for name in (f"{path}-wal", f"{path}-shm", path):
            with suppress(FileNotFoundError):
                os.unlink(name)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        target = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
        empty.backup(target)
    finally:
        target.close()
        empty.close()


def _hold_owner_lock(path: str) -> int:
    """Create ``path`` already locked (locked under a temporary name, then renamed); the fd keeps the lock."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temporary, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_held(path: str) -> bool:
    """Whether a live process holds this owner lock; a lock file nobody holds is removed."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        # Its owner is gone and we hold its lock now: nobody can be relying on the name.
        with suppress(FileNotFoundError):  # another process adopting at the same moment
            os.unlink(path)
        return False
    finally:
        os.close(fd)
