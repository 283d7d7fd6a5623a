"""`negrec predict`: a policy whose files are byte-identical to one already ranked (GRPO's validation
shipped its SFT start) reuses that policy's predictions; any other policy is ranked itself."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from tests._tiny_run import CONFIG, tiny_overrides

PREDICT = ["eval.policies=[sft_next, grpo]", "eval.max_users=12", "eval.batch_size=4"]


def _with_grpo(policy_run, run, perturb: bool):
    from safetensors.torch import load_file, save_file

    from negrec.config import load_config
    from negrec.contract import mark_done

    shutil.copytree(policy_run, run)
    shutil.copytree(run / "sft_next" / "final", run / "grpo" / "final")
    if perturb:  # one weight changed: another policy
        path = run / "grpo" / "final" / "model.safetensors"
        weights = load_file(path)
        name = next(k for k in weights if k.endswith("norm.weight"))
        weights[name] = weights[name] * 1.5
        save_file(weights, path, metadata={"format": "pt"})
    raw = load_config(str(CONFIG), [*tiny_overrides(), *PREDICT])
    mark_done(raw, run, "grpo")  # assembled by hand: marked as the stage would
    return raw


@pytest.mark.parametrize("perturb", [False, True], ids=["same-files", "other-weights"])
def test_predict_reuses_a_byte_identical_policy(policy_run, tmp_path, capsys, perturb):
    from negrec.eval.run import run_predict

    run = tmp_path / "run"
    summary = run_predict(_with_grpo(policy_run, run, perturb), run)
    out = capsys.readouterr().out
    sft = pd.read_parquet(run / "eval" / "predictions" / "sft_next.parquet")
    grpo = pd.read_parquet(run / "eval" / "predictions" / "grpo.parquet")
    assert summary["main"] == "grpo" and sft["user_id"].nunique() == 12
    assert json.loads((run / "eval" / "predict_summary.json").read_text()) == summary
    if perturb:
        assert "same_policy_as" not in summary["grpo"] and "[predict] grpo: top-" in out
    else:
        assert summary["grpo"]["same_policy_as"] == "sft_next" and "predictions reused" in out
        pd.testing.assert_frame_equal(grpo, sft, check_exact=True)
        pd.testing.assert_frame_equal(pd.read_parquet(run / "eval" / "candidates" / "grpo.parquet"),
                                      pd.read_parquet(run / "eval" / "candidates" / "sft_next.parquet"), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(run / "eval" / "predictions.parquet"), grpo, check_exact=True)


def test_predict_loads_the_policy_in_the_configured_model_dtype(policy_run, tmp_path, monkeypatch):
    """model.dtype reaches predict's policy load: `auto` is bf16 on CUDA, so a GPU user who sets
    float32 must rank in float32 (predict once loaded every policy with `auto`)."""
    import negrec.llm
    from negrec.config import load_config
    from negrec.contract import mark_done
    from negrec.eval.run import run_predict

    run = tmp_path / "run"
    shutil.copytree(policy_run, run)
    raw = load_config(str(CONFIG), [*tiny_overrides(), "eval.policies=[sft_next]", "eval.max_users=4",
                                    "eval.batch_size=4", "model.dtype=bfloat16"])
    for stage in ("build-model", "sft-next"):  # the same files, marked under the new model section
        mark_done(raw, run, stage)
    loaded, real = [], negrec.llm.load_policy

    def recording_load(path, device=None, dtype="auto"):
        loaded.append(dtype)
        return real(path, device=device, dtype=dtype)

    monkeypatch.setattr(negrec.llm, "load_policy", recording_load)
    run_predict(raw, run)
    assert loaded == ["bfloat16"]
    assert pd.read_parquet(run / "eval" / "predictions" / "sft_next.parquet")["user_id"].nunique() == 4
