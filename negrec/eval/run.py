"""Stage entries of `negrec.eval`: baselines, predict, evaluate (the results table), filter, report.

Every method, negrec's policies and the baselines alike, writes one file
`eval/predictions/<method>.parquet` (user_id, cut_ts, rank, item_id, score); `negrec evaluate`
scores every such file against `eval/targets.parquet` and the log, and nothing else.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import section_config
from ..contract import UNRECORDED, left_out, shared_stage_files, stage_files, stage_folder, up_to_date
from ..data.prepare import cuts_at_day_start, load_id_maps
from ..data.splits import DAY
from ..io import folder_sha256, read_json, write_json, write_parquet, write_text
from ..rewards.matching import ItemEmbeddings, ItemSets, swing_from_log
from ..stages import STAGES
from .blend import BlendConfig, blend_name, is_blend, rerank
from .checks import check_predictions, with_original_ids
from .filter import filter_curve
from .metrics import MetricsConfig, candidate_sets, evaluate_predictions, rankings_from_frame, training_log
from .stats import bootstrap_summary, format_ci, paired_differences, paired_summary
from .windows import DAY_CUT_WINDOWS, mix_rankings, older_window_rows



@dataclass
class EvalConfig:
    split: str = "test"
    k: int = 50                        # items predicted per user (the largest K evaluated)
    num_beams: int = 150               # beam width of constrained beam search (>= k; 3 x k: the model's own top k)
    policies: list[str] = field(default_factory=lambda: ["sft_next", "grpo_plain", "grpo"])
    context_mix: float = 1.0           # prompt context at inference: full mixed history
    batch_size: int = 8
    exclude_context: bool = True       # never predict an item the user already touched
    max_users: int = 0                 # >0: evaluate a deterministic subset of users, all their rows (quick runs)
    # the policy ranks from the last N windows of prompt.max_events events of each user's history, each
    # item's probability summed over them (`negrec.eval.windows`). Unset: 4 under day cuts, where the
    # future is the coming days, 1 under event cuts, where it is the rest of the prompt's burst
    history_windows: int | None = None
    # older windows only for users whose latest event lies at least this many days before the cut: a
    # user seen within the day continues that session, and older windows cost them (0: every user)
    history_windows_gap_days: float = 1.0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # method pairs "a:b" compared on the same rows (eval/paired.json); b may be `best_baseline`.
    # Empty: the main policy vs the best baseline, sft_next and grpo_plain (see `resolve_pairs`)
    pairs: list = field(default_factory=list)

    def __post_init__(self):
        for name in ("k", "num_beams", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_users < 0:
            raise ValueError(f"eval.max_users must not be negative, got {self.max_users}")
        if self.history_windows is not None and self.history_windows < 1:
            raise ValueError(f"eval.history_windows must be at least 1, got {self.history_windows}")
        if not self.history_windows_gap_days >= 0:  # NaN fails too
            raise ValueError(f"eval.history_windows_gap_days must not be negative, got {self.history_windows_gap_days}")
        if not 0.0 <= self.context_mix <= 1.0:
            raise ValueError(f"eval.context_mix must be in [0, 1], got {self.context_mix}")


def eval_config(raw: dict) -> EvalConfig:
    """Section `eval` of a loaded config, `history_windows` resolved from the data's cuts when unset."""
    from ..llm.prompts import prompt_config

    cfg = section_config(EvalConfig, raw, "eval")
    if cfg.history_windows is None:  # a verbose prompt has no windows (a set value is refused: check_config)
        compact = prompt_config(raw).format == "compact"
        cfg = replace(cfg, history_windows=DAY_CUT_WINDOWS if compact and cuts_at_day_start(raw) else 1)
    return cfg


@dataclass
class BaselinesConfig:
    methods: list[str] = field(default_factory=lambda: ["random", "popular_negatives", "negative_ratio", "item_knn",
                                                        "user_knn", "sasrec_neg", "sasrec_mixed"])
    sasrec_epochs: int = 30
    seed: int = 0


POLICY_DIRS = {"sft_align": "sft_align/final", "sft_next": "sft_next/final", "grpo": "grpo/final",
               "grpo_plain": "grpo_plain/final"}
POLICY_LABELS = {"sft_align": "SID LM, alignment SFT", "sft_next": "SID LM, SFT", "grpo_plain": "SID LM, plain GRPO",
                 "grpo": "negrec (progressive GRPO)"}


def policy_stage(name: str) -> str:
    """The stage whose folder holds policy `name` (`POLICY_DIRS`), e.g. grpo_plain -> grpo-plain."""
    folder = POLICY_DIRS.get(name, name).split("/")[0]
    return next((s.name for s in STAGES if s.folder == folder), "")


def policy_labels(run_dir: Path) -> dict[str, str]:
    """The table's names for the policies: the `grpo` stage run with `grpo.progressive: false` is plain
    GRPO, and a GRPO whose validation kept its SFT start says so (its row is the SFT policy's)."""
    path = Path(run_dir) / "grpo" / "summary.json"
    summary = read_json(path) if path.exists() else {}
    kind = "plain" if summary.get("progressive") is False else "progressive"
    kept = summary.get("kept") or {}
    kept_sft = kept.get("name") == "sft" and kept.get("step") == 0  # the start, not a stage a user named "sft"
    if kind == "progressive" and not kept_sft:
        return POLICY_LABELS
    return {**POLICY_LABELS, "grpo": f"negrec ({kind} GRPO{', validation kept its SFT start' if kept_sft else ''})"}


