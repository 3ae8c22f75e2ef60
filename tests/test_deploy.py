"""The deployment artefacts, checked offline: they cannot be run here (no docker engine, no cluster).

``Dockerfile`` is read with BuildKit's own parser (the ``dockerfile`` package), ``deploy/otel-arthur.yaml``
is validated against the Kubernetes API's JSON schemas (``kubernetes-validate``, bundled, strict: an
unknown field fails), and both are held against the real ``otel-arthur serve``: its flags, its
settings' environment names, its ports and its endpoints, so neither can drift from it.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import requests
import yaml
from servehelpers import arthur_settings, serving, wait_for

from otel_arthur import cli
from otel_arthur import config as c

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MANIFEST = ROOT / "deploy" / "otel-arthur.yaml"
GATEWAY = ROOT / "deploy" / "collector-gateway.yaml"
# The oldest Kubernetes whose stable API has every field used (unhealthyPodEvictionPolicy is GA in 1.31,
# persistentVolumeClaimRetentionPolicy in 1.32), and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.32", kubernetes_validate.latest_version())
SECRET_SETTINGS = {c.ARTHUR_API_KEY, c.ARTHUR_PASSWORD, c.ARTHUR_ENGINE_API_KEY, c.OTEL_ARTHUR_RECEIVER_TOKEN}


# -- reading the artefacts ----------------------------------------------------------------------------

def final_stage() -> list[dockerfile.Command]:
    """The instructions of the Dockerfile's last stage (the image that runs)."""
    commands = dockerfile.parse_file(str(DOCKERFILE))
    last_from = max(i for i, command in enumerate(commands) if command.cmd == "FROM")
    return commands[last_from:]


def instruction(cmd: str) -> dockerfile.Command:
    [found] = [command for command in final_stage() if command.cmd == cmd]
    return found


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in final_stage():
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2]))
    return env


def manifests() -> dict[str, dict[str, Any]]:
    with MANIFEST.open(encoding="utf-8") as text:
        return {document["kind"]: document for document in yaml.safe_load_all(text)}


def container() -> dict[str, Any]:
    [serve] = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return serve


def container_argv() -> list[str]:
    """What the pod runs: the image's entrypoint, then the container's args."""
    return [*instruction("ENTRYPOINT").value, *container().get("args", [])]


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    return None


def pod_env() -> dict[str, Any]:
    """Each environment variable the pod sets: its value, or its ``valueFrom`` reference."""
    settings = manifests()["ConfigMap"]["data"]
    listed = {e["name"]: e.get("value", e.get("valueFrom")) for e in container()["env"]}
    return {**image_env(), **settings, **listed}


def serve_help_flags(capsys: pytest.CaptureFixture[str]) -> set[str]:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", capsys.readouterr().out))


def port_named(name: str) -> int:
    [port] = [p["containerPort"] for p in container()["ports"] if p["name"] == name]
    return port


# -- Kubernetes schemas -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    documents = manifests()
    assert set(documents) == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    for document in documents.values():
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_works_offline_and_rejects_a_misspelt_field() -> None:
    statefulset = copy.deepcopy(manifests()["StatefulSet"])
    pod = statefulset["spec"]["template"]["spec"]
    pod["terminationGracePeriodSecond"] = pod.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[-1], strict=True)


# -- the Dockerfile -----------------------------------------------------------------------------------

def test_the_image_is_slim_python_311_running_serve_as_a_non_root_user() -> None:
    stage = final_stage()
    [base] = [command.value[0] for command in dockerfile.parse_file(str(DOCKERFILE)) if command.cmd == "ARG"]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    names = [command.cmd for command in stage]
    user = instruction("USER").value[0]
    assert names.index("USER") < names.index("ENTRYPOINT") and names.index("USER") < names.index("HEALTHCHECK")
    assert user.partition(":")[0] not in ("0", "root")
    assert instruction("STOPSIGNAL").value == ("SIGTERM",)
    entrypoint = instruction("ENTRYPOINT")
    assert entrypoint.json and entrypoint.value[:2] == ("otel-arthur", "serve")  # exec form: serve gets SIGTERM
    args = cli.build_parser().parse_args(list(entrypoint.value[1:]))
    assert args.host == "0.0.0.0"


