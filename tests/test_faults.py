"""Fault injection in the local Arthur, and restarting it on the same port and file."""

from __future__ import annotations

import pytest
import requests
from arthurmodel import create_model_over_http

from otel_arthur.cli import build_parser
from otel_arthur.clients.http import RetryableError, ThrottledError
from otel_arthur.clients.v3 import ArthurClient
from otel_arthur.config import ArthurSettings
from otel_arthur.local import arthur, arthur_faults
from otel_arthur.local.arthur_faults import Faults

ROW = {"partner_inference_id": "x", "inference_timestamp": "2024-05-01T12:00:00+00:00",
       "inference_data": {"prompt": "Human: hi", "completion": "hello"}}


def statuses(server: arthur.RunningLocalArthur, count: int) -> list[int | str]:
    seen: list[int | str] = []
    for _ in range(count):
        try:
            seen.append(requests.get(f"{server.url}/api/v3/users/me", headers={"Authorization": server.api_key},
                                     timeout=5).status_code)
        except requests.RequestException as exc:
            seen.append(type(exc).__name__)
    return seen


@pytest.fixture
def server(tmp_path):
    with arthur.running(tmp_path / "arthur.sqlite3") as running:
        yield running


def test_faults_are_read_and_replaced_at_run_time(server):
    assert requests.get(f"{server.url}/_local/faults").json() == {"faults": Faults().to_json(), "injected": {}}
    answer = requests.post(f"{server.url}/_local/faults", json={"rate_503": 1.0}).json()
    assert answer["faults"]["rate_503"] == 1.0
    assert statuses(server, 2) == [503, 503]
    assert requests.get(f"{server.url}/_local/faults").json()["injected"] == {"503": 2}
    assert requests.get(f"{server.url}/_local/stats").status_code == 200  # /_local is never faulted
    for bad in ({"rate_500": 2}, {"rate_500": 0.6, "rate_503": 0.6}, {"rate_teapot": 0.1}, [1]):
        refused = requests.post(f"{server.url}/_local/faults", json=bad)
        assert refused.status_code == 400 and refused.json()["message"]
    requests.post(f"{server.url}/_local/faults", json={})
    assert statuses(server, 2) == [200, 200]


def test_the_same_seed_draws_the_same_faults(server):
    mix = Faults(rate_429=0.2, rate_500=0.2, rate_drop=0.2, seed=7)
    server.faults.set(mix)
    first = statuses(server, 30)
    server.faults.set(mix)
    assert statuses(server, 30) == first
    assert {429, 500, 200, "ChunkedEncodingError"} == set(first)  # a dropped connection breaks mid-response


def test_the_client_sees_throttling_with_retry_after_and_drops_as_retryable(server):
    client = ArthurClient(ArthurSettings.resolve(url=server.url, api_key=server.api_key, model_id="m",
                                                 allow_insecure=True))
    server.faults.set(Faults(rate_429=1.0, retry_after=3))
    with pytest.raises(ThrottledError) as throttled:
        client.get_model("m")
    assert throttled.value.retry_after == 3
    server.faults.set(Faults(rate_drop=1.0))
    with pytest.raises(RetryableError, match="ChunkedEncodingError"):
        client.get_model("m")
    assert server.stats()["requests"]["GET <fault injected>"] == {"429": 1, "502": 1}


def test_the_client_retries_a_408_and_a_stalled_request_that_times_out(server):
    client = ArthurClient(ArthurSettings.resolve(url=server.url, api_key=server.api_key, model_id="m",
                                                 allow_insecure=True, timeout=0.3))
    server.faults.set(Faults(rate_408=1.0))
    with pytest.raises(RetryableError, match="408"):
        client.get_model("m")
    server.faults.set(Faults(rate_stall=1.0, stall_seconds=1.0))
    with pytest.raises(RetryableError, match="timed out"):
        client.get_model("m")
    assert server.faults.describe()["injected"] == {"stall": 1}


def test_a_slow_answer_is_stored_though_the_client_gave_up_and_says_its_outcome_is_unknown(server):
    model_id = create_model_over_http(server)
    client = ArthurClient(ArthurSettings.resolve(url=server.url, api_key=server.api_key, model_id=model_id,
                                                 allow_insecure=True, timeout=0.3))
    assert client.organization_id  # looked up before the faults: only the POST is slow
    server.faults.set(Faults(rate_slow=1.0, slow_seconds=1.0))
    with pytest.raises(RetryableError, match="timed out") as unanswered:
        client.send_inferences(model_id, [ROW])
    assert unanswered.value.unanswered_for is not None  # sent, never answered: it may be stored
    assert [r["partner_inference_id"] for r in server.inferences(model_id)] == ["x"]  # and it was
    server.faults.set(Faults())
    with pytest.raises(RetryableError) as refused:
        ArthurClient(ArthurSettings.resolve(url="http://127.0.0.1:9", api_key="k", model_id="m",
                                            allow_insecure=True)).get_model("m")
    assert refused.value.unanswered_for is None  # never connected: certainly not stored


def test_per_record_faults_inside_the_207_store_nothing(server):
    model_id = create_model_over_http(server)
    server.faults.set(Faults(rate_record_400=0.5, rate_record_500=0.5, seed=1))
    answer = requests.post(f"{server.url}/api/v3/models/{model_id}/inferences", json=[ROW] * 4,
                           headers={"Authorization": server.api_key}).json()
    assert answer["counts"] == {"success": 0, "failure": 4, "total": 4}
    assert {r["status"] for r in answer["results"]} == {400, 500}
    assert server.inferences(model_id) == []


def test_cli_flags_set_the_faults_at_start():
    args = build_parser().parse_args(["local-arthur", "--fault-rate-429", "0.1", "--fault-retry-after", "2",
                                      "--fault-rate-record-400", "0.05", "--fault-seed", "9"])
    assert arthur_faults.from_arguments(args) == Faults(rate_429=0.1, retry_after=2, rate_record_400=0.05, seed=9)
    assert arthur_faults.from_arguments(build_parser().parse_args(["local-arthur"])) == Faults()


def test_a_restarted_server_keeps_its_port_and_its_data(tmp_path):
    restartable = arthur.RestartableLocalArthur(tmp_path / "arthur.sqlite3", faults=Faults(rate_503=1.0))
    with restartable:
        url = restartable.url
        restartable.current.faults.set(Faults())
        model_id = create_model_over_http(restartable.current)
        restartable.stop()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/_local/stats", timeout=5)
        assert restartable.stats()["models"] == 1  # read from the file while it is down
        restarted = restartable.start()
        assert restarted.url == url and statuses(restarted, 1) == [503]  # start-up faults come back too
        assert restarted.store.get_model(model_id) is not None
    assert restartable.current is None