def _eval_samples(prepared, cfg: EvalConfig) -> pd.DataFrame:
    s = prepared.samples[cfg.split]
    users = pd.unique(s["user_id"])
    if cfg.max_users and len(users) > cfg.max_users:  # whole users: every row (rolling cut) of each
        keep = np.random.default_rng(0).choice(users, cfg.max_users, replace=False)
        s = s[s["user_id"].isin(keep)].sort_values(["user_id", "cut_ts"])
    return s.reset_index(drop=True)


def _eval_rows(run_dir: Path, cfg: EvalConfig):
    """(the prepared data, the evaluated sample rows, their same-day candidates): what every method is run on."""
    from ..data import Prepared

    prepared = Prepared.load(run_dir / "data")
    samples = _eval_samples(prepared, cfg)
    return prepared, samples, candidates_frame(prepared, samples, cfg.metrics.candidate_size)


def _to_frame(samples: pd.DataFrame, ranked: list[list[tuple[int, float]]]) -> pd.DataFrame:
    rows = [(u, c, r, item, score) for u, c, lst in zip(samples["user_id"], samples["cut_ts"], ranked)
            for r, (item, score) in enumerate(lst)]
    return pd.DataFrame(rows, columns=["user_id", "cut_ts", "rank", "item_id", "score"]).astype(
        {"user_id": "int64", "cut_ts": "int64", "rank": "int64", "item_id": "int64", "score": "float64"})


def rankings_to_frame(samples: pd.DataFrame, rankings: np.ndarray) -> pd.DataFrame:
    """(n, k) item-id rankings (-1 = padding) -> the predictions file layout."""
    n, k = rankings.shape
    ok = rankings >= 0
    return pd.DataFrame({"user_id": np.repeat(samples["user_id"].to_numpy(), k)[ok.ravel()],
                         "cut_ts": np.repeat(samples["cut_ts"].to_numpy(), k)[ok.ravel()],
                         "rank": np.tile(np.arange(k), n)[ok.ravel()], "item_id": rankings[ok],
                         "score": -np.tile(np.arange(k, dtype=float), n)[ok.ravel()]})


def targets_frame(prepared, samples: pd.DataFrame, horizons: list[int], split: str = "test") -> pd.DataFrame:
    """Each future negative of each (user, cut) row with its time: F_H for every H up to the
    largest, and the very next negative even when it lies later (conventional next-negative Hit).
    Validation rows' futures end at the user's test cut, as their sample columns do."""
    log = prepared.interactions
    neg = log[log["feedback"].to_numpy() < 0][["user_id", "item_id", "ts", "kind"]]
    rows = samples[["user_id", "cut_ts"]]
    limit = (rows["user_id"].map(prepared.cuts.set_index("user_id")["test_cut"]).to_numpy() if split == "valid"
             else np.full(len(rows), np.iinfo(np.int64).max))
    m = neg.merge(rows.assign(limit=limit), on="user_id")
    m = m[(m["ts"].to_numpy() >= m["cut_ts"].to_numpy()) & (m["ts"].to_numpy() < m["limit"].to_numpy())]
    m = m.sort_values(["user_id", "cut_ts", "ts"])
    first = m.groupby(["user_id", "cut_ts"])["ts"].transform("min").to_numpy()
    within = m["ts"].to_numpy() < m["cut_ts"].to_numpy() + max(horizons) * DAY
    out = m[within | (m["ts"].to_numpy() == first)]
    return out[["user_id", "cut_ts", "item_id", "ts", "kind"]].astype({"kind": str}).reset_index(drop=True)


def candidates_frame(prepared, samples: pd.DataFrame, size: int) -> pd.DataFrame:
    """The same-day candidates of each row (user_id, cut_ts, item_id): the first future negative and
    up to size - 1 items the user met that day without disliking them (see `metrics.candidate_sets`).
    Each method scores exactly these pairs, so candidate accuracy compares the methods' own scores."""
    keys = samples[["user_id", "cut_ts"]].reset_index(drop=True)
    _, cands = candidate_sets(prepared.interactions, keys, size, ItemSets.from_lists(samples["context_items"]))
    return pd.DataFrame({"user_id": keys["user_id"].to_numpy()[cands.rows], "cut_ts": keys["cut_ts"].to_numpy()[cands.rows],
                         "item_id": cands.indices, "row": cands.rows})


def _write_candidate_scores(path: Path, cands: pd.DataFrame, scores: np.ndarray) -> None:
    out = cands[["user_id", "cut_ts", "item_id"]].assign(score=np.asarray(scores, dtype=np.float64))
    write_parquet(path, out.astype({"user_id": "int64", "cut_ts": "int64", "item_id": "int64"}))


