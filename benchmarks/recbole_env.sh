#!/usr/bin/env bash
# Creates benchmarks/.recbole-venv, the environment in which benchmarks/cf_vs_recbole.py runs RecBole.
# RecBole is never a dependency of recalign: it lives only here, beside the benchmark.
#
#   bash benchmarks/recbole_env.sh            # from the repository root; idempotent
#   PYTHON=python3.11 bash benchmarks/recbole_env.sh
#
# Pins (docs/benchmarks/cf.md, "RecBole's environment"): torch 2.13.0 first (the same torch as recalign's
# environment, so both sides run the same kernels); RecBole 1.2.1 pulls ray, which imports pkg_resources
# (setuptools<81); numpy 2 breaks ray and RecBole (numpy<2, and pandas<3, which needs numpy 2).
# Reloading the best checkpoint additionally needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 at run time: the
# benchmark sets it in RecBole's child process.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.recbole-venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "recbole==1.2.1" "numpy<2" "pandas<3" "setuptools<81"

TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$venv/bin/python" - <<'EOF'
import numpy, pandas, recbole, torch
from recbole.quick_start import run_recbole  # noqa: F401  (imports ray, the usual breakage)
from recbole.model.sequential_recommender import SASRec, GRU4Rec, BERT4Rec  # noqa: F401
print(f"RecBole environment ready: recbole {recbole.__version__}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, pandas {pandas.__version__}")
EOF
