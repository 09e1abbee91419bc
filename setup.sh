#!/usr/bin/env bash
# Creates .venv (if missing) and installs what README.md's "Install" lists. Sourced by
# demo.sh and test.sh; run it alone to set up without running anything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU build of torch first: plain `pip install torch` brings several GB of CUDA packages.
python -c "import torch" 2>/dev/null || pip install --quiet torch==2.13.0
pip install --quiet -e ".[test,web]"