# ---------------------------------------------------------------- predict
def predict_with_policy(policy_dir: Path, prepared, samples: pd.DataFrame, cfg: EvalConfig, prompt_cfg,
                        cands: pd.DataFrame | None = None, shard=None, dtype: str = "auto",
                        query: int = -1) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Top-k by constrained beam search, and (with `cands`) the policy's log-likelihood of each candidate.
    `query`: the feedback the prompts ask about (`PromptBuilder.build`; -1, the next dislike, is the task).

    With `cfg.history_windows` N > 1 each row whose user has been away `cfg.history_windows_gap_days`
    is also asked from the N - 1 windows of its history before its prompt's, and the windows' item
    probabilities are summed (`negrec.eval.windows`); the candidates are scored from the row's own prompt.
    With a `shard` (`negrec.eval.data_parallel.current_shard()`) this process ranks its share of the
    rows on its own device; rank 0 returns the merged result, the others (None, None)."""
    from ..llm import PromptBuilder, constrained_beam_search, load_policy, score_items

    model, hf_tok, sid_tok = load_policy(policy_dir, device=shard.device if shard else None, dtype=dtype)
    builder = PromptBuilder(prompt_cfg, sid_tok, prepared.items, hf_tok)
    constraint = builder.sid_constraint(hf_tok)
    start, end = shard.span(len(samples), cfg.batch_size) if shard else (0, len(samples))
    records = samples.iloc[start:end].to_dict("records")
    if cfg.history_windows is None:
        raise ValueError("eval.history_windows is unresolved: build the config with negrec.eval.run.eval_config")
    n_windows = cfg.history_windows
    owners, older = older_window_rows(prepared.interactions, records, sid_tok.item_ids, prompt_cfg.max_events, n_windows,
                                      min_gap=cfg.history_windows_gap_days * DAY)
    owners = list(range(len(records))) + owners
    prompts = [builder.build(r, context_mix=cfg.context_mix, query=query) for r in records + older]
    exclude = [list(records[o]["context_items"]) for o in owners] if cfg.exclude_context else None
    beams = max(cfg.num_beams, cfg.k)
    ranked = constrained_beam_search(model, hf_tok, constraint, prompts, num_beams=beams,
                                     top_k=cfg.k if n_windows == 1 else beams, exclude=exclude,
                                     batch_size=cfg.batch_size, progress=shard is None or shard.is_main)
    if n_windows > 1:
        ranked = mix_rankings(ranked, owners, len(records), cfg.k)
    prompts = prompts[:len(records)]
    # the policy's own score of each same-day candidate: the log-prob beam search would give its SID
    mine = None if cands is None else np.flatnonzero((cands["row"] >= start) & (cands["row"] < end))
    cand_scores = None
    if cands is not None and (shard is None or len(mine)):  # a share may hold no candidates
        cand_scores = score_items(model, hf_tok, constraint, prompts, cands["row"].to_numpy()[mine] - start,
                                  cands["item_id"].to_numpy()[mine], batch_size=cfg.batch_size)
    if shard is not None:
        from .data_parallel import gather_scores

        ranked = shard.gather(ranked)
        if cands is not None:
            cand_scores = gather_scores(shard, mine, np.zeros(0) if cand_scores is None else cand_scores, len(cands))
        if not shard.is_main:
            return None, None
    return _to_frame(samples, ranked), cand_scores


def run_predict(raw: dict, run_dir) -> dict:
    """predictions.parquet for every trained policy (the last one is the main method) + targets.parquet.

    Under a launcher with N processes (`accelerate launch`, `torchrun`) the users are split over the
    processes (`negrec.eval.data_parallel`) and rank 0 alone writes, the stage's marker included."""
    from .data_parallel import current_shard

    run_dir = Path(run_dir)
    out = run_dir / "eval"
    if up_to_date(raw, run_dir, "predict"):
        return read_json(out / "predict_summary.json")
    shard = current_shard()
    if shard is not None and not shard.is_main:  # ranks its share of the users; writes nothing
        return _predict(raw, run_dir, out, shard)
    with shared_stage_files(raw, run_dir, "predict"):
        return _predict(raw, run_dir, out, shard)


def _predict(raw: dict, run_dir: Path, out: Path, shard) -> dict:
    from ..llm.model import ModelConfig
    from ..llm.prompts import prompt_config

    cfg = eval_config(raw)
    prompt_cfg = prompt_config(raw)
    dtype = section_config(ModelConfig, raw, "model").dtype  # the precision the policy was built in
    writes = shard is None or shard.is_main
    prepared, samples, cands = _eval_rows(run_dir, cfg)
    if writes:
        write_parquet(out / "targets.parquet", targets_frame(prepared, samples, cfg.metrics.horizons, cfg.split))
    done, seen = {}, {}  # seen: policy folder digest -> the policy whose predictions it has
    for name in cfg.policies:
        path = run_dir / POLICY_DIRS.get(name, name)
        if left_out(raw, run_dir, policy_stage(name)):
            if writes:
                print(f"[predict] {name}: in pipeline.skip, and {path.parent} is an older run's: left out")
            continue
        if not (path / "config.json").exists():
            if writes:
                print(f"[predict] {name}: no model at {path}, skipped")
            continue
        # e.g. GRPO's validation shipped its SFT start: the same files rank the same. One process only:
        # under a launcher every rank would hash the checkpoint, and ranks that disagreed would hang
        digest = folder_sha256(path) if shard is None else name
        if digest in seen:
            _reuse_predictions(out, seen[digest], name)
            done[name] = {"rows": len(samples), "seconds": 0.0, "processes": 1, "same_policy_as": seen[digest]}
            print(f"[predict] {name}: the same policy files as {seen[digest]}, its predictions reused")
            continue
        seen[digest] = name
        t0 = time.perf_counter()
        pred, cand_scores = predict_with_policy(path, prepared, samples, cfg, prompt_cfg, cands, shard, dtype)
        if not writes:
            continue
        write_parquet(out / "predictions" / f"{name}.parquet", with_original_ids(pred, prepared.id_maps))
        _write_candidate_scores(out / "candidates" / f"{name}.parquet", cands, cand_scores)
        done[name] = {"rows": len(samples), "seconds": round(time.perf_counter() - t0, 1),
                      "users_per_s": round(len(samples) / max(time.perf_counter() - t0, 1e-9), 2),
                      "processes": shard.world if shard else 1}
        print(f"[predict] {name}: top-{cfg.k} for {len(samples)} users in {done[name]['seconds']}s")
    if not writes:
        return done
    if done:
        main = list(done)[-1]
        write_parquet(out / "predictions.parquet", pd.read_parquet(out / "predictions" / f"{main}.parquet"))
        done["main"] = main
    write_json(out / "predict_summary.json", done)
    return done


