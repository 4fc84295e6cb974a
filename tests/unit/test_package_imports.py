"""Every module imports jobstream's own code as `jobstream.…`: a bare `import events` (or
`services`, `projections`, `cli`, `bench`) would load a second copy of a module under another name,
and msgspec's type checks fail across the two copies."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("events", "services", "projections", "cli", "bench", "tests")
BARE = {"events", "services", "projections", "cli", "bench"}


def _bare_imports(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{where}:{node.lineno}: {name}" for name in names if name.split(".")[0] in BARE]
    return found


def test_no_module_imports_a_bare_top_level_name() -> None:
    sources = [REPO / "__init__.py", *(p for f in FOLDERS for p in (REPO / f).rglob("*.py"))]
    assert len(sources) > 100
    offenders = [
        line
        for path in sources
        for line in _bare_imports(path.read_text("utf-8"), str(path.relative_to(REPO)))
    ]
    assert offenders == []


@pytest.mark.parametrize("source", ["import events", "from cli.app import main"])
def test_the_check_sees_a_bare_import(source: str) -> None:
    assert _bare_imports(source, "probe.py") == [f"probe.py:1: {source.split()[1]}"]


def test_the_handler_api_is_importable_from_jobstream() -> None:
    import jobstream
    from jobstream.services import worker

    assert jobstream.task_kind is worker.task_kind
    assert jobstream.TaskContext is worker.TaskContext
    with pytest.raises(AttributeError):
        jobstream.no_such_name  # noqa: B018
