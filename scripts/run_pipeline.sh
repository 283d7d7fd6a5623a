#!/usr/bin/env bash
# The main job: set up .venv if needed, then run every stage on a config (default: embedded ML-100K).
#   bash scripts/run_pipeline.sh [configs/ml100k.yaml] [--set key=value ...] [--run-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
# bytecode written into .venv on first use, not compiled again in every process: see setup.sh
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
config=configs/ml100k.yaml
# the config is the first argument when one is given: `--set k=v` alone keeps the default config
if [[ $# -gt 0 && $1 != -* ]]; then config=$1; shift; fi
exec .venv/bin/negrec pipeline --config "$config" "$@"