def _reuse_predictions(out: Path, source: str, name: str) -> None:
    for sub in ("predictions", "candidates"):
        write_parquet(out / sub / f"{name}.parquet", pd.read_parquet(out / sub / f"{source}.parquet"))


# ---------------------------------------------------------------- baselines
def run_baselines(raw: dict, run_dir) -> dict:
    """Fit each baseline on the data before the cuts it serves; write its predictions."""
    run_dir = Path(run_dir)
    if up_to_date(raw, run_dir, "baselines"):
        return read_json(run_dir / "eval" / "baselines_summary.json")
    with shared_stage_files(raw, run_dir, "baselines"):
        return _baselines(raw, run_dir)


def _baselines(raw: dict, run_dir: Path) -> dict:
    from .baselines import make_baselines

    cfg = section_config(BaselinesConfig, raw, "baselines")
    ecfg = section_config(EvalConfig, raw, "eval")
    prepared, samples, cands = _eval_rows(run_dir, ecfg)
    out = run_dir / "eval" / "predictions"
    summary = {}
    for name, model in make_baselines(cfg.methods, cfg.seed, cfg.sasrec_epochs).items():
        t0 = time.perf_counter()
        model.fit(prepared, split=ecfg.split)
        rankings = model.recommend(samples, ecfg.k)
        write_parquet(out / f"{name}.parquet", with_original_ids(rankings_to_frame(samples, rankings), prepared.id_maps))
        _write_candidate_scores(run_dir / "eval" / "candidates" / f"{name}.parquet", cands,
                                model.score_pairs(samples, cands["row"].to_numpy(), cands["item_id"].to_numpy()))
        summary[name] = {"seconds": round(time.perf_counter() - t0, 2)}
        print(f"[baselines] {name}: fitted and ranked {len(samples)} users in {summary[name]['seconds']}s")
    write_json(run_dir / "eval" / "baselines_summary.json", summary)
    return summary


# ---------------------------------------------------------------- evaluate
TABLE_COLUMNS = [  # (metric key template, column title); {h} = main horizon, {fhr_k} = metrics.fhr_k
    ("recall@10_h{h}", "Recall@10"), ("recall@50_h{h}", "Recall@50"), ("fhr@{fhr_k}_h{h}", "FHR@{fhr_k}"),
    ("ndcg@10_h{h}", "NDCG@10"), ("std_recall@10_h{h}", "Std R@10"), ("mrr@10_h{h}", "MRR@10"),
    ("next_hit@10", "NextNeg Hit@10"), ("coll_recall@10_h{h}", "Coll R@10"),
    ("prefix1_recall@10_h{h}", "SID-L1 R@10"), ("prefix2_recall@10_h{h}", "SID-L2 R@10"),
    ("lt_user/recall@10_h{h}", "LUF R@10"), ("lt_item/recall@10_h{h}", "LIF R@10"), ("candidate_acc", "Cand acc"),
]
CI_KEYS = ("recall@10_h{h}", "recall@50_h{h}", "fhr@{fhr_k}_h{h}", "ndcg@10_h{h}")  # shown as "value [lo, hi]"
PAIR_METRICS = ("recall@10", "fhr@{fhr_k}", "recall@50", "recall@5")  # compared in pairs, at the main horizon
SLICE_METRICS = ("recall@10", "fhr@{fhr_k}")
# fixed (quantile-free) slice bins, so slices mean the same on every dataset and run: [lo, hi)
SLICE_BINS = {
    # events (any feedback) the user had before the cut: the context the ranking could use
    "history_len": (("<20", 0, 20), ("20-99", 20, 100), (">=100", 100, np.inf)),
    # the user's share of negative events in the training log (users without events: 0)
    "neg_ratio": (("<0.1", 0.0, 0.1), ("0.1-0.3", 0.1, 0.3), (">=0.3", 0.3, np.inf)),
}


def results_table(metrics: dict[str, dict], h: int, fhr_k: int = 20) -> pd.DataFrame:
    rows = []
    for method, m in metrics.items():
        row = {"method": POLICY_LABELS.get(method, method)}
        for key, title in TABLE_COLUMNS:
            v = m.get(key.format(h=h, fhr_k=fhr_k))
            row[title.format(fhr_k=fhr_k)] = np.nan if v is None else float(v)
        rows.append(row)
    return pd.DataFrame(rows)


