#!/usr/bin/env bash
# Create or update .venv with the package and its pinned dependencies (constraints.txt).
# Needs no root. Skips the install when pyproject.toml and constraints.txt have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=${1:-test,fast}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[${extras}]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
