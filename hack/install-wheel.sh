#!/usr/bin/env bash
# Build the cachelink wheel (C++ core included) into WHEEL_DIR and install it into a fresh venv at VENV.
# Used by the Dockerfile's builder stage and by tests/packaging, so both run exactly these commands.
set -euo pipefail
wheel_dir="${1:?usage: install-wheel.sh WHEEL_DIR VENV}"
venv="${2:?usage: install-wheel.sh WHEEL_DIR VENV}"
src="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m pip wheel --no-deps --wheel-dir "$wheel_dir" "$src"
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir "$wheel_dir"/cachelink-*.whl
"$venv/bin/cachelink-operator" --help >/dev/null
"$venv/bin/cachelink-agent" --help >/dev/null
