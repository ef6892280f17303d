#!/usr/bin/env bash
# The one command that sets up and runs the server on the example manifest, as an ordinary
# user: loopback addresses, unprivileged ports, everything under ./var. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh fast
.venv/bin/appliance validate appliance.toml
exec .venv/bin/appliance serve --manifest appliance.toml
