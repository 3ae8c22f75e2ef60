"""The spool: a durable, bounded queue of inference records on disk, shared safely between processes.

Layout::

    $ARTHUR_SPOOL_DIR/             default $XDG_STATE_HOME/otel-arthur, else ~/.local/state/otel-arthur (0700)
    ├── spool.sqlite3              SQLite in WAL mode (0600), the tables below
    ├── spool.sqlite3-wal, -shm    SQLite's write-ahead log and its index
    └── owners/
        └── <owner>.lock           one per open Spool, flock()ed for as long as its process lives

    records       seq │ destination │ partner_inference_id │ body │ size │ enqueued_at │ owner
                  seq is arrival order; body is the InferenceRecord as JSON, size its UTF-8 bytes;
                  owner NULL = pending, else in flight, claimed by that Spool
    dead_letters  seq │ destination │ partner_inference_id │ body │ size │ reason │ message │ dead_at
    totals        name ('records' | 'dead_letters') │ rows │ bytes, kept by triggers: the bound costs no scan

Protocol, at least once like the Collector's persistent queue:

    append  INSERT pending rows. Past ``max_bytes`` the oldest dead letters go first (they were logged and
            counted, and will never be sent), then the oldest pending records, counted as dropped ``spool_full``;
            or, with ``refuse_when_full`` (``serve``, whose clients retry), nothing is stored: ``SpoolFull``.
    claim   mark the oldest pending rows of this destination as ours, in one IMMEDIATE transaction.
    settle  in one transaction: delete the acknowledged, move the refused to dead_letters, return the rest
            to pending. A crash before ``settle`` re-sends at most that claim: the bound on duplicates.
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

``synchronous=NORMAL`` in WAL mode: a commit survives the process being killed, not necessarily a
power cut, and costs no fsync per exported batch. Rows hold what spans said (prompts, completions)
and the destination (URL without user info, model id): never a credential.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from otel_arthur.mapping import InferenceRecord

try:
    import fcntl
except ImportError:  # Windows: the spool refuses to open, saying why (see Spool.__init__)
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

FILE_NAME = "spool.sqlite3"
OWNERS = "owners"
BUSY_TIMEOUT = 10.0  # seconds to wait for another process's write lock; transactions take milliseconds
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
_TRIGGERS = "".join(
    f"""
CREATE TRIGGER IF NOT EXISTS {table}_added AFTER INSERT ON {table} BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + NEW.size WHERE name = '{table}';
END;
CREATE TRIGGER IF NOT EXISTS {table}_removed AFTER DELETE ON {table} BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - OLD.size WHERE name = '{table}';
END;
"""
    for table in ("records", "dead_letters")
)


class SpoolClosed(RuntimeError):
    """The spool was closed; nothing more can be read or written through this handle."""


class SpoolFull(RuntimeError):
    """``append(…, refuse_when_full=True)``: the records do not fit under the bound; none was stored."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A record taken from the spool by ``claim``; ``seq`` settles it."""

    seq: int
    record: InferenceRecord


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


_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode(record: InferenceRecord) -> str:
    # The dict asdict() would build, without its recursive deep copy (which cost more than the rest of export()).
    return _encode_json({"partner_inference_id": record.partner_inference_id,
                         "inference_timestamp": record.inference_timestamp, "fields": record.fields})


def decode(body: str) -> InferenceRecord:
    return InferenceRecord(**json.loads(body))


