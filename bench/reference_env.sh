#!/usr/bin/env bash
# Build bench/.refenv: the software stack the CUTS reference implementation segments with
# (multiscale_phate 0.0 on phate 1.0.9, graphtools 1.5.2, scikit-learn 1.1.3, numpy 1.26),
# isolated from the engine's environment. Idempotent: does nothing when the stack imports.
# Usage: bash bench/reference_env.sh        (about 2 minutes the first time; needs PyPI)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="$here/.refenv"
python="${PYTHON:-python3}"
if [ -x "$env_dir/bin/python" ] && "$env_dir/bin/python" -c "import multiscale_phate, phate, graphtools, sklearn" 2>/dev/null; then
    exit 0
fi
"$python" -m venv "$env_dir"
"$env_dir/bin/python" -m pip install --quiet --upgrade pip
# The four pins the issue names; the rest of reference-requirements.txt is what pip resolved
# for them on Python 3.11 (s_gd2 builds from source: it needs a C++ compiler).
"$env_dir/bin/python" -m pip install --quiet -r "$here/reference-requirements.txt"
"$env_dir/bin/python" -c "import multiscale_phate, phate, graphtools, sklearn, numpy; print('reference env ready: phate', phate.__version__, 'graphtools', graphtools.__version__, 'sklearn', sklearn.__version__, 'numpy', numpy.__version__)"
