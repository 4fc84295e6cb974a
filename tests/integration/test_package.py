"""The wheel a user installs: one top-level name, `jobstream`, with every module and data file
of the source folders, and it runs from where it is unpacked."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("events", "services", "projections", "cli", "bench")
DATA_SUFFIXES = (".py", ".sql", ".html", ".js", ".css", ".svg")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the sources, so the build leaves nothing in the working tree."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "__init__.py"):
        shutil.copy(REPO / name, tree / name)
    for folder in SOURCES:
        shutil.copytree(REPO / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(tree),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel_file] = out.glob("jobstream-*.whl")
    return wheel_file


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"jobstream"}


def test_the_wheel_holds_every_source_and_data_file(wheel: Path) -> None:
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "jobstream/" + str(path.relative_to(REPO))
        for folder in SOURCES
        for path in (REPO / folder).rglob("*")
        if path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts
    }
    assert len(expected) > 100
    assert expected - inside == set()


def test_the_wheel_carries_the_dashboard_with_its_vendored_licence(wheel: Path) -> None:
    inside = set(zipfile.ZipFile(wheel).namelist())
    static = "jobstream/services/api/static/"
    for name in ("index.html", "app.js", "app.css", "vendor/uPlot.iife.min.js"):
        assert static + name in inside, name
    assert {static + "vendor/uPlot.LICENSE.txt", static + "vendor/README.txt"} <= inside


def test_the_unpacked_wheel_runs(wheel: Path, tmp_path: Path) -> None:
    """Imported from the unpacked wheel (ahead of the editable install on sys.path): the
    command starts, and the files it reads at run time are there."""
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = (
        "import jobstream, jobstream.projections._migrate as m, jobstream.services.api._app as a;"
        "from jobstream.cli.app import app;"
        "from jobstream import TaskContext;"
        "print(jobstream.__file__);"
        "print(len(m._migrations()), len(a._dashboard_html('t')) > 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    shown = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    where, counts = shown.stdout.splitlines()
    assert where == str(tmp_path / "site" / "jobstream" / "__init__.py")
    assert counts.split()[1] == "True" and int(counts.split()[0]) > 0


def test_the_benchmarks_dependencies_are_an_extra(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in archive.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    for name in ("psutil", "httptools"):
        [entry] = [r for r in requires if r.startswith(name)]
        assert entry.endswith('extra == "bench"'), entry