class Spool:
    """One process's handle on a spool directory, for one destination.

    Thread-safe: one connection behind one lock (the exporter's thread appends while the worker
    claims and settles). Writes are short IMMEDIATE transactions, so other processes wait for
    milliseconds at most.
    """

    def __init__(self, directory: str | os.PathLike[str], destination: str, max_bytes: int) -> None:
        if fcntl is None:
            raise OSError("the spool needs flock() (POSIX); it is not available on this platform")
        self.directory = os.fspath(directory)
        self.destination = destination
        self.max_bytes = max_bytes
        self.path = os.path.join(self.directory, FILE_NAME)
        self.owner = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._closed = False
        for path in (self.directory, os.path.join(self.directory, OWNERS)):
            os.makedirs(path, mode=0o700, exist_ok=True)  # the mode applies only when it creates them
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # prompts are private: 0600 before SQLite opens it
        self._owner_fd = _hold_owner_lock(self._owner_path(self.owner))
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            _use_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            # executescript runs statement by statement: one IMMEDIATE transaction around it, so two
            # processes creating the file at once do not interleave.
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + _TRIGGERS + "COMMIT;")
            self.adopt_orphans()
        except BaseException:
            self._db.close()
            self._release_owner_lock()
            raise

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, destination={self.destination!r})"

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: takes the write lock up front, so it never deadlocks upgrading."""
        with self._lock:
            if self._closed:
                raise SpoolClosed(self.path)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            if self._closed:
                raise SpoolClosed(self.path)
            return self._db.execute(sql, parameters).fetchall()

    # -- the queue ---------------------------------------------------------------------------

    def append(self, records: Sequence[InferenceRecord], *, refuse_when_full: bool = False) -> Appended:
        """Store records as pending; past the bound, drop the oldest (a record alone over it is dropped itself).

        ``refuse_when_full``: dead letters still make room, pending records never do; if the records
        still do not fit, the transaction is rolled back and ``SpoolFull`` raised.
        """
        now = time.time()
        rows, too_big = [], 0
        for record in records:
            body = encode(record)
            size = len(body.encode("utf-8"))
            if size > self.max_bytes:
                too_big += 1
                continue
            rows.append((self.destination, record.partner_inference_id, body, size, now))
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO records (destination, partner_inference_id, body, size, enqueued_at)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
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

    def claim(self, limit: int) -> list[Claimed]:
        """Take up to ``limit`` of this destination's oldest pending records; they are ours until settled."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT seq, body FROM records WHERE destination = ? AND owner IS NULL ORDER BY seq LIMIT ?",
                (self.destination, limit),
            ).fetchall()
            db.executemany("UPDATE records SET owner = ? WHERE seq = ?", [(self.owner, seq) for seq, _ in rows])
        return [Claimed(seq, decode(body)) for seq, body in rows]

    def settle(self, acked: Sequence[int] = (), refused: Sequence[Refused] = (), released: Sequence[int] = ()) -> None:
        """Delete the acknowledged, dead-letter the refused, return the released to pending: one transaction."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO dead_letters (seq, destination, partner_inference_id, body, size, reason, message,"
                " dead_at) SELECT seq, destination, partner_inference_id, body, size, ?, ?, ? FROM records"
                " WHERE seq = ? AND owner = ?",
                [(r.reason, r.message, now, r.seq, self.owner) for r in refused],
            )
            db.executemany(
                "DELETE FROM records WHERE seq = ? AND owner = ?",
                [(seq, self.owner) for seq in [*acked, *(r.seq for r in refused)]],
            )
            db.executemany(
                "UPDATE records SET owner = NULL WHERE seq = ? AND owner = ?", [(seq, self.owner) for seq in released]
            )

    def pending(self, upto: int | None = None) -> int:
        """This destination's records not yet delivered or dead-lettered (with ``seq <= upto`` when given)."""
        sql = "SELECT COUNT(*) FROM records WHERE destination = ?"
        parameters: list[object] = [self.destination]
        if upto is not None:
            sql += " AND seq <= ?"
            parameters.append(upto)
        return int(self._read(sql, parameters)[0][0])

    def dead_lettered_since(self, since: float, upto: int) -> int:
        """This destination's records with ``seq <= upto`` dead-lettered at or after ``since`` (epoch seconds)."""
        return int(self._read("SELECT COUNT(*) FROM dead_letters WHERE destination = ? AND seq <= ? AND dead_at >= ?",
                              (self.destination, upto, since))[0][0])

    def last_seq(self) -> int:
        """The newest record of this destination, 0 when none waits."""
        return int(self._read("SELECT MAX(seq) FROM records WHERE destination = ?", (self.destination,))[0][0] or 0)

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

    def dead_letters(self, *, everywhere: bool = False, reason: str | None = None,
                     seqs: Sequence[int] | None = None) -> list[dict[str, object]]:
        """Dead letters, oldest first: the record, why, Arthur's message, when, and ``seq`` to name it by.

        This destination's unless ``everywhere``; only ``reason``'s, or only ``seqs``, when given.
        """
        where, parameters = self._matching(everywhere, reason, seqs)
        rows = self._read(
            "SELECT seq, destination, body, size, reason, message, dead_at FROM dead_letters"
            f" WHERE {where} ORDER BY seq", parameters)
        return [{"seq": seq, "destination": destination, "record": decode(body), "size": size, "reason": reason,
                 "message": message, "dead_at": dead_at}
                for seq, destination, body, size, reason, message, dead_at in rows]

    def requeue_dead_letters(self, *, everywhere: bool = False, reason: str | None = None,
                             seqs: Sequence[int] | None = None) -> int:
        """Move matching dead letters back to pending, as new arrivals (new ``seq``, enqueued now); how many.

        One transaction, so a crash leaves each either dead or pending, never both or neither. They
        are delivered by whichever process serves their destination.
        """
        where, parameters = self._matching(everywhere, reason, seqs)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO records (destination, partner_inference_id, body, size, enqueued_at)"
                f" SELECT destination, partner_inference_id, body, size, ? FROM dead_letters WHERE {where}"
                " ORDER BY seq", [time.time(), *parameters])
            return db.execute(f"DELETE FROM dead_letters WHERE {where}", parameters).rowcount

    def purge(self, *, dead_letters: bool = True, pending: bool = False, everywhere: bool = False,
              reason: str | None = None, dry_run: bool = False) -> Purged:
        """Delete matching dead letters and/or pending records (what ``dry_run`` only counts).

        Records in flight are left alone: their process settles them. ``reason`` applies to dead letters.
        """
        rows = size = 0
        with self._transaction() as db:
            for table, wanted, (where, parameters) in (
                ("dead_letters", dead_letters, self._matching(everywhere, reason, None)),
                ("records", pending, self._matching(everywhere, None, None)),
            ):
                if not wanted:
                    continue
                where = where if table == "dead_letters" else f"{where} AND owner IS NULL"
                count, total = db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {table} WHERE {where}",
                                          parameters).fetchone()
                if not dry_run:
                    db.execute(f"DELETE FROM {table} WHERE {where}", parameters)
                rows, size = rows + count, size + total
        return Purged(rows, size)

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

    def _matching(self, everywhere: bool, reason: str | None, seqs: Sequence[int] | None) -> tuple[str, list[object]]:
        """A WHERE clause (and its parameters) for rows of this destination, or every one, narrowed down."""
        clauses, parameters = (["1"], []) if everywhere else (["destination = ?"], [self.destination])
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
        with suppress(FileNotFoundError):
            os.unlink(self._owner_path(self.owner))
        os.close(self._owner_fd)

    def close(self) -> None:
        """Return our in-flight records to pending and let go of the file. Idempotent.

        Call it only once nothing is being sent: a record released while its POST is still on the
        wire could be claimed and sent again by another process.
        """
        with self._lock:
            if self._closed:
                return
            self._db.execute("UPDATE records SET owner = NULL WHERE owner = ?", (self.owner,))
            self._db.close()
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
    return freed, deleted


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
