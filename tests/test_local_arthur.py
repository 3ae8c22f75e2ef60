"""The local Arthur v3 API, driven by the real ``arthurai`` SDK (the oracle) and by raw HTTP."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from otel_arthur import onboarding
from otel_arthur.fields import FIELDS
from otel_arthur.local import arthur
from otel_arthur.local.arthur_store import LocalArthurStore
from otel_arthur.local.runner import BackgroundServer

pytest.importorskip("arthurai", reason="arthurai installs on Python <= 3.11 only")
from arthurai import ArthurAI
from arthurai.common.exceptions import ResponseClientError, UserValueError

TIMESTAMP = "2024-05-01T12:00:00+00:00"


def api_key_client(server: arthur.RunningLocalArthur, **overrides: object) -> ArthurAI:
    settings: dict[str, object] = {"url": server.url, "access_key": server.api_key, "allow_insecure": True}
    return ArthurAI(**(settings | overrides))


def row(partner_inference_id: str, **data: object) -> dict[str, object]:
    """A nested inference row as the SDK sends it: a prompt and a completion unless overridden (``...`` drops one)."""
    inference_data = {"prompt": "Human: hi", "completion": "Hello!"} | data
    return {
        "partner_inference_id": partner_inference_id,
        "inference_timestamp": TIMESTAMP,
        "inference_data": {k: v for k, v in inference_data.items() if v is not ...},
    }


@pytest.fixture
def client(local_arthur: arthur.RunningLocalArthur, arthur_env: pytest.MonkeyPatch) -> ArthurAI:
    return api_key_client(local_arthur)


def request_counts(server: arthur.RunningLocalArthur) -> Counter[str]:
    """``{"POST /api/v3/login 200": n, ...}``: subtract two to see what a test sent to the shared server."""
    requests_seen = server.stats()["requests"]
    return Counter(
        {f"{path} {status}": n for path, by_status in requests_seen.items() for status, n in by_status.items()}
    )


@pytest.fixture
def partner_model_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"  # the local Arthur is shared by the module's tests


@pytest.fixture
def model_id(client: ArthurAI, partner_model_id: str) -> str:
    return onboarding.create_model(client, partner_model_id, "Local Arthur test")


def api(
    server: arthur.RunningLocalArthur,
    method: str,
    path: str,
    *,
    auth: str | None = "key",
    headers: dict[str, str] | None = None,
    **kwargs: object,
) -> requests.Response:
    """A raw request to ``/api/v3``, authenticated with the API key unless ``auth`` says otherwise."""
    sent = {"Accept": "application/json"} | (headers or {})
    if auth is not None:
        sent["Authorization"] = server.api_key if auth == "key" else auth
    return requests.request(method, f"{server.url}{arthur.API_PREFIX}{path}", headers=sent, timeout=10, **kwargs)


# --- authentication --------------------------------------------------------------------------------


def test_sdk_logs_in_with_login_and_password_and_reads_the_model(
    local_arthur: arthur.RunningLocalArthur, model_id: str, partner_model_id: str
) -> None:
    before = request_counts(local_arthur)
    client = ArthurAI(
        url=local_arthur.url, login=local_arthur.login, password=local_arthur.password, allow_insecure=True
    )

    by_id = client.get_model(model_id)
    by_partner_id = client.get_model(partner_model_id, id_type="partner_model_id")

    assert by_id.id == by_partner_id.id == model_id
    assert {a.name for a in by_id.attributes} == set(FIELDS)
    assert request_counts(local_arthur) - before == Counter(
        {
            "POST /api/v3/login 200": 2,  # the SDK logs in twice at construction
            "GET /api/v3/users/me 200": 1,  # then looks its organization up with the JWT
            "GET /api/v3/models/{model_id} 200": 2,
        }
    )


def test_login_sets_an_authorization_cookie_holding_a_jwt_with_exp(local_arthur: arthur.RunningLocalArthur) -> None:
    response = api(
        local_arthur, "POST", "/login", auth=None, json={"login": local_arthur.login, "password": local_arthur.password}
    )

    assert response.status_code == 200
    assert response.json()["organization_id"] == local_arthur.organization_id
    token = response.cookies["Authorization"]
    header, payload, _ = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}
    assert claims["exp"] > time.time()
    assert "httponly" in response.headers["set-cookie"].lower()
    assert api(local_arthur, "GET", "/users/me", auth=token).status_code == 200


def test_wrong_password_is_refused_by_the_sdk(
    local_arthur: arthur.RunningLocalArthur, arthur_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserValueError, match="Unauthorized"):
        ArthurAI(url=local_arthur.url, login=local_arthur.login, password="wrong", allow_insecure=True)


def test_bad_api_key_is_the_sdks_401(local_arthur: arthur.RunningLocalArthur, model_id: str) -> None:
    with pytest.raises(UserValueError, match="Unauthorized"):  # users/me, at construction
        api_key_client(local_arthur, access_key="not-the-key")

    client = api_key_client(local_arthur, access_key="not-the-key", organization_id=local_arthur.organization_id)
    with pytest.raises(ResponseClientError, match="401 Unauthorized"):
        client.get_model(model_id)


@pytest.mark.parametrize(
    ("authorization", "organization_id", "status", "message"),
    [
        (None, None, 401, "missing Authorization"),
        ("wrong-key", None, 401, "invalid API key or token"),
        (f"Bearer {arthur.DEFAULT_API_KEY}", None, 401, "without 'Bearer '"),
        (arthur.DEFAULT_API_KEY, str(uuid.UUID(int=1)), 403, "not a member of organization"),
        (arthur.DEFAULT_API_KEY, arthur.DEFAULT_ORGANIZATION_ID, 200, None),
    ],
)
def test_credentials_are_checked_on_every_api_call(
    local_arthur: arthur.RunningLocalArthur,
    authorization: str | None,
    organization_id: str | None,
    status: int,
    message: str | None,
) -> None:
    headers = {} if organization_id is None else {"Arthur-Organization-ID": organization_id}

    response = api(local_arthur, "GET", "/users/me", auth=authorization, headers=headers)

    assert response.status_code == status
    if message is not None:
        assert message in response.json()["message"]


def test_an_expired_token_is_refused() -> None:
    app = arthur.create_app(":memory:")
    expired = app.state.auth.mint(arthur.DEFAULT_LOGIN, ttl=-1)
    try:
        with BackgroundServer(app) as server:
            response = requests.get(f"{server.url}/api/v3/users/me", headers={"Authorization": expired}, timeout=10)
    finally:
        app.state.store.close()

    assert response.status_code == 401
    assert "expired" in response.json()["message"]


# --- models --------------------------------------------------------------------------------------


def test_unknown_model_is_the_sdks_404(client: ArthurAI) -> None:
    with pytest.raises(ResponseClientError, match="404 Not Found"):
        client.get_model(str(uuid.uuid4()))


def test_model_is_ready_at_once_and_attributes_come_only_when_expanded(
    local_arthur: arthur.RunningLocalArthur, model_id: str
) -> None:
    plain = api(local_arthur, "GET", f"/models/{model_id}").json()
    expanded = api(local_arthur, "GET", f"/models/{model_id}", params={"expand": "attributes"}).json()

    assert plain["status"] == expanded["status"] == "Ready"
    assert "attributes" not in plain
    assert all(attribute["id"] for attribute in expanded["attributes"])


def test_a_second_model_with_the_same_partner_model_id_is_a_conflict(
    local_arthur: arthur.RunningLocalArthur, model_id: str, partner_model_id: str
) -> None:
    body = {
        "partner_model_id": partner_model_id,
        "input_type": "NLP",
        "output_type": "TOKEN_SEQUENCE",
        "attributes": [{"name": "prompt", "value_type": "UNSTRUCTURED_TEXT", "stage": "PIPELINE_INPUT"}],
    }

    response = api(local_arthur, "POST", "/models", params={"async_model_provisioning": "True"}, json=body)

    assert response.status_code == 409
    assert partner_model_id in response.json()["message"]
    assert local_arthur.store.get_model(partner_model_id, "partner_model_id")["id"] == model_id


# --- inferences ----------------------------------------------------------------------------------


def test_good_inferences_are_accepted_and_stored_in_order(
    local_arthur: arthur.RunningLocalArthur, client: ArthurAI, model_id: str
) -> None:
    model = client.get_model(model_id)
    sent = [row("a", prompt_tokens=3, duration=0.25, finish_reason="stop"), row("b", temperature=1)]
    before = request_counts(local_arthur)

    response = model.send_inferences(sent)

    assert response["counts"] == {"success": 2, "failure": 0, "total": 2}
    stored = local_arthur.inferences(model_id)
    assert [r["partner_inference_id"] for r in stored] == ["a", "b"]
    assert [r["inference_data"] for r in stored] == [s["inference_data"] for s in sent]
    assert stored[0]["inference_timestamp"] == TIMESTAMP
    assert request_counts(local_arthur) - before == Counter({"POST /api/v3/models/{model_id}/inferences 207": 1})


def test_flat_rows_get_generated_ids_and_timestamps(
    local_arthur: arthur.RunningLocalArthur, client: ArthurAI, model_id: str
) -> None:
    model = client.get_model(model_id)

    model.send_inferences(
        [{"prompt": "Human: hi", "completion": "Hello!", "inference_timestamp": datetime.now(timezone.utc)}]
    )

    (stored,) = local_arthur.inferences(model_id)
    assert stored["partner_inference_id"]
    assert datetime.fromisoformat(stored["inference_timestamp"]).tzinfo is not None


def test_schema_violations_are_per_record_400s_inside_the_207(
    local_arthur: arthur.RunningLocalArthur, client: ArthurAI, model_id: str
) -> None:
    model = client.get_model(model_id)
    rows = [
        row("good"),
        row("unknown", bogus=1),
        row("wrong-type", prompt_tokens="3"),
        row("bool-is-not-int", completion_tokens=True),
        row("no-prompt", prompt=...),
    ]

    with pytest.raises(ResponseClientError, match="4 client errors") as raised:
        model.send_inferences(rows)
    response = model.send_inferences(rows, fail_silently=True)

    assert "unknown attribute 'bogus'" in str(raised.value)
    assert response["counts"] == {"success": 1, "failure": 4, "total": 5}
    assert [(r["status"], r["message"]) for r in response["results"]] == [
        (200, "success"),
        (400, "unknown attribute 'bogus'"),
        (400, "attribute 'prompt_tokens' expects INTEGER, got str"),
        (400, "attribute 'completion_tokens' expects INTEGER, got bool"),
        (400, "missing required input attribute 'prompt'"),
    ]
    assert [r["partner_inference_id"] for r in local_arthur.inferences(model_id)] == ["good", "good"]


def test_rows_the_sdk_would_not_send_are_per_record_400s(
    local_arthur: arthur.RunningLocalArthur, model_id: str
) -> None:
    rows = [
        {**row("bad-time"), "inference_timestamp": "yesterday"},
        {**row("naive-time"), "inference_timestamp": "2024-05-01T12:00:00"},
        {"partner_inference_id": "flat", "prompt": "not nested"},
        "not an object",
        {**row("numeric-id"), "partner_inference_id": 7},
        row("good"),
        {**row("zulu"), "inference_timestamp": "2024-05-01T12:00:00Z"},
    ]

    response = api(local_arthur, "POST", f"/models/{model_id}/inferences", json=rows)

    assert response.status_code == 207
    body = response.json()
    assert body["counts"] == {"success": 2, "failure": 5, "total": 7}
    assert [r["message"] for r in body["results"]] == [
        "inference_timestamp 'yesterday' is not an ISO-8601 time with a UTC offset",
        "inference_timestamp '2024-05-01T12:00:00' is not an ISO-8601 time with a UTC offset",
        "inference_data must be a JSON object",
        "inference must be a JSON object",
        "partner_inference_id must be a non-empty string",
        "success",
        "success",
    ]


def test_repeated_partner_inference_ids_are_accepted_and_counted(
    local_arthur: arthur.RunningLocalArthur, client: ArthurAI, model_id: str
) -> None:
    model = client.get_model(model_id)

    model.send_inferences([row("x"), row("y")])
    response = model.send_inferences([row("x"), row("z"), row("z")])

    assert response["counts"] == {"success": 3, "failure": 0, "total": 3}
    assert local_arthur.store.duplicates(model_id) == 2
    assert [r["duplicate"] for r in local_arthur.inferences(model_id)] == [False, False, True, False, True]
    assert local_arthur.stats()["by_model"][model_id] == {"inferences": 5, "duplicates": 2}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "malformed JSON body"),
        (b'{"inference_data": {}}', "JSON array"),
        (b"\xff\xfe", "malformed JSON body"),
        (b"[] x", "malformed JSON body: Extra data"),
        (b'[{"inference_data": {}} {"inference_data": {}}]', "malformed JSON body: Expecting ',' delimiter"),
    ],
)
def test_malformed_bodies_are_400(
    local_arthur: arthur.RunningLocalArthur, model_id: str, body: bytes, message: str
) -> None:
    response = api(local_arthur, "POST", f"/models/{model_id}/inferences", data=body)

    assert response.status_code == 400
    assert message in response.json()["message"]
    assert local_arthur.inferences(model_id) == []


def test_inferences_for_an_unknown_model_are_404(local_arthur: arthur.RunningLocalArthur) -> None:
    response = api(local_arthur, "POST", f"/models/{uuid.uuid4()}/inferences", json=[row("a")])

    assert response.status_code == 404


def test_an_empty_batch_is_an_empty_207(local_arthur: arthur.RunningLocalArthur, model_id: str) -> None:
    response = api(local_arthur, "POST", f"/models/{model_id}/inferences", json=[])

    assert response.status_code == 207
    assert response.json() == {"counts": {"success": 0, "failure": 0, "total": 0}, "results": []}


# --- local views and storage ---------------------------------------------------------------------


def test_local_views_need_no_auth_and_mirror_the_store(
    local_arthur: arthur.RunningLocalArthur, client: ArthurAI, model_id: str
) -> None:
    client.get_model(model_id).send_inferences([row("a"), row("a")])

    inferences = requests.get(f"{local_arthur.url}/_local/models/{model_id}/inferences", timeout=10)
    stats = requests.get(f"{local_arthur.url}/_local/stats", timeout=10)
    unknown = requests.get(f"{local_arthur.url}/_local/models/nope/inferences", timeout=10)

    assert inferences.json() == local_arthur.inferences(model_id)
    assert stats.json() == local_arthur.stats()
    assert stats.json()["by_model"][model_id] == {"inferences": 2, "duplicates": 1}
    assert unknown.status_code == 404
    assert not any(path.startswith("GET /_local") for path in local_arthur.stats()["requests"])


def test_the_database_file_outlives_the_server(
    tmp_path: Path, arthur_env: pytest.MonkeyPatch, partner_model_id: str
) -> None:
    db = tmp_path / "arthur.sqlite3"
    with arthur.running(db) as server:
        model_id = onboarding.create_model(api_key_client(server), partner_model_id, None)
        api_key_client(server).get_model(model_id).send_inferences([row("kept")])

    store = LocalArthurStore(db)
    try:
        assert [r["partner_inference_id"] for r in store.inferences(model_id)] == ["kept"]
        assert store.get_model(partner_model_id, "partner_model_id")["id"] == model_id
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_local_arthur_command_serves_on_the_embedded_defaults_until_interrupted(tmp_path: Path) -> None:
    db, port = tmp_path / "state" / "arthur.sqlite3", _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "otel_arthur.cli", "local-arthur", "--port", str(port), "--db", str(db)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/_local/stats", timeout=1)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "local-arthur did not start"
                time.sleep(0.05)
        me = requests.get(f"{url}/api/v3/users/me", headers={"Authorization": arthur.DEFAULT_API_KEY}, timeout=10)
    finally:
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=30)

    assert me.json()["organization_id"] == arthur.DEFAULT_ORGANIZATION_ID
    assert server.returncode == 0
    assert url in log and str(db) in log
    assert arthur.DEFAULT_PASSWORD not in log and arthur.DEFAULT_API_KEY not in log
    store = LocalArthurStore(db)
    try:
        assert store.stats()["requests"] == {"GET /api/v3/users/me": {"200": 1}}
    finally:
        store.close()


# --- HTTPS and LangChain's ArthurCallbackHandler -----------------------------------------------


@pytest.fixture(scope="module")
def self_signed_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """``(certfile, keyfile)`` for 127.0.0.1, made with the openssl CLI (trustme is not installed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl CLI to make a self-signed certificate for the HTTPS test")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def https_arthur(
    tmp_path: Path, self_signed_cert: tuple[str, str], arthur_env: pytest.MonkeyPatch
) -> Iterator[arthur.RunningLocalArthur]:
    cert, key = self_signed_cert
    arthur_env.setenv("REQUESTS_CA_BUNDLE", cert)  # requests (and so the SDK) trusts our certificate
    with arthur.running(tmp_path / "arthur.sqlite3", certfile=cert, keyfile=key) as server:
        yield server


