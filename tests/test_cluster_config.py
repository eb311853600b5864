"""docker-compose.yml, the env example and the cluster configs, checked without Docker:
the Compose specification's JSON schema, and every command, variable, port, volume and
file they name exists in the project."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from cluster import entrypoint
from cluster.local import Cluster, localise, role_of
from cluster.settings import ENV_EXAMPLE, interpolate, load_compose, read_env_file, services, variables
from plasticity.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "MLFLOW_ADMIN_PASSWORD": "admin-secret-123",
           "MLFLOW_SECRET_KEY": "flask-secret", "RAY_AUTH_TOKEN": "ab" * 32}


def compose_schema() -> dict:
    # The official schema (compose-spec/compose-spec, schema/compose-spec.json) as vendored
    # by check-jsonschema (pinned in the dev extras): no copy of it lives in this repository.
    path = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


def test_compose_file_follows_the_compose_specification():
    import jsonschema

    schema = compose_schema()
    assert "compose" in schema["$id"] and "services" in schema["properties"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # The schema does catch mistakes (so the check above can fail).
    broken = load_compose()
    broken["services"]["mlflow"]["healthcheck"]["interval"] = {"seconds": 10}
    broken["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["gpus"] = 1
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_variable_has_a_default_or_is_in_the_example_env_file():
    example = read_env_file(ENV_EXAMPLE)
    text = json.dumps(load_compose())  # the values, not the comments
    for name, op, _ in variables(text):
        assert op in (":-", "-") or name in example, f"${{{name}}} has no default and is not in .env.example"
    # The required ones (`:?`) are exactly the secrets, left empty in the example.
    required = {name for name, op, _ in variables(text) if op in (":?", "?")}
    assert required == set(SECRETS)
    assert all(example[name] == "" for name in required)
    # No default in the compose file disagrees with the example file.
    for name, op, default in variables(text):
        if op == ":-" and name in example:
            assert example[name] == default, f"{name}: compose default {default!r}, .env.example {example[name]!r}"


def test_env_file_is_ignored_by_git_and_missing_secrets_are_refused():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN is not set"):
        services({k: v for k, v in SECRETS.items() if k != "RAY_AUTH_TOKEN"})


def test_interpolation_like_compose():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A:-x}/${B:-y}/${EMPTY:-z}/${EMPTY-z}/$$A/$A", env) == "1/y/z//$A/1"
    with pytest.raises(ConfigError, match="B is not set"):
        interpolate("${B:?needed}", env)



def test_env_file_is_read_like_compose(tmp_path):
    path = tmp_path / "x.env"
    path.write_text("# comment\n\n"
                    "PLAIN=a b\nexport EXPORTED=1\nDOUBLE=\"x # not a comment\" # comment\nSINGLE=' y '\n"
                    "INLINE=v # comment\nHASH=v#not-a-comment\nEMPTY=\nEMPTY_COMMENT= # comment\n"
                    "SPACED = 3\nREF=${PLAIN}/${UNSET:-d}/$$\nQREF=\"${EXPORTED}\"\nLITERAL='${PLAIN}'\n"
                    "FROM_ENV=${OUTSIDE}\nINHERITED\nNOT_INHERITED\n")
    assert read_env_file(path, {"OUTSIDE": "o", "INHERITED": "i"}) == {
        "PLAIN": "a b", "EXPORTED": "1", "DOUBLE": "x # not a comment", "SINGLE": " y ", "INLINE": "v",
        "HASH": "v#not-a-comment", "EMPTY": "", "EMPTY_COMMENT": "", "SPACED": "3", "REF": "a b/d/$",
        "QREF": "1", "LITERAL": "${PLAIN}", "FROM_ENV": "o", "INHERITED": "i"}
    # The environment comes before earlier lines, as in Compose.
    assert read_env_file(path, {"PLAIN": "env"})["REF"] == "env/d/$"


@pytest.mark.parametrize("bad, n", [("A=1\n\nB=\"unterminated\n", 3), ("A=1\nNO-DASHES=1\n", 2),
                                    ("A=1\nTWO WORDS\n", 2), ("A=${B:?needed}\n", 1)])
def test_malformed_env_file_line_is_one_line_error(tmp_path, bad, n):
    path = tmp_path / "bad.env"
    path.write_text(bad)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:{n}: ") as e:
        read_env_file(path, {})
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError):
        read_env_file(tmp_path / "missing.env")

def test_services_use_the_project_entrypoints_ports_and_volumes():
    compose = load_compose()
    defined = services(SECRETS)
    declared_volumes = set(compose["volumes"])
    for name, service in defined.items():
        spec = compose["services"][name]
        assert "healthcheck" in spec and spec.get("restart") == "unless-stopped", name
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared_volumes or (REPO / source).exists(), f"{name}: volume {source}"
        for dep in spec.get("depends_on", {}):
            assert dep in compose["services"] and spec["depends_on"][dep]["condition"] == "service_healthy"
        if name == "postgres":
            continue
        role = role_of(service)
        assert role in entrypoint.ROLES, f"{name}: command {service.command} is not a cluster.entrypoint role"
        health = spec["healthcheck"]["test"]
        assert health[1:] == ["python", "-m", "cluster.entrypoint", "health", role]
        # Each published port is the one the service listens on (same number inside).
        for port in service.ports:
            host, container = port.rsplit(":", 1)[0].rsplit(":", 1)[-1], port.rsplit(":", 1)[1]
            assert host == container and container in service.environment.values(), (name, port)


@pytest.mark.parametrize("name", ["ray-head", "ray-worker"])
def test_ray_services_resolve_to_real_command_lines(name, monkeypatch):
    service = services(SECRETS)[name]
    for key, value in service.environment.items():
        monkeypatch.setenv(key, value)
    cmd, _ = entrypoint.COMMANDS[role_of(service)]()
    assert Path(cmd[0]).is_file() and cmd[1:2] == ["start"] and "--block" in cmd
    if name == "ray-head":
        assert cmd[cmd.index("--dashboard-port") + 1] == "8265" and cmd[cmd.index("--port") + 1] == "6380"
    else:
        assert cmd[cmd.index("--address") + 1] == "ray-head:6380" and cmd[cmd.index("--num-gpus") + 1] == "1"


def test_workers_reserve_gpus_and_scale():
    spec = load_compose()["services"]["ray-worker"]
    devices = spec["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert "ports" not in spec, "published ports would stop `--scale ray-worker=N`"
    assert "container_name" not in spec
    assert services({**SECRETS, "RAY_WORKERS": "3"})["ray-worker"].replicas == 3


def test_dockerfile_builds_what_the_services_run():
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\w.-]+", dockerfile, re.M)
    pinned = dict(re.findall(r"([A-Za-z][\w.\-\[\],]*)==([\w.+]+)", dockerfile))
    assert pinned.get("torch") == "2.13.0"
    assert "optuna-dashboard" in pinned, "the optuna-dashboard service needs it in the image"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"cluster*"' in pyproject and ".[sweep]" in dockerfile
    # What the Dockerfile copies exists.
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) ", dockerfile, re.M):
        assert (REPO / src).exists(), src


@pytest.mark.parametrize("path", ["cluster/ray-cluster.yaml", "cluster/kuberay.yaml"])
def test_cluster_configs_use_token_auth_and_the_entrypoints(path):
    docs = list(yaml.safe_load_all((REPO / path).read_text()))
    text = (REPO / path).read_text()
    assert docs and all(docs)
    assert "RAY_AUTH_MODE" in text and "RAY_AUTH_TOKEN" in text
    assert "tune.sweep" in text
    if path.endswith("kuberay.yaml"):
        kinds = {d["kind"] for d in docs}
        assert {"RayCluster", "RayJob"} <= kinds and "Secret" not in kinds  # secrets are never committed
        example = ENV_EXAMPLE.read_text()
        for key in re.findall(r"secretKeyRef: \{name: plasticity-secrets, key: (\w+)\}", text):
            assert re.search(rf"^#? ?{key}=", example, re.M), f"secret key {key} is not in .env.example"
        cluster = next(d for d in docs if d["kind"] == "RayCluster")
        workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert workers["resources"]["limits"]["nvidia.com/gpu"]
    else:
        config = docs[0]
        assert config["provider"]["type"] in ("aws", "gcp", "azure")
        assert config["docker"]["image"] and config["available_node_types"]


def test_local_launcher_runs_the_compose_services_on_this_machine(tmp_path):
    cluster = Cluster.from_env(tmp_path / "state", env_file=tmp_path / "none.env",
                               environ={**SECRETS, "RAY_WORKERS": "2", "MLFLOW_PORT": "15123"})
    plan = cluster.plan()
    assert set(plan) == {"mlflow", "ray-head", "ray-worker-1", "ray-worker-2"}
    role, env = plan["mlflow"]
    assert role == "mlflow" and env["MLFLOW_PORT"] == "15123" and env["MLFLOW_HOST"] == "127.0.0.1"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == str(tmp_path / "state" / "data" / "mlartifacts")
    head = plan["ray-head"][1]
    assert head["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15123" and head["RAY_AUTH_MODE"] == "token"
    assert "@127.0.0.1:5432/" in head["OPTUNA_STORAGE"]
    # Worker nodes: separate temp dirs (as on separate machines), the head's address.
    w1, w2 = plan["ray-worker-1"][1], plan["ray-worker-2"][1]
    assert w1["RAY_TEMP_DIR"] != w2["RAY_TEMP_DIR"] != head["RAY_TEMP_DIR"]
    assert w1["RAY_HEAD_ADDRESS"] == f"127.0.0.1:{head['RAY_GCS_PORT']}"
    assert localise("mlflow", ["mlflow"], tmp_path) == "mlflow"  # a database name, not a host
    client = cluster.client_env()
    assert client["RAY_ADDRESS"].startswith("http://127.0.0.1:") and client["MLFLOW_TRACKING_PASSWORD"]


def test_mlflow_telemetry_is_off_in_every_mlflow_process_unless_the_user_says_otherwise(tmp_path):
    """The MLflow server, the Ray nodes (their trials) and the drivers' client env all
    carry MLFLOW_DISABLE_TELEMETRY=true; a user's own value wins (docs/telemetry.md)."""
    for environ, want in (({}, "true"), ({"MLFLOW_DISABLE_TELEMETRY": "false"}, "false")):
        cluster = Cluster.from_env(tmp_path / "state", env_file=tmp_path / "none.env", environ={**SECRETS, **environ})
        plan = cluster.plan()
        for name in ("mlflow", "ray-head", "ray-worker-1"):
            assert plan[name][1]["MLFLOW_DISABLE_TELEMETRY"] == want, (name, environ)
        assert cluster.client_env()["MLFLOW_DISABLE_TELEMETRY"] == want


