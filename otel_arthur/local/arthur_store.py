"""SQLite storage behind the local Arthur: models, inferences (duplicates flagged) and request counts."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import datetime, timezone
from typing import Any

from otel_arthur.local.arthur_schema import InferenceRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    partner_model_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL                        -- the model as GET /models/{id} answers it
);
CREATE TABLE IF NOT EXISTS inferences (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,    -- arrival order
    model_id TEXT NOT NULL REFERENCES models (id),
    partner_inference_id TEXT NOT NULL,
    inference_timestamp TEXT NOT NULL,
    batch_id TEXT,
    inference_data TEXT NOT NULL,             -- JSON object
    received_at TEXT NOT NULL,
    duplicate INTEGER NOT NULL                -- 1: the model already had this partner_inference_id
);
CREATE INDEX IF NOT EXISTS inferences_by_partner_id ON inferences (model_id, partner_inference_id);
CREATE TABLE IF NOT EXISTS requests (
    method TEXT NOT NULL,
    path TEXT NOT NULL,                       -- the route template, e.g. /api/v3/models/{model_id}
    status INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (method, path, status)
);
"""


class ModelExists(Exception):
    """A model with this partner_model_id is already stored."""


class LocalArthurStore:
    """Models, inferences and request counts in one SQLite database; safe to share between threads.

    One connection behind one lock, so ``":memory:"`` works as well as a file; a file is opened in
    WAL mode so another process (the demo, a second store) can read while the server writes.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = os.fspath(db_path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._lock, self._db:
            if self.db_path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

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
        with self._lock, self._db:
            for record in records:
                seen = self._db.execute(
                    "SELECT 1 FROM inferences WHERE model_id = ? AND partner_inference_id = ? LIMIT 1",
                    (model_id, record.partner_inference_id),
                ).fetchone()
                self._db.execute(
                    "INSERT INTO inferences (model_id, partner_inference_id, inference_timestamp, batch_id,"
                    " inference_data, received_at, duplicate) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        model_id,
                        record.partner_inference_id,
                        record.inference_timestamp,
                        record.batch_id,
                        json.dumps(record.inference_data),
                        received_at,
                        int(seen is not None),
                    ),
                )

    def inferences(self, model_id: str) -> list[dict[str, Any]]:
        """The model's stored rows, duplicates included, in arrival order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT partner_inference_id, inference_timestamp, batch_id, inference_data, received_at,"
                " duplicate FROM inferences WHERE model_id = ? ORDER BY seq",
                (model_id,),
            ).fetchall()
        return [
            {**dict(row), "inference_data": json.loads(row["inference_data"]), "duplicate": bool(row["duplicate"])}
            for row in rows
        ]

    def duplicates(self, model_id: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM inferences WHERE model_id = ? AND duplicate = 1", (model_id,)
            ).fetchone()
        return int(row[0])

    def count_request(self, method: str, path: str, status: int) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO requests (method, path, status, count) VALUES (?, ?, ?, 1)"
                " ON CONFLICT (method, path, status) DO UPDATE SET count = count + 1",
                (method, path, status),
            )

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
            requests = self._db.execute("SELECT method, path, status, count FROM requests").fetchall()
        by_model = {row[0]: {"inferences": row[1], "duplicates": row[2]} for row in per_model}
        by_path: dict[str, dict[str, int]] = {}
        for method, path, status, count in requests:
            by_path.setdefault(f"{method} {path}", {})[str(status)] = count
        return {
            "models": models,
            "inferences": sum(m["inferences"] for m in by_model.values()),
            "duplicates": sum(m["duplicates"] for m in by_model.values()),
            "by_model": by_model,
            "requests": by_path,
        }
