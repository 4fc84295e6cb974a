"""infra/compose without a Docker engine: compose.yaml against the Compose Specification's JSON
schema, the NATS cluster config through `nats-server -t`, and what the files promise (three
NATS nodes and R3 streams, init before the processes, a worker that scales and drains, a
non-root image with a healthcheck)."""

import copy
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from jobstream.events import EVENTS_STREAM, TASKS_STREAM
from jobstream.services.stack import nats_server_binary
from tests.infra._schemas import COMPOSE_DIR, REPO_ROOT, compose_validator, load_yaml_documents

NATS_NODES = ("nats-1", "nats-2", "nats-3")
ACCOUNTS = REPO_ROOT / "infra" / "nats" / "accounts.conf"
# service -> the NATS user (infra/nats/accounts.conf) it logs in as
ROLE_OF_SERVICE = {
    "init": "admin",
    "dispatcher": "dispatcher",
    "projector": "projector",
    "ndjson-projector": "projector",
    "api": "api",
    "worker": "worker",
    "cli": "submitter",
}
# service -> the jobstream command it runs
JOBSTREAM_SERVICES = {
    "dispatcher": "dispatcher",
    "projector": "projector",
    "ndjson-projector": "projector",
    "api": "api",
    "worker": "worker",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    [document] = load_yaml_documents(COMPOSE_DIR / "compose.yaml")
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in compose_validator().iter_errors(compose)
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("a misspelt key", lambda doc: doc["services"]["worker"].update(stop_grace=30)),
        ("a list where a mapping goes", lambda doc: doc.update(volumes=["nats-1"])),
        ("a condition Compose does not know", lambda doc: doc["services"]["worker"].update(
            depends_on={"init": {"condition": "service_done"}})),
    ],
)  # fmt: skip
def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], where: str, change: Any
) -> None:
    broken = copy.deepcopy(compose)
    change(broken)
    assert list(compose_validator().iter_errors(broken)), where


def test_three_nats_nodes_share_one_cluster_config(compose: dict[str, Any]) -> None:
    config = (COMPOSE_DIR / "nats-cluster.conf").read_text("utf-8")
    routes = set(re.findall(r"nats-route://([\w-]+):6222", config))
    assert routes == set(NATS_NODES)
    for node in NATS_NODES:
        service = services(compose)[node]
        assert service["environment"]["NATS_SERVER_NAME"] == node
        assert service["hostname"] == node
        assert "./nats-cluster.conf:/etc/nats/nats-cluster.conf:ro" in service["volumes"]
        # included by nats-cluster.conf, from beside it
        assert "../nats/accounts.conf:/etc/nats/accounts.conf:ro" in service["volumes"]
        assert 'include "accounts.conf"' in config
        assert f"{node}:/data" in service["volumes"]
        # The tasks stream waits with message schedules: nats-server 2.12 or later.
        major, minor = re.findall(r"nats:(\d+)\.(\d+)", service["image"])[0]
        assert (int(major), int(minor)) >= (2, 12)


@pytest.mark.parametrize("node", NATS_NODES)
def test_nats_server_accepts_the_cluster_config_for_each_node(
    node: str, compose: dict[str, Any], tmp_path: Path
) -> None:
    # As the container sees them: the accounts beside the cluster config.
    shutil.copy(COMPOSE_DIR / "nats-cluster.conf", tmp_path / "nats-cluster.conf")
    shutil.copy(ACCOUNTS, tmp_path / "accounts.conf")
    passwords = services(compose)[node]["environment"]
    env = {name: f"secret-{name}" for name in passwords if name.endswith("_PASSWORD")}
    assert len(env) == len(set(ROLE_OF_SERVICE.values()))
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats-cluster.conf")],
        env={**env, "NATS_SERVER_NAME": node},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout + result.stderr


def test_each_process_logs_in_as_its_role(compose: dict[str, Any]) -> None:
    users = dict(re.findall(r"user: (\w+), password: \$(\w+)", ACCOUNTS.read_text("utf-8")))
    node_env = services(compose)["nats-1"]["environment"]
    example = (COMPOSE_DIR / "env.example").read_text("utf-8")
    jobstream_services = {
        name for name, service in services(compose).items() if name not in NATS_NODES
    } - {"postgres"}
    assert jobstream_services == ROLE_OF_SERVICE.keys()
    for name, role in ROLE_OF_SERVICE.items():
        env = services(compose)[name]["environment"]
        assert env["JOBSTREAM_NATS_USER"] == role, name
        variable = users[role]
        assert env["JOBSTREAM_NATS_PASSWORD"].startswith(f"${{{variable}:?"), name
        # The server knows the same password, from the same variable.
        assert node_env[variable].startswith(f"${{{variable}:?"), name
        assert f"\n{variable}=" in example


def test_init_makes_r3_streams_before_any_process_starts(compose: dict[str, Any]) -> None:
    init = services(compose)["init"]
    assert init["command"] == ["jobstream", "init", "--replicas", "3"]
    assert init["depends_on"] == {
        **{node: {"condition": "service_healthy"} for node in NATS_NODES},
        "postgres": {"condition": "service_healthy"},
    }
    for name, command in JOBSTREAM_SERVICES.items():
        service = services(compose)[name]
        assert service["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
        urls = service["environment"]["JOBSTREAM_NATS_URL"].split(",")
        assert urls == [f"nats://{node}:4222" for node in NATS_NODES], name
        assert service["command"][:2] == ["jobstream", command]


def test_each_projection_runs_once_and_the_files_are_on_a_volume(compose: dict[str, Any]) -> None:
    only = {
        name: service["command"][service["command"].index("--only") + 1]
        for name, service in services(compose).items()
        if service.get("command", [])[:2] == ["jobstream", "projector"]
    }
    assert sorted(only.values()) == ["ndjson", "postgres"]
    [ndjson] = [name for name, projection in only.items() if projection == "ndjson"]
    assert "results:/data/results" in services(compose)[ndjson]["volumes"]


def test_the_worker_scales_and_drains_within_its_stop_grace(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker"]
    # `--scale worker=N` needs no fixed name and no host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    grace_s = float(worker["command"][worker["command"].index("--grace-s") + 1])
    stop_s = float(worker["stop_grace_period"].removesuffix("s"))
    assert stop_s >= grace_s + 5
    assert "JOBSTREAM_WORKER_PROCESSES" in worker["environment"]


def test_the_guide_names_the_streams_and_files_that_exist() -> None:
    guide = (REPO_ROOT / "docs" / "deployment.md").read_text("utf-8")
    assert f"nats stream edit {EVENTS_STREAM}" in guide
    assert TASKS_STREAM in guide
    for path in re.findall(r"`(infra/[\w./-]+)`", guide):
        assert (REPO_ROOT / path).exists(), path


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (COMPOSE_DIR / "Dockerfile").read_text("utf-8").replace("\\\n", " ")
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_the_image_is_slim_non_root_with_a_healthcheck() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert all(base.split()[0].endswith("-slim") for base in froms)
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    [healthcheck] = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    [cmd] = [rest for word, rest in instructions if word == "CMD"]
    assert cmd == '["jobstream", "api"]'


def test_the_image_copies_every_package_folder_and_the_root_init() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))
    packages = pyproject["tool"]["setuptools"]["packages"]
    top_folders = {name.split(".")[1] for name in packages if name.count(".") >= 1}
    copied: set[str] = set()
    for word, rest in _dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied.update(shlex.split(rest)[:-1])
    assert {"__init__.py", "pyproject.toml", "README.md"} <= copied
    assert top_folders <= copied
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text("utf-8").split()
    for source in copied:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source
