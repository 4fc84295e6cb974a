"""`jobstream schema` compiles in ajv's strict mode (the JavaScript validator integrators use),
which refuses OpenAPI's keywords and unknown formats. Needs node and npm: skipped without them
or when npm cannot install ajv (no registry)."""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jobstream.events import event_json_schema, event_type
from tests.unit.test_schema import ONE_OF_EACH, started, wire

AJV_PACKAGES = ("ajv@8", "ajv-formats@3")
# Fail fast when the registry is out of reach (npm's own retries take minutes).
NPM_INSTALL = (
    "npm",
    "install",
    "--no-save",
    "--no-audit",
    "--no-fund",
    "--fetch-retries=1",
    "--fetch-retry-mintimeout=1000",
    "--fetch-retry-maxtimeout=5000",
)
NPM_TIMEOUT_S = 120
NODE_TIMEOUT_S = 30
SCRIPT = Path(__file__).with_name("ajv_strict.cjs")


def _installed(directory: Path) -> bool:
    modules = directory / "node_modules"
    return (modules / "ajv" / "dist" / "2020.js").is_file() and (modules / "ajv-formats").is_dir()


@pytest.fixture(scope="session")
def ajv_modules(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `node_modules` with ajv, installed once and kept in pytest's cache."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not on this machine: ajv's strict mode is not checked")
    cache = pytestconfig.cache
    directory = cache.mkdir("ajv-8") if cache is not None else tmp_path_factory.mktemp("ajv")
    if not _installed(directory):
        try:
            subprocess.run(
                [*NPM_INSTALL, "--prefix", str(directory), *AJV_PACKAGES],
                check=True,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm could not install ajv within {NPM_TIMEOUT_S} s")
        except subprocess.CalledProcessError as exc:
            first_lines = " / ".join(exc.stderr.strip().splitlines()[:4])
            pytest.skip(f"npm could not install ajv: {first_lines}")
    return directory / "node_modules"


def ajv_verdicts(modules: Path, tmp_path: Path, instances: list[Any]) -> list[bool]:
    schema_path, instances_path = tmp_path / "schema.json", tmp_path / "instances.json"
    schema_path.write_text(json.dumps(event_json_schema()))
    instances_path.write_text(json.dumps(instances))
    done = subprocess.run(
        ["node", str(SCRIPT), str(schema_path), str(instances_path)],
        check=False,
        env={**os.environ, "NODE_PATH": str(modules)},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    verdicts: list[bool] = json.loads(done.stdout)
    return verdicts


def test_the_schema_compiles_in_ajv_strict_mode_and_judges_events(
    ajv_modules: Path, tmp_path: Path
) -> None:
    valid = [wire(event) for event in ONE_OF_EACH]
    invalid = [
        started(at=None),
        started(job_id="J" * 5000),
        started(attempt="1"),
        started(type="task.exploded"),
        started(lease_deadline="2026-01-01T00:00:00"),
    ]
    verdicts = ajv_verdicts(ajv_modules, tmp_path, valid + invalid)
    assert verdicts[: len(valid)] == [True] * len(valid), [event_type(e) for e in ONE_OF_EACH]
    assert verdicts[len(valid) :] == [False] * len(invalid)
