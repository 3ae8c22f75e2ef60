"""SQLite storage behind the local Arthur Engine: tasks, service-name mappings, spans and request counts.

``spans.task_id`` is a foreign key, enforced, as in the Engine: spans routed to a task that does not
exist fail their whole insert (``sqlite3.IntegrityError``) and nothing of the request is stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from otel_arthur.local.stand_in import REQUESTS_TABLE, count_request, request_counts

# The Engine's own constants (utils/constants.py): the task that takes spans without a service.name.
UNMAPPED_TASK_ID = "539b1da6-ebf8-4fe2-91e5-db2dc8ff626d"
UNMAPPED_TASK_NAME = "__unmapped__"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,              -- milliseconds since the epoch, as the Engine answers it
    is_agentic INTEGER NOT NULL,
    is_autocreated INTEGER NOT NULL,
    is_system_task INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS service_name_mappings (
    service_name TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id)
);
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY,                  -- arrival order
    trace_id TEXT NOT NULL,                   -- lowercase hex, as the Engine stores ids
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,                       -- OTLP SpanKind name, e.g. SPAN_KIND_CLIENT
    start_time_unix_nano INTEGER NOT NULL,
    end_time_unix_nano INTEGER NOT NULL,
    status_code TEXT NOT NULL,                -- Unset, Ok or Error
    task_id TEXT NOT NULL REFERENCES tasks (id),
    attributes TEXT NOT NULL,                 -- JSON object
    resource_attributes TEXT NOT NULL,        -- JSON object
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_by_task ON spans (task_id);
CREATE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_id);
"""

_PLAIN_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_time_unix_nano",
                  "end_time_unix_nano", "status_code", "task_id")
_JSON_COLUMNS = ("attributes", "resource_attributes")
_INSERT_SPAN = (f"INSERT INTO spans ({', '.join(_PLAIN_COLUMNS + _JSON_COLUMNS)}, received_at)"
                f" VALUES ({', '.join('?' * (len(_PLAIN_COLUMNS) + len(_JSON_COLUMNS) + 1))})")


@dataclass(frozen=True)
class SpanRow:
    """One accepted span as stored; attributes are plain JSON-ready values."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: str
    task_id: str
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]


class LocalEngineStore:
    """Tasks, mappings, spans and request counts in one SQLite database; safe to share between threads.

    One connection behind one lock, so ``":memory:"`` works as well as a file (opened in WAL mode so
    another process can read while the server writes).
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = os.fspath(db_path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            # Per connection, and outside any transaction: SQLite leaves foreign keys unchecked by default.
            self._db.execute("PRAGMA foreign_keys=ON")
            if self.db_path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA + REQUESTS_TABLE)
            with self._db:
                self._db.execute("INSERT OR IGNORE INTO tasks VALUES (?, ?, ?, 0, 0, 1)",
                                 (UNMAPPED_TASK_ID, UNMAPPED_TASK_NAME, _now_ms()))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- tasks --------------------------------------------------------------------------------------

    def create_task(self, name: str, *, is_agentic: bool = False) -> dict[str, Any]:
        with self._lock:
            return self._create_task(name, is_agentic=is_agentic, is_autocreated=False)

    def _create_task(self, name: str, *, is_agentic: bool, is_autocreated: bool) -> dict[str, Any]:
        """Call under the lock."""
        task_id = str(uuid.uuid4())
        with self._db:
            self._db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, 0)",
                             (task_id, name, _now_ms(), is_agentic, is_autocreated))
        return self._task(task_id)  # type: ignore[return-value]  # just inserted

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._task(task_id)

    def _task(self, task_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else self._task_dict(row)

    def _task_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        service_names = [r[0] for r in self._db.execute(
            "SELECT service_name FROM service_name_mappings WHERE task_id = ? ORDER BY service_name", (row["id"],))]
        return {
            "id": row["id"],
            "name": row["name"],
            "created_at": row["created_at"],
            "is_agentic": bool(row["is_agentic"]),
            "is_autocreated": bool(row["is_autocreated"]),
            "is_system_task": bool(row["is_system_task"]),
            "service_names": service_names,
        }

    def tasks(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tasks ORDER BY created_at, id").fetchall()
            return [self._task_dict(row) for row in rows]

    def map_service_name(self, service_name: str, task_id: str) -> None:
        """Route spans of ``service_name`` (without ``arthur.task``) to ``task_id`` from now on."""
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO service_name_mappings VALUES (?, ?)", (service_name, task_id))

    def resolve_task(self, explicit_task_id: str | None, service_name: str | None) -> str:
        """The Engine's routing (``_resolve_task_id``), first match wins: ``arthur.task`` as given (known
        or not), the service name's mapping, a task auto-created for the service name (and mapped to
        it), else the ``__unmapped__`` task."""
        if explicit_task_id:
            return explicit_task_id
        if not service_name or not service_name.strip():
            return UNMAPPED_TASK_ID
        with self._lock:
            row = self._db.execute(
                "SELECT task_id FROM service_name_mappings WHERE service_name = ?", (service_name,)).fetchone()
            if row is not None:
                return str(row[0])
            task = self._create_task(service_name, is_agentic=True, is_autocreated=True)
            with self._db:
                self._db.execute("INSERT INTO service_name_mappings VALUES (?, ?)", (service_name, task["id"]))
            return str(task["id"])

    # --- spans --------------------------------------------------------------------------------------

    def add_spans(self, spans: list[SpanRow]) -> None:
        """Store all of ``spans`` in one transaction, or none: ``sqlite3.IntegrityError`` for an unknown task."""
        received_at = _now()
        rows = [(*(getattr(span, column) for column in _PLAIN_COLUMNS),
                 *(json.dumps(getattr(span, column)) for column in _JSON_COLUMNS), received_at) for span in spans]
        with self._lock, self._db:
            self._db.executemany(_INSERT_SPAN, rows)

    def spans(self, *, task_id: str | None = None, trace_id: str | None = None) -> list[dict[str, Any]]:
        """Stored spans in arrival order, optionally only one task's and/or one trace's."""
        where = [(f"{column} = ?", value) for column, value in (("task_id", task_id), ("trace_id", trace_id))
                 if value is not None]
        sql = "SELECT * FROM spans" + (" WHERE " + " AND ".join(c for c, _ in where) if where else "") + " ORDER BY seq"
        with self._lock:
            rows = self._db.execute(sql, [v for _, v in where]).fetchall()
        return [
            {column: row[column] for column in _PLAIN_COLUMNS}
            | {column: json.loads(row[column]) for column in _JSON_COLUMNS}
            | {"received_at": row["received_at"]}
            for row in rows
        ]

    # --- requests -----------------------------------------------------------------------------------

    def count_request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            count_request(self._db, method, path, status)

    def stats(self) -> dict[str, Any]:
        """Counts, shaped as ``GET /_local/stats`` answers them::

        {"tasks": 2, "spans": 3, "by_task": {"<id>": 3},
         "requests": {"POST /api/v1/traces": {"200": 2, "401": 1}}}
        """
        with self._lock:
            tasks = self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            by_task = dict(self._db.execute("SELECT task_id, COUNT(*) FROM spans GROUP BY task_id").fetchall())
            by_path = request_counts(self._db)
        return {"tasks": tasks, "spans": sum(by_task.values()), "by_task": by_task, "requests": by_path}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
