"""Progressive GRPO on a tiny model: stages, logged rewards, resume after a kill, beam groups."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _grpo_tiny import (LEVELS, RecordingPrompts, hit_reward, make_constraint, tiny_hf_tokenizer,  # noqa: E402
                        tiny_policy, tiny_samples, tiny_sid_tokenizer)

from negrec.config import ConfigError, from_dict  # noqa: E402
from negrec.io import read_json  # noqa: E402
from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, stage_plan, train_progressive_grpo  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo_tiny")
    sid_tok = tiny_sid_tokenizer()
    hf_tok = tiny_hf_tokenizer(sid_tok)
    sft = tiny_policy(d / "sft_next" / "final", hf_tok)
    return {"sid": sid_tok, "hf": hf_tok, "sft": sft, "constraint": make_constraint(sid_tok, hf_tok)}


def _cfg(**kw):
    stages = [GRPOStageConfig("neg_recent", context_mix=0.0, neg_window_days=3.0, max_steps=1, beta=0.1),
              GRPOStageConfig("neg_pos", context_mix=1.0, neg_window_days=None, max_steps=2, beta=0.02)]
    base = dict(stages=stages, num_generations=2, per_device_train_batch_size=4, learning_rate=1e-3,
                save_steps=1, logging_steps=1, seed=0)
    base.update(kw)
    return ProgressiveGRPOConfig(**base)


def _run(tiny, cfg, out, prompts=None, seen=None, **kw):
    return train_progressive_grpo(
        cfg, sft_dir=tiny["sft"], samples=tiny_samples(), build_prompt=prompts or RecordingPrompts(tiny["sid"]),
        reward_funcs=[hit_reward(tiny["sid"], seen)], sid_constraint=tiny["constraint"],
        completion_length=LEVELS + 1, out_dir=out, tb_dir=out.parent / "tb", **kw)


def test_progressive_grpo_changes_stage_logs_rewards_and_resumes(tiny, tmp_path):
    out = tmp_path / "grpo"
    prompts, seen = RecordingPrompts(tiny["sid"]), []
    # Killed after global step 2, i.e. in the middle of stage 1 (steps 2-3).
    first = _run(tiny, _cfg(), out, prompts=prompts, seen=seen, stop_after_steps=2)
    assert first == {"stopped_at": 2}
    progress = read_json(out / "progress.json")
    assert [s["index"] for s in progress["stages"]] == [0]
    assert progress["current"]["index"] == 1 and progress["current"]["step"] == 1
    assert not (out / "final").exists()
    # The stage and its KL weight are in the trainer state of the committed checkpoint.
    state = read_json(out / progress["current"]["checkpoint"] / "trainer_state.json")
    assert state["log_history"][-1]["stage"] == 1 and state["log_history"][-1]["stage_beta"] == 0.02
    assert state["stateful_callbacks"]["StageCallback"]["args"]["stage_name"] == "neg_pos"

    summary = _run(tiny, _cfg(), out, prompts=prompts, seen=seen)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # One row per global step, none repeated: the resumed run went on from the saved step.
    assert [r["global_step"] for r in rows] == [1, 2, 3]
    assert [r["stage"] for r in rows] == [0, 1, 1]
    assert [r["stage_step"] for r in rows] == [1, 1, 2]
    assert [r["beta"] for r in rows] == [0.1, 0.02, 0.02]
    assert all(isinstance(r["reward"], float) for r in rows)
    assert all(r["zero_std_share"] is not None for r in rows)
    assert summary["total_steps"] == 3 and [s["steps"] for s in summary["stages"]] == [1, 2]
    # Each stage rebuilt the prompts with its own context settings.
    assert {(0.0, 3.0), (1.0, None)} <= set(prompts.calls)
    # Groups were generated under the SID constraint: every completion is a real item.
    assert seen and all(i is not None for i in seen)
    assert (out / "final" / "config.json").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))
    assert not list(out.glob("stage*/checkpoint-*"))  # checkpoints are dropped once a stage is done


def test_beam_groups_are_distinct_valid_sids(tiny, tmp_path):
    seen = []
    cfg = _cfg(generation="beam", stages=[GRPOStageConfig("neg_pos", context_mix=1.0, neg_window_days=None,
                                                          max_steps=1, beta=0.05)])
    summary = _run(tiny, cfg, tmp_path / "grpo", seen=seen)
    assert summary["total_steps"] == 1
    assert len(seen) == 4 and all(i is not None for i in seen)
    # Each group of G=2 holds the two best beams of one prompt: two different items.
    assert seen[0] != seen[1] and seen[2] != seen[3]


def test_plain_grpo_runs_final_context_for_same_total_steps():
    cfg = _cfg(progressive=False)
    plan = stage_plan(cfg)
    assert len(plan) == 1 and plan[0].max_steps == 3
    assert (plan[0].context_mix, plan[0].neg_window_days, plan[0].beta) == (1.0, None, 0.02)


def test_dynamic_balance_advances_on_plateau():
    from negrec.train.grpo_trainer import StageCallback

    cb = StageCallback(plateau_window=2, plateau_min_improvement=0.05)
    cb.rewards = [0.1, 0.2, 0.4, 0.5]  # improving: stay
    assert not cb.plateaued()
    cb.rewards += [0.5, 0.5]  # last window 0.5 vs previous 0.45 -> +0.05 ... then flat
    cb.rewards += [0.5, 0.51]
    assert cb.plateaued()
    assert not StageCallback(plateau_window=0).plateaued()


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="multiple of grpo.num_generations"):
        _cfg(num_generations=3)
    with pytest.raises(ValueError, match="generation"):
        _cfg(generation="greedy")
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(ProgressiveGRPOConfig, {"stagez": []}, "x.yaml: grpo")
    cfg = from_dict(ProgressiveGRPOConfig, {"stages": [{"name": "a", "max_steps": 2, "neg_window_days": None}]},
                    "x.yaml: grpo")
    assert cfg.stages[0].max_steps == 2 and cfg.stages[0].neg_window_days is None
