#!/usr/bin/env bash
# Creates .venv and installs recalign with its test tools. torch comes first and pinned: on this kind of
# machine torch==2.13.0 is a CPU wheel on disk, while an unpinned requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
