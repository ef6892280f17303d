#!/usr/bin/env bash
# The one command that sets up everything and runs every check: Debian packages for the real
# servers the tests start (as root), the virtualenv, lint, types, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system.sh
bash scripts/setup-venv.sh test,fast
echo "== ruff"
.venv/bin/ruff check appliance tests bench
.venv/bin/ruff format --check appliance tests bench
echo "== mypy"
.venv/bin/mypy
echo "== import-linter"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/pytest "$@"
