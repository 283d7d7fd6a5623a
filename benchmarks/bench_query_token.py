"""What the query token is worth: the same policy asked for the next item after <|neg|>, <|neu|> or <|pos|>.

A compact prompt ends with the feedback token of the event it asks about: `<|neg|>`, "the next item
this user dislikes". The timeline SFT trains on the SIDs of every event after its own feedback token
(the non-negative ones weighted `sft_next.other_weight`, 1 by default), so the same policy can be asked
what the user will meet next under any feedback. If the policy discerns the feedback it is asked
about, `<|neg|>` ranks the future dislikes best. This ranks a run's policy on the run's test rows once
per query token, from the prompt alone (one window), with the pipeline's own beam search, beams, list
length, context exclusion and precision; scores each with negrec's metric code; and pairs `<|neg|>`
with the others on the same users. Where the pipeline also ranks from one window, its `<|neg|>`
ranking is the pipeline's prediction, and the script checks that against the run's file.

    python benchmarks/bench_query_token.py [--config configs/ml100k.yaml] [--run-dir DIR] [--set key=value ...]

The run folder (by default the CLI's: `runs/<run.name>`) is made or brought up to date by the pipeline
under the config first: after `bash scripts/run_pipeline.sh` nothing is retrained.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result, score_on_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")
QUERIES = {"neg": -1, "neu": 0, "pos": 1}


def refusal(pcfg) -> str | None:
    """Why the query tokens cannot be compared under these prompt settings (None when they can)."""
    if pcfg.format != "compact":
        return "the query token exists in compact prompts only (prompt.format: compact)"
    if not pcfg.feedback_tokens:
        return "prompt.feedback_tokens: false writes every event and the query with one token: nothing to compare"
    if pcfg.like_tokens:
        return ("prompt.like_tokens: true trains the other feedback's SIDs as like tokens, which the SID "
                "constraint does not decode")
    return None


def ranked_with_queries(run: Path, raw: dict, policy: str) -> tuple[dict, dict, int]:
    """The run's `policy` ranked on its test rows from prompts that end with each query token, by the
    pipeline's own ranking (`predict_with_policy`) from one window:
    ({query: predictions in the log's ids}, {query: seconds}, rows ranked)."""
    from negrec.config import section_config
    from negrec.data import Prepared
    from negrec.eval.checks import with_original_ids
    from negrec.eval.run import _eval_samples, eval_config, predict_with_policy
    from negrec.llm.model import ModelConfig
    from negrec.llm.prompts import prompt_config

    cfg, pcfg = replace(eval_config(raw), history_windows=1), prompt_config(raw)
    why = refusal(pcfg)
    if why:
        raise SystemExit(f"bench_query_token: {why}")
    prepared = Prepared.load(run / "data")
    samples = _eval_samples(prepared, cfg)
    dtype = section_config(ModelConfig, raw, "model").dtype
    preds, seconds = {}, {}
    for name, feedback in QUERIES.items():
        t0 = time.perf_counter()
        pred, _ = predict_with_policy(run / policy / "final", prepared, samples, cfg, pcfg, dtype=dtype, query=feedback)
        seconds[name] = round(time.perf_counter() - t0, 1)
        preds[name] = with_original_ids(pred, prepared.id_maps)
    return preds, seconds, len(samples)


def same_as_pipeline(ours: pd.DataFrame, path: Path) -> bool | None:
    """Whether the `<|neg|>` ranking lists the same items in the same order as the run's predictions
    file (None when the run has none)."""
    if not path.exists():
        return None
    cols = ["user_id", "cut_ts", "rank", "item_id"]
    theirs = pd.read_parquet(path)[cols].sort_values(cols[:3]).reset_index(drop=True)
    return bool(ours[cols].sort_values(cols[:3]).reset_index(drop=True).equals(theirs))


def _shown(path: str) -> str:
    """A config path as the JSON records it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml100k.yaml"))
    ap.add_argument("--run-dir", default=None, help="the run folder (default: the CLI's, runs/<run.name>)")
    ap.add_argument("--policy", default="sft_next", help="the stage folder of the policy (sft_next, grpo, ...)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    from negrec.cli import resolve_run_dir, set_threads
    from negrec.config import fill_cut_unit, load_config
    from negrec.eval.run import eval_config
    from negrec.pipeline import run_pipeline

    set_threads(None)  # as the CLI does: a run retrained here gets the CLI's numbers (`run_pipeline`)
    raw = load_config(args.config, args.overrides)
    run = resolve_run_dir(raw, SimpleNamespace(run_dir=args.run_dir, config=args.config)).resolve()
    run_pipeline(raw, run)
    fill_cut_unit(raw, run)
    preds, seconds, n_rows = ranked_with_queries(run, raw, args.policy)
    out = run / "query_token"
    out.mkdir(exist_ok=True)
    files = {name: out / f"{args.policy}_{name}.parquet" for name in preds}
    for name, pred in preds.items():
        pred.to_parquet(files[name])
    windows = eval_config(raw).history_windows
    same = same_as_pipeline(preds["neg"], run / "eval" / "predictions" / f"{args.policy}.parquet") if windows == 1 else None
    print(f"<|neg|> ranking equals the pipeline's {args.policy} predictions: "
          + (str(same) if windows == 1 else f"not compared (the pipeline ranks from {windows} windows here, this from one)"))
    pairs = [("neg", "neu"), ("neg", "pos")]
    table, paired = score_on_base(run, files, pairs, METRICS, Path(args.config))
    print_table(table, f"{args.policy} of {run}, asked with each query token ({n_rows} test rows ranked, one window; "
                       "the metrics count the rows with a dislike in their future)")
    print_table(paired, "paired a - b (95% CI, bootstrap over users)")
    name = (raw.get("run") or {}).get("name") or Path(args.config).stem  # the config's run, as the CLI names it
    save_result(f"bench_query_token_{name}", {
        "command": "python benchmarks/bench_query_token.py " + " ".join(sys.argv[1:]), "config": _shown(args.config),
        "run_dir": run.name,
        "policy": args.policy, "rows_ranked": n_rows, "pipeline_windows": windows, "same_as_pipeline": same,
        "rank_seconds": seconds, "table": table, "paired": paired})


if __name__ == "__main__":
    main()
