#!/usr/bin/env bash
# The main job: set up .venv if needed, then run every stage on a config (default: embedded ML-100K).
#   bash scripts/run_pipeline.sh [configs/ml100k.yaml] [--set key=value ...] [--run-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
# Python writes the bytecode of what it imports into .venv on first use (pip installs with --no-compile);
# with PYTHONDONTWRITEBYTECODE set, every process would compile it again (importing the training stack:
# 9.5 s without bytecode, 3.2 s with, on a 2-core machine; the tests start dozens of processes)
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
config=${1:-configs/ml100k.yaml}
shift || true
exec .venv/bin/negrec pipeline --config "$config" "$@"