def test_entrypoints_refuse_to_start_without_authentication(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 64)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE must be 'token'"):
        entrypoint.ray_head_command()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "")
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN is not set"):
        entrypoint.ray_head_command()
    monkeypatch.delenv("MLFLOW_ADMIN_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_ADMIN_PASSWORD is not set"):
        entrypoint.mlflow_command()
    assert entrypoint.main(["nonsense"]) == 2


def test_mlflow_auth_config_has_no_anonymous_access(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss/word")
    path = entrypoint.write_auth_config(tmp_path / "auth" / "basic_auth.ini")
    text = path.read_text()
    assert "authenticate_request_basic_auth" in text and "p%40ss%2Fword" in text
    assert "admin_password" not in text  # the password comes from the environment only
    assert path.stat().st_mode & 0o077 == 0


def test_mlflow_service_command_on_the_local_postgres(tmp_path, monkeypatch):
    """The mlflow role with the launcher's environment: its databases are created on the
    local PostgreSQL and the server command carries basic auth, the backend and artifacts."""
    import uuid

    import psycopg

    suffix = uuid.uuid4().hex[:6]
    names = {key: f"plc_cfg_{key.lower()}_{suffix}" for key in ("MLFLOW_DB", "MLFLOW_AUTH_DB", "OPTUNA_DB")}
    environ = {**SECRETS, **names, "POSTGRES_USER": "postgres", "POSTGRES_DB": "test"}
    _, env = Cluster.from_env(tmp_path / "state", env_file=tmp_path / "none.env", environ=environ).plan(0)["mlflow"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        cmd, extra = entrypoint.mlflow_command()
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test") as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
        assert set(names.values()) <= have
        assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
        # The backend URL (with the database password) goes through the environment.
        assert "--backend-store-uri" not in cmd and not any(SECRETS["POSTGRES_PASSWORD"] in arg for arg in cmd)
        assert extra["MLFLOW_BACKEND_STORE_URI"].endswith(f"@127.0.0.1:5432/{names['MLFLOW_DB']}")
        assert SECRETS["POSTGRES_PASSWORD"] in extra["MLFLOW_BACKEND_STORE_URI"]
        assert Path(cmd[cmd.index("--artifacts-destination") + 1]).is_dir()
        assert extra["MLFLOW_AUTH_ADMIN_PASSWORD"] == SECRETS["MLFLOW_ADMIN_PASSWORD"]
        assert names["MLFLOW_AUTH_DB"] in Path(extra["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
        entrypoint.mlflow_command()  # idempotent: the databases exist now
    finally:
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as conn:
            for name in names.values():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
