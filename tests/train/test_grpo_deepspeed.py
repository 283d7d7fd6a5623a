"""2 GRPO steps under DeepSpeed ZeRO-2 on one CPU process (gloo), launched by scripts/train_grpo.sh.

DeepSpeed builds its shm comm op on first start (about 75 s on 2 cores here; about 8 s once
TORCH_EXTENSIONS_DIR holds it), so this runs only with `-m deepspeed` (CI's own step).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent("""
    # Stands in for `negrec grpo --run-dir DIR --set k=v` on a tiny policy (what the script launches).
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from _grpo_tiny import (LEVELS, RecordingPrompts, hit_reward, make_constraint, tiny_hf_tokenizer,
                            tiny_policy, tiny_samples, tiny_sid_tokenizer)
    from negrec.config import apply_overrides, section_config
    from negrec.train.grpo import ProgressiveGRPOConfig, train_progressive_grpo

    argv = sys.argv[1:]
    run_dir = Path(argv[argv.index("--run-dir") + 1])
    raw = apply_overrides({{}}, [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
    cfg = section_config(ProgressiveGRPOConfig, raw, "grpo")
    sid = tiny_sid_tokenizer(); hf = tiny_hf_tokenizer(sid)
    sft = tiny_policy(run_dir / "sft_next" / "final", hf)
    summary = train_progressive_grpo(cfg, sft_dir=sft, samples=tiny_samples(), build_prompt=RecordingPrompts(sid),
                                     reward_funcs=[hit_reward(sid)], sid_constraint=make_constraint(sid, hf),
                                     completion_length=LEVELS + 1, out_dir=run_dir / "grpo", tb_dir=run_dir / "tb" / "grpo")
    (run_dir / "summary.json").write_text(json.dumps(summary))
""")


@pytest.mark.deepspeed
@pytest.mark.timeout(900)
def test_two_grpo_steps_under_zero2_on_cpu(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(Path(__file__).parent)))
    run_dir = tmp_path / "run"
    env = {**os.environ, "NEGREC_ENTRY": str(driver), "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(k, None)
    sets = ["grpo.num_generations=2", "grpo.per_device_train_batch_size=4", "grpo.learning_rate=0.001",
            "grpo.stages=[{name: neg_all, context_mix: 0.0, neg_window_days: null, max_steps: 1, beta: 0.1},"
            " {name: neg_pos, context_mix: 1.0, neg_window_days: null, max_steps: 1, beta: 0.05}]"]
    cmd = ["bash", str(ROOT / "scripts" / "train_grpo.sh"), "--gpus", "0", "--zero", "2", "--",
           "--run-dir", str(run_dir)] + [x for s in sets for x in ("--set", s)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=850, executable=None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_steps"] == 2
    assert [s["deepspeed_zero_stage"] for s in summary["stages"]] == [2, 2]
    rows = [json.loads(x) for x in (run_dir / "grpo" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [0, 1] and all(r["reward"] is not None for r in rows)
    assert (run_dir / "grpo" / "final" / "config.json").exists()
