"""SQLite storage behind the local Arthur: models, inferences (duplicates flagged) and request counts."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import datetime, timezone
from typing import Any

from otel_arthur.local.arthur_schema import InferenceRecord
from otel_arthur.local.stand_in import REQUESTS_TABLE, count_request, request_counts

_encode_json = json.JSONEncoder().encode  # json.dumps(), without building an encoder per row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    partner_model_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL                        -- the model as GET /models/{id} answers it
);
CREATE TABLE IF NOT EXISTS inferences (
    seq INTEGER PRIMARY KEY,                  -- arrival order (rows are never deleted)
    model_id TEXT NOT NULL REFERENCES models (id),
    partner_inference_id TEXT NOT NULL,
    inference_timestamp TEXT NOT NULL,
    batch_id TEXT,
    inference_data TEXT NOT NULL,             -- JSON object
    received_at TEXT NOT NULL,
    duplicate INTEGER NOT NULL                -- 1: the model already had this partner_inference_id
);
-- By model, in arrival order: new rows append at the end of their model's range. An index on the
-- (random) partner ids dirtied a page per row, most of a batch's cost; duplicates are found in memory.
DROP INDEX IF EXISTS inferences_by_partner_id;
CREATE INDEX IF NOT EXISTS inferences_by_model ON inferences (model_id);
"""

class ModelExists(Exception):
    """A model with this partner_model_id is already stored."""


class LocalArthurStore:
    """Models, inferences and request counts in one SQLite database; safe to share between threads.

    One connection behind one lock, so ``":memory:"`` works as well as a file; a file is opened in
    WAL mode so another process (the demo, a second store) can read while the server writes. One
    store writes to a file at a time: each model's stored partner ids are read once, at its first
    batch, and then kept in memory to flag duplicates.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = os.fspath(db_path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._partner_ids: dict[str, set[str]] = {}  # model id -> partner ids stored; under the lock
        with self._lock, self._db:
            if self.db_path != ":memory:":
                # For a new file: a batch of rows then takes a quarter of the WAL frames (and writes).
                self._db.execute("PRAGMA page_size=16384")
                self._db.execute("PRAGMA journal_mode=WAL")
                # WAL commits without fsync: a crashed server loses nothing, a crashed OS at most
                # the last transactions; a commit per request then costs no disk flush.
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA + REQUESTS_TABLE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_model(self, model: dict[str, Any]) -> None:
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT INTO models (id, partner_model_id, body) VALUES (?, ?, ?)",
                    (model["id"], model["partner_model_id"], json.dumps(model)),
                )
        except sqlite3.IntegrityError as exc:
            raise ModelExists(model["partner_model_id"]) from exc

    def get_model(self, identifier: str, id_type: str = "id") -> dict[str, Any] | None:
        column = {"id": "id", "partner_model_id": "partner_model_id"}[id_type]
        with self._lock:
            row = self._db.execute(f"SELECT body FROM models WHERE {column} = ?", (identifier,)).fetchone()
        return None if row is None else json.loads(row["body"])

    def add_inferences(self, model_id: str, records: list[InferenceRecord]) -> None:
        """Store accepted rows in one transaction, flagging partner ids the model has seen before."""
        received_at = datetime.now(timezone.utc).isoformat()
        with self._lock:
            stored = self._stored_partner_ids(model_id)
            added: set[str] = set()
            rows = []
            for partner_inference_id, timestamp, batch_id, data in records:
                duplicate = partner_inference_id in stored or partner_inference_id in added
                added.add(partner_inference_id)
                rows.append((model_id, partner_inference_id, timestamp, batch_id, _encode_json(data), received_at,
                             duplicate))
            with self._db:
                self._db.executemany(
                    "INSERT INTO inferences (model_id, partner_inference_id, inference_timestamp, batch_id,"
                    " inference_data, received_at, duplicate) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            stored |= added  # only once committed

    def _stored_partner_ids(self, model_id: str) -> set[str]:
        """The model's stored partner ids, read from the database the first time; call under the lock."""
        stored = self._partner_ids.get(model_id)
        if stored is None:
            rows = self._db.execute("SELECT partner_inference_id FROM inferences WHERE model_id = ?", (model_id,))
            stored = self._partner_ids[model_id] = {row[0] for row in rows}
        return stored

    def inferences(self, model_id: str) -> list[dict[str, Any]]:
        """The model's stored rows, duplicates included, in arrival order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT partner_inference_id, inference_timestamp, batch_id, inference_data, received_at, duplicate"
                " FROM inferences WHERE model_id = ? ORDER BY seq",
                (model_id,),
            ).fetchall()
        return [
            {
                "partner_inference_id": row["partner_inference_id"],
                "inference_timestamp": row["inference_timestamp"],
                "batch_id": row["batch_id"],
                "inference_data": json.loads(row["inference_data"]),
                "received_at": row["received_at"],
                "duplicate": bool(row["duplicate"]),
            }
            for row in rows
        ]

    def duplicates(self, model_id: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM inferences WHERE model_id = ? AND duplicate = 1", (model_id,)
            ).fetchone()
        return int(row[0])

    def count_request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            count_request(self._db, method, path, status)

    def stats(self) -> dict[str, Any]:
        """Counts, shaped as ``GET /_local/stats`` answers them::

        {"models": 1, "inferences": 3, "duplicates": 1,
         "by_model": {"<id>": {"inferences": 3, "duplicates": 1}},
         "requests": {"POST /api/v3/models/{model_id}/inferences": {"207": 2, "401": 1}}}
        """
        with self._lock:
            models = self._db.execute("SELECT COUNT(*) FROM models").fetchone()[0]
            per_model = self._db.execute(
                "SELECT model_id, COUNT(*), SUM(duplicate) FROM inferences GROUP BY model_id"
            ).fetchall()
            by_path = request_counts(self._db)
        by_model = {row[0]: {"inferences": row[1], "duplicates": row[2]} for row in per_model}
        return {
            "models": models,
            "inferences": sum(m["inferences"] for m in by_model.values()),
            "duplicates": sum(m["duplicates"] for m in by_model.values()),
            "by_model": by_model,
            "requests": by_path,
        }
