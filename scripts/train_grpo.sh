#!/usr/bin/env bash
# Progressive GRPO under DeepSpeed, on one CPU process (gloo) or N GPUs.
#
#   scripts/train_grpo.sh [--gpus N] [--zero 2|3|none] [--launcher accelerate|deepspeed] -- \
#       --config configs/ml100k.yaml --run-dir runs/ml100k [--set grpo.generation=beam ...]
#
# --gpus 0 (the default when no GPU is visible) runs one process with gloo: RANK/WORLD_SIZE/
# MASTER_ADDR/MASTER_PORT are set here, as a launcher would. DeepSpeed compiles its C++ ops on
# first start (about 1-2 min); TORCH_EXTENSIONS_DIR caches them (default ~/.cache/negrec/torch_extensions).
# Everything after `--` goes to `negrec grpo`; NEGREC_ENTRY replaces that command (tests use it).
# LAUNCH_ARGS adds launcher options, e.g. several machines: LAUNCH_ARGS="--num_machines 2 --machine_rank 0
# --main_process_ip host0" (accelerate). Precision is negrec's (grpo.bf16: bf16 on CUDA by default; the
# Trainer sets it over accelerate's --mixed_precision). SFT runs the same way: see README, "Several GPUs".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPUS=""
ZERO=2
LAUNCHER=accelerate
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --zero) ZERO="$2"; shift 2 ;;
    --launcher) LAUNCHER="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "train_grpo.sh: unknown option $1 (put negrec's arguments after --)" >&2; exit 2 ;;
  esac
done

# the interpreter: $PYTHON, else the project's .venv, else python on PATH
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
PYBIN="$(dirname "$(command -v "$PYTHON")")"
export PATH="$PYBIN:$PATH"  # accelerate / deepspeed launchers from the same environment

if [[ -z "$GPUS" ]]; then
  GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
fi

DS_ARGS=()
case "$ZERO" in
  2|3) DS_ARGS=(--set "grpo.deepspeed=$ROOT/configs/deepspeed/zero$ZERO.json") ;;
  none) ;;
  *) echo "train_grpo.sh: --zero must be 2, 3 or none, got $ZERO" >&2; exit 2 ;;
esac

export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/negrec/torch_extensions}"
read -r -a ENTRY <<< "${NEGREC_ENTRY:--m negrec.cli grpo}"
read -r -a EXTRA <<< "${LAUNCH_ARGS:-}"

if [[ "$GPUS" == "0" ]]; then
  # One CPU process: DeepSpeed's CPU accelerator talks gloo; give it the rendezvous a launcher would.
  export RANK="${RANK:-0}" LOCAL_RANK="${LOCAL_RANK:-0}" WORLD_SIZE="${WORLD_SIZE:-1}"
  export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  export MASTER_PORT="${MASTER_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
  exec "$PYTHON" "${ENTRY[@]}" "$@" "${DS_ARGS[@]}"
fi

case "$LAUNCHER" in
  accelerate)
    [[ " ${EXTRA[*]} " == *" --num_machines "* ]] || EXTRA=(--num_machines 1 "${EXTRA[@]}")
    exec accelerate launch --num_processes "$GPUS" --mixed_precision no "${EXTRA[@]}" \
                "${ENTRY[@]}" "$@" "${DS_ARGS[@]}" ;;
  deepspeed)
    [[ "${ENTRY[0]}" == "-m" ]] && ENTRY[0]=--module  # the deepspeed launcher spells it --module
    exec deepspeed --num_gpus "$GPUS" "${EXTRA[@]}" "${ENTRY[@]}" "$@" "${DS_ARGS[@]}" ;;
  *) echo "train_grpo.sh: --launcher must be accelerate or deepspeed, got $LAUNCHER" >&2; exit 2 ;;
esac
