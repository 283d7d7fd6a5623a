"""What the query token is worth: the same policy asked for the next item after <|neg|>, <|neu|> or <|pos|>.

A compact prompt ends with the feedback token of the event it asks about: `<|neg|>`, "the next item
this user dislikes". The timeline SFT trains on every event under its own feedback token, so the same
policy can be asked what the user will meet next with any feedback. If the policy discerns the
feedback it is asked about, `<|neg|>` ranks the future dislikes best. This ranks a run's policy on the
run's test rows (one window: the prompt alone) once per query token, with the pipeline's own beam
search, beams, list length and context exclusion, scores each with negrec's metric code and pairs
`<|neg|>` with the others on the same users. The `<|neg|>` ranking is the pipeline's own prediction
under one window; the script says whether it matches the run's file.

    python benchmarks/bench_query_token.py [--config configs/ml100k.yaml] [--run runs/ml100k] [--set key=value ...]

The run folder is made (or brought up to date) by the pipeline under the config first: by default
the README's first command's run, so after `bash scripts/run_pipeline.sh` nothing is retrained.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result, score_on_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")
QUERIES = {"neg": -1, "neu": 0, "pos": 1}


def ranked_with_query(run: Path, raw: dict, policy: str, feedback: int) -> tuple[pd.DataFrame, float]:
    """The run's `policy` ranked on its test rows from prompts that end with `feedback`'s token:
    (predictions in the log's ids, seconds)."""
    from negrec.data import Prepared
    from negrec.eval.checks import with_original_ids
    from negrec.eval.run import _eval_samples, _to_frame, eval_config
    from negrec.llm import PromptBuilder, constrained_beam_search, load_policy
    from negrec.llm.prompts import FEEDBACK_TOKENS, prompt_config

    cfg, pcfg = eval_config(raw), prompt_config(raw)
    if pcfg.format != "compact":
        raise SystemExit("bench_query_token: the query token exists in compact prompts only (prompt.format: compact)")
    prepared = Prepared.load(run / "data")
    samples = _eval_samples(prepared, cfg)
    model, hf_tok, sid_tok = load_policy(run / policy / "final")
    builder = PromptBuilder(pcfg, sid_tok, prepared.items, hf_tok)
    rows = samples.to_dict("records")
    asked, query = FEEDBACK_TOKENS[-1], FEEDBACK_TOKENS[feedback]
    prompts = [builder.build(r, context_mix=cfg.context_mix) for r in rows]
    if not all(p.endswith(asked) for p in prompts):
        raise SystemExit(f"bench_query_token: a compact prompt that does not end with {asked}")
    prompts = [p[:len(p) - len(asked)] + query for p in prompts]
    exclude = [list(r["context_items"]) for r in rows] if cfg.exclude_context else None
    t0 = time.perf_counter()
    ranked = constrained_beam_search(model, hf_tok, builder.sid_constraint(hf_tok), prompts,
                                     num_beams=max(cfg.num_beams, cfg.k), top_k=cfg.k, exclude=exclude,
                                     batch_size=cfg.batch_size)
    return with_original_ids(_to_frame(samples, ranked), prepared.id_maps), round(time.perf_counter() - t0, 1)


def same_as_pipeline(ours: pd.DataFrame, path: Path) -> bool | None:
    """Whether the `<|neg|>` ranking lists the same items in the same order as the run's predictions
    file (None when the run has none)."""
    if not path.exists():
        return None
    cols = ["user_id", "cut_ts", "rank", "item_id"]
    theirs = pd.read_parquet(path)[cols].sort_values(cols[:3]).reset_index(drop=True)
    return bool(ours[cols].sort_values(cols[:3]).reset_index(drop=True).equals(theirs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml100k.yaml"))
    ap.add_argument("--run", default=str(ROOT / "runs" / "ml100k"))
    ap.add_argument("--policy", default="sft_next", help="the stage folder of the policy (sft_next, grpo, ...)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    from negrec.config import fill_cut_unit, load_config
    from negrec.pipeline import run_pipeline

    run = Path(args.run).resolve()
    raw = load_config(args.config, args.overrides)
    run_pipeline(raw, run)
    fill_cut_unit(raw, run)
    files, seconds, out = {}, {}, run / "query_token"
    out.mkdir(exist_ok=True)
    for name, feedback in QUERIES.items():
        pred, seconds[name] = ranked_with_query(run, raw, args.policy, feedback)
        files[name] = out / f"{args.policy}_{name}.parquet"
        pred.to_parquet(files[name])
    same = same_as_pipeline(pd.read_parquet(files["neg"]), run / "eval" / "predictions" / f"{args.policy}.parquet")
    print(f"<|neg|> ranking equals the pipeline's {args.policy} predictions: {same}")
    pairs = [("neg", "neu"), ("neg", "pos")]
    table, paired = score_on_base(run, files, pairs, METRICS, Path(args.config))
    print_table(table, f"{args.policy} of {run}, asked with each query token (test rows, one window)")
    print_table(paired, "paired a - b (95% CI, bootstrap over users)")
    save_result(f"bench_query_token_{raw['run']['name']}", {
        "command": "python benchmarks/bench_query_token.py " + " ".join(sys.argv[1:]), "policy": args.policy,
        "same_as_pipeline": same, "rank_seconds": seconds, "table": table, "paired": paired})


if __name__ == "__main__":
    main()
