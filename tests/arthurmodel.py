"""Models on a local Arthur without the arthurai SDK (its import costs ~5 s): raw ``POST /models``; what it stored."""

from __future__ import annotations

import uuid

import requests

from otel_arthur.fields import FIELDS
from otel_arthur.local import arthur


def create_model_over_http(server: arthur.RunningLocalArthur, partner_model_id: str | None = None) -> str:
    """A model holding every field, as ``create-model`` onboards it; its id."""
    body = {
        "partner_model_id": partner_model_id or f"model-{uuid.uuid4().hex[:12]}",
        "input_type": "NLP",
        "output_type": "TOKEN_SEQUENCE",
        "attributes": [{"name": name, "value_type": f.value_type, "stage": f.stage} for name, f in FIELDS.items()],
    }
    response = requests.post(f"{server.url}{arthur.API_PREFIX}/models", json=body,
                             headers={"Authorization": server.api_key}, timeout=10)
    response.raise_for_status()
    return str(response.json()["id"])


def stored(server: arthur.RestartableLocalArthur, model_id: str) -> tuple[list[str], int]:
    """Partner ids Arthur stored for the model (duplicates included), and how many were duplicates."""
    model = server.stats()["by_model"].get(model_id, {"inferences": 0, "duplicates": 0})
    if server.current is None:
        return [], model["duplicates"]
    return [r["partner_inference_id"] for r in server.current.inferences(model_id)], model["duplicates"]
