#!/usr/bin/env bash
# Installs Forge with its dev extras into .venv (torch 2.13.0 CPU first: a bare `torch`
# would pull a multi-GB CUDA build), checks lint, format, the import layers and types, then
# runs the whole test suite including the slow end-to-end tests. Pass pytest arguments to
# narrow it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# the layer contracts (pyproject.toml [tool.importlinter]): a wrong arrow between packages fails here
.venv/bin/lint-imports --no-cache
# basic type check of the ground layer and the tier contracts (pyproject.toml [tool.mypy] files)
.venv/bin/mypy
# a crash outside any test (e.g. at interpreter exit) prints every thread's stack instead of a bare 139
export PYTHONFAULTHANDLER=1
exec .venv/bin/python -m pytest "$@"
