#!/usr/bin/env bash
# The test command: set up .venv if needed, run the default suite, then the DeepSpeed suite
# (DeepSpeed compiles C++ ops on its first start; the build is cached in .cache/torch_extensions).
set -euo pipefail
cd "$(dirname "$0")/.."
# Python writes the bytecode of what it imports into .venv on first use (pip installs with --no-compile);
# with PYTHONDONTWRITEBYTECODE set, every process would compile it again (importing the training stack:
# 9.5 s without bytecode, 3.2 s with, on a 2-core machine; the tests start dozens of processes)
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
if [ $# -eq 0 ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider -m deepspeed
fi