def test_arthur_callback_handler_from_credentials_over_https(
    https_arthur: arthur.RunningLocalArthur, partner_model_id: str
) -> None:
    from langchain_community.callbacks import ArthurCallbackHandler
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    assert https_arthur.url.startswith("https://")
    creator = ArthurAI(url=https_arthur.url, access_key=https_arthur.api_key)
    model_id = onboarding.create_model(creator, partner_model_id, None)
    handler = ArthurCallbackHandler.from_credentials(
        model_id, arthur_url=https_arthur.url, arthur_login=https_arthur.login, arthur_password=https_arthur.password
    )
    run_id = uuid.uuid4()
    # What a non-streaming ChatOpenAI hands its callbacks.
    result = LLMResult(
        generations=[
            [ChatGeneration(message=AIMessage("Hello!"), generation_info={"finish_reason": "stop", "logprobs": None})]
        ],
        llm_output={
            "token_usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
            "model_name": "gpt-4o-mini",
        },
    )

    handler.on_llm_start({}, ["Human: hi"], run_id=run_id)
    handler.on_llm_end(result, run_id=run_id)
    # Idle TLS keep-alive connections hold uvicorn's shutdown for its whole grace period.
    creator.client.session.close()
    handler.arthur_model._client.session.close()

    (stored,) = https_arthur.inferences(model_id)
    data = stored["inference_data"]
    assert {k: data[k] for k in ("prompt", "completion", "finish_reason", "prompt_tokens", "completion_tokens")} == {
        "prompt": "Human: hi",
        "completion": "Hello!",
        "finish_reason": "stop",
        "prompt_tokens": 9,
        "completion_tokens": 2,
    }
    assert isinstance(data["duration"], float)
