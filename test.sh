#!/usr/bin/env bash
# One command from a fresh clone to the test results: sets up .venv, then runs the linter and
# the default test suite (extra arguments go to pytest, e.g. `./test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")"
. ./setup.sh
ruff check .
pytest "$@"