def results_table_ci(metrics: dict[str, dict], h: int, fhr_k: int = 20, labels: dict | None = None) -> pd.DataFrame:
    """The results table as text cells: the CI_KEYS columns as "value [lo, hi]" (95% CI over users)."""
    rows = []
    for method, m in metrics.items():
        row = {"method": (labels or POLICY_LABELS).get(method, method)}
        for key, title in TABLE_COLUMNS:
            k = key.format(h=h, fhr_k=fhr_k)
            lo, hi = (m.get(f"{k}_lo"), m.get(f"{k}_hi")) if key in CI_KEYS else (None, None)
            row[title.format(fhr_k=fhr_k)] = format_ci(m.get(k), lo, hi)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    cell = lambda v: "-" if isinstance(v, float) and np.isnan(v) else f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def format_table(df: pd.DataFrame, title: str) -> str:
    return f"{title}\n" + df.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def paired_table(pairs: list[dict]) -> pd.DataFrame:
    """paired.json's entries as a display table (diff = a - b, 95% CI over users, bootstrap p)."""
    rows = [{"a": p["a"], "b": p["b"], "metric": p["metric"], "diff (a - b)": format_ci(p["diff"], p["lo"], p["hi"]),
             "p": "-" if p["p"] is None else f"{p['p']:.3g}", "n": p["n"]} for p in pairs]
    return pd.DataFrame(rows, columns=["a", "b", "metric", "diff (a - b)", "p", "n"])


# ---- confidence intervals, pairs, slices (negrec.eval.stats: bootstrap over users) ----
def add_confidence_intervals(m: dict, per_row: pd.DataFrame, h: int, mcfg: MetricsConfig) -> dict:
    """`<key>_lo` / `<key>_hi` for every per-row metric at the main horizon and next_hit, plus user counts."""
    cols = [c for c in per_row.columns if c.endswith(f"_h{h}") or c.startswith("next_")]
    users = per_row["user_id"].to_numpy()
    ci = bootstrap_summary(per_row[cols], users, mcfg.bootstrap, mcfg.bootstrap_seed, mcfg.ci_level)
    for key, s in ci.items():
        m[f"{key}_lo"], m[f"{key}_hi"] = s["lo"], s["hi"]
    m["n_users"] = int(per_row["user_id"].nunique())
    first = f"recall@{min(mcfg.ks)}_h{h}"
    m[f"n_users_h{h}"] = ci[first]["n_users"] if first in ci else None
    m["ci_level"], m["ci_bootstrap"] = mcfg.ci_level, mcfg.bootstrap
    return m


def _metric_keys(templates, mcfg: MetricsConfig, h: int) -> list[str]:
    keys = [t.format(fhr_k=mcfg.fhr_k) for t in templates]
    return [f"{k}_h{h}" for k in dict.fromkeys(keys) if k.startswith("fhr@") or int(k.split("@")[1]) in mcfg.ks]


def main_policy(methods) -> str | None:
    """The run's main method among `methods`: `grpo`, else the last SID policy present."""
    policies = [p for p in POLICY_DIRS if p in methods]
    return "grpo" if "grpo" in methods else (policies[-1] if policies else None)


def best_baseline(metrics: dict[str, dict], h: int) -> str | None:
    """The baseline (a method neither a SID policy nor a re-ranked row) with the highest Recall@10."""
    base = {k: v.get(f"recall@10_h{h}") or 0.0 for k, v in metrics.items() if k not in POLICY_DIRS and not is_blend(k)}
    return max(base, key=base.get) if base else None


def resolve_pairs(metrics: dict[str, dict], h: int, wanted: list[str] | None = None) -> list[tuple[str, str]]:
    """Method pairs (a, b) to compare. Default: the main policy (`grpo`, else the last SID policy
    present) against the best baseline by Recall@10 (baselines: every method that is not a SID
    policy), against `sft_next` and against `grpo_plain`. `wanted` ("a:b"; `best_baseline` may name b)
    replaces the defaults; by default each re-ranked row (`negrec.eval.blend`) is also compared with
    the main policy and the best baseline. Pairs with a missing method, or a method against itself,
    are skipped."""
    best = best_baseline(metrics, h)
    main = main_policy(metrics)
    if wanted:
        pairs = [tuple(s.split(":", 1)) for s in wanted]
        pairs = [(a, best if b == "best_baseline" else b) for a, b in pairs]
    else:
        pairs = [(main, best), (main, "sft_next"), (main, "grpo_plain")]
        pairs += [(b, p) for b in metrics if is_blend(b) for p in (main, best)]
    return list(dict.fromkeys((a, b) for a, b in pairs if a in metrics and b in metrics and a != b))


def paired_comparisons(rows: dict[str, pd.DataFrame], users, pairs, keys: list[str], mcfg: MetricsConfig) -> list[dict]:
    """{a, b, metric, diff, lo, hi, p, p_perm, n, n_users} for each pair and metric, on the same rows."""
    diffs = pd.DataFrame({(a, b, k): paired_differences(rows[a][k], rows[b][k])
                          for a, b in pairs for k in keys if k in rows[a] and k in rows[b]})
    if diffs.empty:
        return []
    out = paired_summary(diffs, users, mcfg.bootstrap, mcfg.bootstrap_seed, mcfg.ci_level)
    return [{"a": a, "b": b, "metric": k, **s} for (a, b, k), s in out.items()]


