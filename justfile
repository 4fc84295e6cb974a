# jobstream's front door. `just` comes from the rust-just wheel in .venv (pip install -e '.[dev]').

set shell := ["bash", "-euo", "pipefail", "-c"]

export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# List the recipes.
default:
    @just --list

# [setup] Create .venv and install jobstream with its dev tools.
install:
    test -x .venv/bin/python || python3 -m venv .venv
    .venv/bin/pip install -q -e '.[dev]'

# [test] The whole suite: unit, integration and fault tests against real servers (the tests
# marked `isolated` after the rest, in a pytest process of their own).
test *ARGS:
    pytest {{ARGS}}
    pytest -m isolated

# [test] Unit tests only (no servers).
test-unit *ARGS:
    pytest tests/unit {{ARGS}}

# [test] Fault tests: kills and restarts of real processes and servers.
test-faults *ARGS:
    pytest tests/faults {{ARGS}}

# [quality] Lint and format check.
lint:
    ruff check .
    ruff format --check .

# [quality] Format the code.
fmt:
    ruff format .
    ruff check --fix .

# [quality] Strict type check of source and tests.
typecheck:
    mypy

# [quality] Everything CI checks.
check: lint typecheck test

# [run] Start the embedded stack and every process; Ctrl-C stops all.
up *ARGS:
    jobstream up {{ARGS}}

# [run] Run the sample jobs end to end and print the summary.
demo *ARGS:
    jobstream demo {{ARGS}}

# [measure] Benchmarks (see BENCHMARKS.md).
bench *ARGS:
    jobstream bench {{ARGS}}