def test_the_image_installs_the_server_extra_from_the_lock() -> None:
    runs = [command.value[0] for command in dockerfile.parse_file(str(DOCKERFILE)) if command.cmd == "RUN"]
    syncs = [run.split() for run in runs if run.startswith("uv sync")]
    assert syncs
    for sync in syncs:
        assert {"--frozen", "--no-dev", "--extra"} <= set(sync) and sync[sync.index("--extra") + 1] == "server"


@pytest.mark.timeout(600)
def test_the_build_stage_installs_a_working_serve_from_the_build_context(tmp_path: Path) -> None:
    """The build stage's COPY and ``uv`` steps, replayed here on the files the context lets in: the
    lock holds the server extra, the copied files are enough to build the package, no dev tools."""
    commands = dockerfile.parse_file(str(DOCKERFILE))
    build = commands[:max(i for i, command in enumerate(commands) if command.cmd == "FROM")]
    workdir, env = tmp_path / "app", dict(os.environ)
    workdir.mkdir()
    env.pop("VIRTUAL_ENV", None)  # uv would otherwise aim at the test run's own environment
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    for command in build:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2]))
        elif command.cmd == "COPY":
            *sources, destination = command.value
            for source in sources:  # Docker's rule: into a destination ending in "/", else onto it
                name = Path(source).name if destination.endswith("/") else ""
                copy_into(ROOT / source, workdir / destination / name)
        elif command.cmd == "RUN" and command.value[0].startswith("uv "):  # not the pip that installs uv
            ran = subprocess.run(["/bin/sh", "-c", command.value[0]], cwd=workdir, env=env, capture_output=True,
                                 text=True, timeout=540)
            assert ran.returncode == 0, ran.stderr[-2000:]
    venv = workdir / ".venv"
    assert subprocess.run([str(venv / "bin" / "otel-arthur"), "serve", "--help"], capture_output=True,
                          cwd=tmp_path, timeout=60).returncode == 0
    installed = {path.name.split("-")[0].lower() for path in venv.glob("lib/python*/site-packages/*.dist-info")}
    assert {"otel_arthur", "uvicorn", "starlette", "opentelemetry_proto"} <= installed
    assert not installed & {"pytest", "langchain", "arthurai"}


