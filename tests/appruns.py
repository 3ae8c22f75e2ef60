"""Test apps (``tests/apps/``) run in processes of their own, for instrumentors that cannot share one:
their environment towards the local endpoints, and the JSON they print once their provider is shut down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

APPS = Path(__file__).parent / "apps"


def to_local_arthur(local_arthur: Any, model_id: str, openai_server: Any, service: str) -> dict[str, str]:
    """This environment, the app's records to ``model_id`` on the local Arthur, its LLM calls to the local endpoint."""
    return os.environ | {
        "ARTHUR_ENDPOINT_URL": local_arthur.url, "ARTHUR_API_KEY": local_arthur.api_key,
        "ARTHUR_MODEL_ID": model_id, "ARTHUR_ALLOW_INSECURE": "true",
        "OPENAI_BASE_URL": openai_server.url + "/v1", "OPENAI_API_KEY": "unused",
        "OTEL_SERVICE_NAME": service,
    }


def run_app(app: str, env: Mapping[str, str], *args: str) -> Any:
    """``tests/apps/<app>`` in a process of its own; what it printed, as JSON (it exits once all is delivered)."""
    result = subprocess.run([sys.executable, str(APPS / app), *args], env=dict(env), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
