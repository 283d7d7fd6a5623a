#!/usr/bin/env bash
# The test command: set up .venv if needed, run the default suite, then the DeepSpeed suite
# (DeepSpeed compiles C++ ops on its first start; the build is cached in .cache/torch_extensions).
set -euo pipefail
cd "$(dirname "$0")/.."
# bytecode written into .venv on first use, not compiled again in every process: see setup.sh
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
if [ $# -eq 0 ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider -m deepspeed
fi