def copy_into(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def test_the_spool_is_on_a_volume_where_serve_puts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    [volume] = instruction("VOLUME").value
    env = image_env()
    monkeypatch.setenv(c.ARTHUR_SPOOL_DIR, env[c.ARTHUR_SPOOL_DIR])
    assert c.resolve_spool_dir() == volume
    assert "/var/lib/otel-arthur" == volume


def test_the_image_exposes_serves_ports() -> None:
    exposed = {int(port) for port in instruction("EXPOSE").value}
    assert int(image_env()[c.OTEL_ARTHUR_RECEIVER_PORT]) == c.DEFAULT_RECEIVER_PORT
    assert exposed == {c.DEFAULT_RECEIVER_PORT, 4320}
    assert exposed == {port_named("otlp-http"), port_named("otlp-grpc")}


def test_the_build_context_holds_exactly_what_the_dockerfile_copies() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"  # an allow-list: only what is named below enters the build context
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {source for command in dockerfile.parse_file(str(DOCKERFILE))
              if command.cmd == "COPY" and not command.flags for source in command.value[:-1]}
    assert allowed == copied


# -- the manifest against serve -----------------------------------------------------------------------

def test_every_flag_the_pod_passes_is_one_serve_has(capsys: pytest.CaptureFixture[str]) -> None:
    flags = {arg.partition("=")[0] for arg in container_argv() if arg.startswith("--")}
    known = serve_help_flags(capsys)
    assert flags <= known, flags - known
    args = cli.build_parser().parse_args(container_argv()[1:])  # values of the right type, too
    assert args.host == "0.0.0.0"


def test_the_grpc_port_is_the_one_serve_listens_on(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # its help line, up to the next option: "--grpc-port PORT … (env …; default: 4320)"
    default = re.search(r"--grpc-port [A-Z_]+ (?:(?! --[a-z]).)*?default: (\d+)", text)
    assert default is not None, "serve --help names no default for --grpc-port"
    assert port_named("otlp-grpc") == int(default.group(1))


def test_the_pod_gets_the_time_serve_takes_to_stop() -> None:
    pod = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    shutdown = flag_value(container_argv(), "--shutdown-timeout")
    budget = float(shutdown) if shutdown is not None else c.DEFAULT_RECEIVER_SHUTDOWN_TIMEOUT
    # serve exits at most 0.5 s past its timeout (docs/serve.md#shutdown); a margin for the rest
    assert pod["terminationGracePeriodSeconds"] >= budget + 5


def test_every_environment_name_is_a_setting_serve_reads() -> None:
    settings = {value for name, value in vars(c).items() if name.isupper() and isinstance(value, str)}
    names = set(pod_env()) - {"PATH", "PYTHONUNBUFFERED"}
    assert names <= settings, names - settings
    env = pod_env()
    assert env[c.ARTHUR_SPOOL_DIR] == image_env()[c.ARTHUR_SPOOL_DIR]


def test_secrets_are_referenced_never_written_down() -> None:
    documents = manifests()
    assert "Secret" not in documents
    env = pod_env()
    for name in SECRET_SETTINGS & set(env):
        assert set(env[name]) == {"secretKeyRef"}, name
    assert {c.ARTHUR_API_KEY, c.OTEL_ARTHUR_RECEIVER_TOKEN} <= set(env)
    assert not SECRET_SETTINGS & set(documents["ConfigMap"]["data"])
    passed = {arg.partition("=")[0] for arg in container_argv()}
    assert not passed & {"--api-key", "--password", "--engine-api-key", "--auth-token"}  # seen in `ps`


def test_each_replica_has_its_own_spool_volume_with_room_for_the_bound() -> None:
    statefulset = manifests()["StatefulSet"]
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    [mount] = [m for m in container()["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert mount["mountPath"] == pod_env()[c.ARTHUR_SPOOL_DIR] == instruction("VOLUME").value[0]
    size = claim["spec"]["resources"]["requests"]["storage"]
    gibibytes = int(size.removesuffix("Gi"))
    # SQLite's rows, index and write-ahead log take up to twice the records' bytes (docs/delivery.md#spool)
    assert gibibytes * 2**30 >= 2 * int(pod_env()[c.ARTHUR_SPOOL_MAX_BYTES])


def test_the_pod_runs_non_root_on_a_read_only_root() -> None:
    pod = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    security = container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == instruction("USER").value[0].partition(":")[0]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in container()["volumeMounts"] if not m.get("readOnly")}
    assert writable == {pod_env()[c.ARTHUR_SPOOL_DIR], "/tmp"}


def test_the_headless_service_and_budget_select_the_replicas() -> None:
    documents = manifests()
    service, statefulset, budget = documents["Service"], documents["StatefulSet"], documents["PodDisruptionBudget"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None" and statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {p["name"] for p in container()["ports"]}
    assert budget["spec"]["maxUnavailable"] == 1 < statefulset["spec"]["replicas"]


def test_probes_and_scrape_point_at_serves_http_port() -> None:
    serve = container()
    assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert serve[probe]["httpGet"]["port"] == "otlp-http"
    annotations = manifests()["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port_named("otlp-http") == c.DEFAULT_RECEIVER_PORT


# -- against a real serve -----------------------------------------------------------------------------

def test_probe_paths_scrape_path_and_healthcheck_answer_from_a_real_serve(local_arthur, new_model,
                                                                           tmp_path: Path) -> None:
    serve = container()
    annotations = manifests()["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
    paths = {serve["livenessProbe"]["httpGet"]["path"], serve["readinessProbe"]["httpGet"]["path"],
             serve["startupProbe"]["httpGet"]["path"]}
    healthcheck = instruction("HEALTHCHECK").value
    assert healthcheck[0] == "CMD"
    with serving(arthur_settings(local_arthur.url, new_model(), tmp_path / "spool")) as server:
        for path in paths:
            wait_for(lambda path=path: requests.get(server.url + path, timeout=5).status_code == 200)
        scrape = requests.get(server.url + annotations["prometheus.io/path"], timeout=5)
        assert scrape.status_code == 200 and "otel_arthur_ready 1.0" in scrape.text
        port = server.url.rsplit(":", 1)[1]
        assert run_healthcheck(healthcheck[1], port).returncode == 0
    assert run_healthcheck(healthcheck[1], port).returncode != 0  # nothing listens there any more


def run_healthcheck(command: str, port: str) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK's shell command, with this interpreter as the image's ``python``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["/bin/sh", "-c", command], env={"PATH": path, c.OTEL_ARTHUR_RECEIVER_PORT: port},
                          capture_output=True, text=True, timeout=30)


# -- the Collector gateway ----------------------------------------------------------------------------

def test_the_gateway_balances_by_trace_id_over_the_replicas_grpc_port() -> None:
    gateway = yaml.safe_load(GATEWAY.read_text(encoding="utf-8"))
    service = manifests()["Service"]
    exporter = gateway["exporters"]["loadbalancing"]
    assert exporter["routing_key"] == "traceID"
    dns = exporter["resolver"]["dns"]
    assert dns["hostname"] == service["metadata"]["name"]
    [grpc] = [p for p in service["spec"]["ports"] if p["name"] == "otlp-grpc"]
    assert int(dns["port"]) == grpc["port"] == port_named("otlp-grpc")
    otlp = exporter["protocol"]["otlp"]
    assert otlp["headers"]["authorization"] == f"Bearer ${{env:{c.OTEL_ARTHUR_RECEIVER_TOKEN}}}"
    assert otlp["tls"]["server_name_override"] == service["metadata"]["name"]
    assert otlp["sending_queue"]["enabled"] is False  # no second queue, in memory, behind the persistent one
    assert [gateway["service"]["pipelines"]["traces"]["exporters"]] == [["loadbalancing"]]


def test_the_real_collector_accepts_the_gateway_config(collector_binary: Path) -> None:
    # `validate` reads the config whole (an unknown key fails it) and starts nothing
    checked = subprocess.run([str(collector_binary), "validate", "--config", str(GATEWAY)], capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr[-3000:]


def test_the_gateway_queue_is_persistent() -> None:
    gateway = yaml.safe_load(GATEWAY.read_text(encoding="utf-8"))
    queue = gateway["exporters"]["loadbalancing"]["sending_queue"]
    assert queue["enabled"] is True
    storage = queue["storage"]
    assert storage.partition("/")[0] == "file_storage" and storage in gateway["extensions"]
    assert storage in gateway["service"]["extensions"]
    exporter = gateway["exporters"]["loadbalancing"]
    assert exporter["retry_on_failure"]["enabled"] is True and exporter["retry_on_failure"]["max_elapsed_time"] == 0
    # an attempt from the queue outlasts the per-replica retries, which are not cut short
    per_replica = exporter["protocol"]["otlp"]["retry_on_failure"]
    assert seconds(exporter["timeout"]) > seconds(per_replica["max_elapsed_time"])


def seconds(duration: str) -> int:
    """A Go duration of whole seconds or minutes ("90s", "10m")."""
    value, unit = int(duration[:-1]), duration[-1]
    return value * {"s": 1, "m": 60}[unit]
