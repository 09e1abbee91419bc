#!/usr/bin/env bash
# One command from a fresh clone to the demo: sets up .venv, then runs CUTS and both landmark
# models on the bundled samples into demo_out/ (or the folder given as $1).
set -euo pipefail
cd "$(dirname "$0")"
. ./setup.sh
labelfree demo --out "${1:-demo_out}"