def history_lengths(log: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """Events of each (user, cut) row's user strictly before the cut (vectorised: one sort)."""
    n_ev = len(log)
    users = np.concatenate([log["user_id"].to_numpy(np.int64), keys["user_id"].to_numpy(np.int64)])
    ts = np.concatenate([log["ts"].to_numpy(np.int64), keys["cut_ts"].to_numpy(np.int64)])
    is_event = np.concatenate([np.ones(n_ev, np.int64), np.zeros(len(keys), np.int64)])
    order = np.lexsort((is_event, ts, users))  # at equal ts the cut sorts first: an event at the cut is not before it
    ev = is_event[order]
    before = np.cumsum(ev) - ev  # events sorted before each position
    su = users[order]
    count = before - before[np.searchsorted(su, su)]  # minus those of earlier users
    out = np.zeros(len(keys), np.int64)
    is_key = order >= n_ev
    out[order[is_key] - n_ev] = count[is_key]
    return out


def negative_ratios(train_log: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """Each row's user's share of negative events in the training log (0 without events)."""
    g = (train_log["feedback"] < 0).groupby(train_log["user_id"]).mean()
    return keys["user_id"].map(g).fillna(0.0).to_numpy(float)


def slice_metrics(rows: dict[str, pd.DataFrame], users, features: dict[str, np.ndarray], keys: list[str],
                  mcfg: MetricsConfig) -> list[dict]:
    """{method, slice, bin, metric, mean, lo, hi, n, n_users} per SLICE_BINS bin, CI over users."""
    out = []
    for method, df in rows.items():
        cols = {}
        for name, bins in SLICE_BINS.items():
            for label, lo, hi in bins:
                inside = (features[name] >= lo) & (features[name] < hi)
                cols.update({(name, label, k): df[k].where(inside) for k in keys if k in df})
        summary = bootstrap_summary(pd.DataFrame(cols), users, mcfg.bootstrap, mcfg.bootstrap_seed, mcfg.ci_level)
        out += [{"method": method, "slice": s, "bin": b, "metric": k, **v} for (s, b, k), v in summary.items()]
    return out


def _aligned(per_row: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    """per_row in the order of `keys` (every method on the same rows; a missing row: NaN)."""
    idx = pd.MultiIndex.from_frame(keys[["user_id", "cut_ts"]].astype("int64"))
    return per_row.set_index(["user_id", "cut_ts"]).reindex(idx).reset_index()


def _write_comparisons(ev: Path, rows: dict, keys: pd.DataFrame, log, train_log, metrics: dict,
                       cfg: "EvalConfig") -> str:
    """eval/paired.json and eval/slices.json; returns the paired table's text."""
    mcfg, h = cfg.metrics, cfg.metrics.main_horizon
    users = keys["user_id"].to_numpy()
    pairs = resolve_pairs(metrics, h, cfg.pairs)
    pairs = paired_comparisons(rows, users, pairs, _metric_keys(PAIR_METRICS, mcfg, h), mcfg)
    write_json(ev / "paired.json", pairs)
    features = {"history_len": history_lengths(log, keys), "neg_ratio": negative_ratios(train_log, keys)}
    slices = slice_metrics(rows, users, features, _metric_keys(SLICE_METRICS, mcfg, h), mcfg)
    bins = {name: {label: [lo, None if np.isinf(hi) else hi] for label, lo, hi in b} for name, b in SLICE_BINS.items()}
    write_json(ev / "slices.json", {"bins": bins, "ci_level": mcfg.ci_level, "rows": slices})
    if not pairs:
        return "Paired comparisons: none (the methods to compare are missing)"
    return format_table(paired_table(pairs), f"Paired differences a - b on the same rows, H = {h} days "
                                             f"({mcfg.ci_level:.0%} CI and p by a bootstrap over users)")


def run_evaluate(raw: dict, run_dir, predictions: str | None = None, targets: str | None = None,
                 log: str | None = None) -> dict:
    """Score every predictions file in eval/predictions against eval/targets.parquet and the log.

    With `predictions` (any tool's file: user_id, cut_ts, rank, item_id[, score]) only that file is
    scored, against `targets` (default eval/targets.parquet) and `log` (default
    data/interactions.parquet): nothing else of the run is read.
    Every main metric gets a CI over users (`<key>_lo`, `<key>_hi`); a run's own evaluation also
    writes eval/paired.json (paired differences) and eval/slices.json (by history length and
    negative ratio)."""
    run_dir = Path(run_dir)
    if predictions:  # an outside file: scored as asked, the run's stage untouched
        return _evaluate(raw, run_dir, predictions, targets, log)
    if up_to_date(raw, run_dir, "evaluate"):
        ev = run_dir / "eval"
        return {"metrics": read_json(ev / "metrics.json"), "table": (ev / "results_table.txt").read_text().rstrip("\n")}
    with shared_stage_files(raw, run_dir, "evaluate"):
        return _evaluate(raw, run_dir, predictions, targets, log)


def _run_fit_limits(run_dir: Path, split: str) -> pd.Series | None:
    """user -> the run's fit limit for `split` (None when the run has no cuts table)."""
    from ..data.prepare import fit_limit_column

    path = run_dir / "data" / "cuts.parquet"
    if not path.exists():
        return None
    return pd.read_parquet(path).set_index("user_id")[fit_limit_column(split)]


def _evaluate(raw: dict, run_dir: Path, predictions, targets, log) -> dict:
    cfg, bcfg = section_config(EvalConfig, raw, "eval"), section_config(BlendConfig, raw, "blend")
    log_given = bool(log)
    ev = run_dir / "eval"
    id_maps = load_id_maps(_log_path(run_dir, log).parent)  # an outside file names ids as the log did
    targets, log, sid_tok, files = _evaluate_inputs(raw, run_dir, cfg, predictions, targets, log)
    keys = targets[["user_id", "cut_ts"]].drop_duplicates().sort_values(["user_id", "cut_ts"]).astype("int64")
    # fitted once for all methods, on events before each evaluated user's cut only (users outside
    # the evaluated rows: before their own fit limit when the log is the run's own)
    train_log = training_log(log, keys, _run_fit_limits(run_dir, cfg.split) if not log_given else None)
    swing = swing_from_log(train_log, alpha=cfg.metrics.swing_alpha, top_n=cfg.metrics.swing_top_n,
                           max_items_per_user=cfg.metrics.swing_max_items_per_user)
    h = cfg.metrics.main_horizon
    keep = _metric_keys(PAIR_METRICS + SLICE_METRICS, cfg.metrics, h)
    metrics, rows, frames = {}, {}, {}
    needed = {main_policy([f.stem for f in files]), *bcfg.baselines}

    def score(name: str, pred: pd.DataFrame, cand_scores) -> None:
        m = evaluate_predictions(pred, targets, log=log, cfg=cfg.metrics, train_log=train_log, sid_tok=sid_tok,
                                 swing=swing, candidate_scores=cand_scores, per_row=True)
        per_row = _aligned(m.pop("per_row"), keys)
        metrics[name] = add_confidence_intervals(m, per_row, h, cfg.metrics)
        metrics[name]["candidate_scored_by"] = "own scores" if cand_scores is not None else "ranking order"
        rows[name] = per_row[[k for k in keep if k in per_row]]  # only what pairs and slices need

    for f in files:
        pred = pd.read_parquet(f)
        # every method is scored on the same rows: those of the targets file; an outside file is
        # checked first (columns, types, duplicates, matching rows), in the log's own ids where mapped
        pred = (check_predictions(pred, keys, f, pd.unique(log["item_id"].to_numpy()), id_maps) if predictions
                else pred.merge(keys, on=["user_id", "cut_ts"]))
        # candidate accuracy by the method's own scores when it wrote them, else by its ranking's order
        cand_file = ev / "candidates" / f.name
        score(f.stem, pred, pd.read_parquet(cand_file) if cand_file.exists() and not predictions else None)
        if f.stem in needed:  # only what a re-ranked row needs stays in memory
            frames[f.stem] = pred
    labels = dict(policy_labels(run_dir))
    for name, (policy, baseline, pred) in ({} if predictions else _blends(frames, bcfg, ev, id_maps)).items():
        score(name, pred, None)
        labels[name] = f"{labels.get(policy, policy)} re-ranked by {baseline}"
    first = metrics[files[0].stem]
    warning = scored_rows_warning(first, h, cfg.split)
    if warning:
        print(f"[evaluate] warning: {warning}", file=sys.stderr)
    table = results_table_ci(metrics, h, cfg.metrics.fhr_k, labels)
    text = format_table(table,
                        f"Future-negative metrics, H = {h} days, {first['n_eval_h' + str(h)]} test rows "
                        f"({first.get(f'n_users_h{h}')} users) with a non-empty F_H ({cfg.split} split); "
                        f"[{cfg.metrics.ci_level:.0%} CI, bootstrap over users]")
    if predictions:  # an outside file: its metrics beside it, the run's own tables untouched
        write_json(Path(predictions).with_suffix(".metrics.json"), metrics)
        print(text)
        return {"metrics": metrics, "table": text}
    write_json(ev / "metrics.json", metrics)
    write_text(ev / "results_table.txt", text + "\n")
    write_text(ev / "results_table.md", markdown_table(table) + "\n")
    paired_text = _write_comparisons(ev, rows, keys, log, train_log, metrics, cfg)
    print(text + "\n\n" + paired_text)
    return {"metrics": metrics, "table": text, "paired": paired_text}


FEW_USERS = 20  # below this many scored users a bootstrap over users says little


def scored_rows_warning(metrics: dict, h: int, split: str) -> str:
    """Why a method's metrics (`metrics`, one method's entry of metrics.json) say little: no row
    with a dislike in its F_H, or too few users for the bootstrap CIs; "" when neither."""
    rows, users = metrics.get(f"n_eval_h{h}") or 0, metrics.get(f"n_users_h{h}") or 0
    if not rows:
        return (f"no {split} row has a dislike in the {h} days after its cut: every metric is empty; raise "
                f"data.main_horizon or lower data.split.test_frac (the data stats count the empty futures)")
    if users < FEW_USERS:
        return (f"only {users} {split} user(s) have a dislike in the {h} days after the cut: bootstrap CIs over so "
                f"few users understate the uncertainty (one user: an interval of zero width)")
    return ""


def _blends(frames: dict[str, pd.DataFrame], cfg: BlendConfig, ev: Path, id_maps) -> dict[str, tuple]:
    """{name: (policy, baseline, predictions)}: the main policy re-ranked with each of `cfg.baselines`
    the run scored, each also written to eval/blends/<name>.parquet (its rows named as the log names them)."""
    main = main_policy(frames)
    out = {}
    for baseline in cfg.baselines if main else []:
        if baseline not in frames or baseline in POLICY_DIRS:
            print(f"[evaluate] blend.baselines: {baseline!r} is not a baseline this run scored: no re-ranked row")
            continue
        name = blend_name(main, baseline)
        pred = rerank(frames[main], frames[baseline], cfg.weight, cfg.rrf_k)
        write_parquet(ev / "blends" / f"{name}.parquet", with_original_ids(pred, id_maps))
        out[name] = (main, baseline, pred)
    for left in (ev / "blends").glob("*.parquet"):  # a row an earlier config asked for
        if left.stem not in out:
            left.unlink()
    return out


def _log_path(run_dir: Path, log) -> Path:
    return Path(log) if log else run_dir / "data" / "interactions.parquet"


def _evaluate_inputs(raw: dict, run_dir: Path, cfg: "EvalConfig", predictions, targets, log):
    """(targets, log, sid tokenizer or None, predictions files: baselines first, then the SID policies)."""
    from ..tokenizer import SemanticIdTokenizer

    ev = run_dir / "eval"
    targets_path = Path(targets) if targets else ev / "targets.parquet"
    log_path = _log_path(run_dir, log)
    for path, hint in ((targets_path, "run `negrec predict` first, or pass --targets"),
                       (log_path, "run `negrec data prepare` first, or pass --log")):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; {hint}")
    targets = pd.read_parquet(targets_path)
    log = pd.read_parquet(log_path, columns=["user_id", "item_id", "ts", "feedback"])
    sid_dir = run_dir / "tokenize" / "sid_tokenizer"
    sid_tok = SemanticIdTokenizer.from_pretrained(sid_dir) if sid_dir.exists() and not predictions else None
    if predictions:
        files = [Path(predictions)]
        if not files[0].exists():
            raise FileNotFoundError(f"{files[0]}: no such predictions file")
    else:
        files = _run_predictions(raw, run_dir)
    if not files:
        raise FileNotFoundError(f"{ev / 'predictions'}: no predictions; run `negrec predict` / `negrec baselines`")
    order = {n: i for i, n in enumerate(POLICY_DIRS)}
    files.sort(key=lambda f: (f.stem in order, order.get(f.stem, 0), f.stem))
    return targets, log, sid_tok, files


def _run_predictions(raw: dict, run_dir: Path) -> list[Path]:
    """The predictions files this run's baselines and predict stages wrote, as their markers record
    them: a file another config left (a method since dropped) is not scored, a deleted one is
    refused. A marker from before markers recorded files claims the files no other marker names;
    with no such record at all (a folder assembled by hand), every file in eval/predictions/."""
    folder = run_dir / "eval" / "predictions"
    found = sorted(folder.glob("*.parquet"))
    made = {s: stage_files(raw, run_dir, s) for s in ("baselines", "predict")}
    if all(v is None or v == UNRECORDED for v in made.values()):
        return found
    files = []
    for name, paths in made.items():
        for path in paths if isinstance(paths, list) else []:
            if path.parent == folder and path.suffix == ".parquet":
                if not path.exists():
                    raise FileNotFoundError(f"{path}: missing (`negrec {name}` wrote it); run `negrec {name}` again")
                files.append(path)
    if UNRECORDED in made.values():
        files += [f for f in found if f not in files]
    for path in sorted(set(found) - set(files)):
        print(f"[evaluate] {path}: not written by this run's baselines or predict stage (a method the config "
              f"no longer names?): not scored")
    return files


# ---------------------------------------------------------------- filter
@dataclass
class FilterConfig:
    method: str = ""          # predictions to use as the dislike set (default: the main method)
    k: int = 10               # predicted dislikes per user that the filter uses
    thetas: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0])


def run_filter(raw: dict, run_dir) -> dict:
    """The predicted-dislike filter: for each θ, share of true future negatives removed vs share
    of future positives wrongly removed (embeddings decoded from SIDs, as serving has them)."""
    from ..data import Prepared
    from ..tokenizer import SemanticIdTokenizer

    run_dir = Path(run_dir)
    if up_to_date(raw, run_dir, "filter"):
        return read_json(run_dir / "filter" / "curve.json")
    cfg = section_config(FilterConfig, raw, "filter")
    ecfg = section_config(EvalConfig, raw, "eval")
    ev = run_dir / "eval"
    method = cfg.method or read_json(ev / "predict_summary.json").get("main", "")
    path = ev / "predictions" / f"{method}.parquet"
    if not method or not path.exists():
        raise FileNotFoundError(f"{path}: no predictions for the filter (run `negrec predict`)")
    prepared = Prepared.load(run_dir / "data")
    samples = _eval_samples(prepared, ecfg)
    h = ecfg.metrics.main_horizon
    pred = pd.read_parquet(path)
    ranked = rankings_from_frame(pred, samples[["user_id", "cut_ts"]])[:, : cfg.k]
    emb = ItemEmbeddings.from_sid_tokenizer(SemanticIdTokenizer.from_pretrained(run_dir / "tokenize" / "sid_tokenizer"))
    curve = filter_curve(emb, ItemSets.from_dense(ranked), ItemSets.from_lists(samples[f"future_neg_h{h}"]),
                         ItemSets.from_lists(samples[f"future_pos_h{h}"]), cfg.thetas)
    with stage_folder(raw, run_dir, "filter") as tmp:
        write_json(tmp / "curve.json", {"method": method, "k": cfg.k, "horizon": h, "curve": curve})
    print(f"[filter] {method}, top-{cfg.k} predicted dislikes, H={h}: theta -> negatives removed / positives removed"
          " (-: the test futures hold none)")
    for r in curve:  # None: the futures hold no item of that kind to remove
        neg, pos = ("-" if x is None else f"{x:.3f}" for x in (r["neg_removed"], r["pos_removed"]))
        print(f"  {r['theta']:.2f}  {neg} / {pos}")
    return {"curve": curve}
