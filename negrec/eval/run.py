"""Stage entries of `negrec.eval`: baselines, predict, evaluate (the results table), filter, report.

Every method, negrec's policies and the baselines alike, writes one file
`eval/predictions/<method>.parquet` (user_id, cut_ts, rank, item_id, score); `negrec evaluate`
scores every such file against `eval/targets.parquet` and the log, and nothing else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import section_config, to_dict
from ..io import read_json, write_json, write_parquet, write_text
from ..rewards.matching import ItemEmbeddings, ItemSets, swing_from_log
from .filter import filter_curve
from .metrics import MetricsConfig, candidate_sets, evaluate_predictions, rankings_from_frame, training_log

DAY = 86_400
MAIN = "negrec"  # the name of the main method (the last policy in `eval.policies`)


@dataclass
class EvalConfig:
    split: str = "test"
    k: int = 50                        # items predicted per user (the largest K evaluated)
    num_beams: int = 50                # beam width of constrained beam search (>= k)
    policies: list[str] = field(default_factory=lambda: ["sft_next", "grpo_plain", "grpo"])
    context_mix: float = 1.0           # prompt context at inference: full mixed history
    batch_size: int = 8
    exclude_context: bool = True       # never predict an item the user already touched
    max_users: int = 0                 # >0: evaluate a deterministic subset (quick runs)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


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


def _eval_samples(prepared, cfg: EvalConfig) -> pd.DataFrame:
    s = prepared.samples[cfg.split]
    if cfg.max_users and len(s) > cfg.max_users:
        s = s.sample(n=cfg.max_users, random_state=0).sort_values(["user_id", "cut_ts"])
    return s.reset_index(drop=True)


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


def targets_frame(prepared, samples: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """Each future negative of each (user, cut) row with its time: F_H for every H up to the
    largest, and the very next negative even when it lies later (conventional next-negative Hit)."""
    log = prepared.interactions
    neg = log[log["feedback"].to_numpy() < 0][["user_id", "item_id", "ts", "kind"]]
    m = neg.merge(samples[["user_id", "cut_ts"]], on="user_id")
    m = m[m["ts"].to_numpy() >= m["cut_ts"].to_numpy()].sort_values(["user_id", "cut_ts", "ts"])
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
                        cands: pd.DataFrame | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Top-k by constrained beam search, and (with `cands`) the policy's log-likelihood of each candidate."""
    from ..llm import PromptBuilder, SidConstraint, constrained_beam_search, load_policy, score_items

    model, hf_tok, sid_tok = load_policy(policy_dir)
    constraint = SidConstraint(sid_tok, hf_tok)
    builder = PromptBuilder(prompt_cfg, sid_tok, prepared.items, hf_tok)
    records = samples.to_dict("records")
    prompts = [builder.build(r, context_mix=cfg.context_mix) for r in records]
    exclude = [list(r["context_items"]) for r in records] if cfg.exclude_context else None
    ranked = constrained_beam_search(model, hf_tok, constraint, prompts,
                                     num_beams=max(cfg.num_beams, cfg.k), top_k=cfg.k, exclude=exclude,
                                     batch_size=cfg.batch_size, progress=True)
    # the policy's own score of each same-day candidate: the log-prob beam search would give its SID
    cand_scores = None if cands is None else score_items(model, hf_tok, constraint, prompts, cands["row"].to_numpy(),
                                                         cands["item_id"].to_numpy(), batch_size=cfg.batch_size)
    return _to_frame(samples, ranked), cand_scores


def run_predict(raw: dict, run_dir) -> dict:
    """predictions.parquet for every trained policy (the last one is the main method) + targets.parquet."""
    from ..data import Prepared
    from ..llm import PromptConfig

    run_dir = Path(run_dir)
    cfg = section_config(EvalConfig, raw, "eval")
    prompt_cfg = section_config(PromptConfig, raw, "prompt")
    prepared = Prepared.load(run_dir / "data")
    samples = _eval_samples(prepared, cfg)
    out = run_dir / "eval"
    write_parquet(out / "targets.parquet", targets_frame(prepared, samples, cfg.metrics.horizons))
    cands = candidates_frame(prepared, samples, cfg.metrics.candidate_size)
    done = {}
    for name in cfg.policies:
        path = run_dir / POLICY_DIRS.get(name, name)
        if not (path / "config.json").exists():
            print(f"[predict] {name}: no model at {path}, skipped")
            continue
        t0 = time.perf_counter()
        pred, cand_scores = predict_with_policy(path, prepared, samples, cfg, prompt_cfg, cands)
        write_parquet(out / "predictions" / f"{name}.parquet", pred)
        _write_candidate_scores(out / "candidates" / f"{name}.parquet", cands, cand_scores)
        done[name] = {"rows": len(samples), "seconds": round(time.perf_counter() - t0, 1),
                      "users_per_s": round(len(samples) / max(time.perf_counter() - t0, 1e-9), 2)}
        print(f"[predict] {name}: top-{cfg.k} for {len(samples)} users in {done[name]['seconds']}s")
    if done:
        main = list(done)[-1]
        write_parquet(out / "predictions.parquet", pd.read_parquet(out / "predictions" / f"{main}.parquet"))
        done["main"] = main
    write_json(out / "predict_summary.json", done)
    return done


# ---------------------------------------------------------------- baselines
def make_baselines(cfg: BaselinesConfig):
    from .baselines import (ItemKNN, NegativeRatio, PopularNegatives, RandomItems, SASRec, SASRecConfig, UserKNN)

    factory = {
        "random": lambda: RandomItems(cfg.seed), "popular_negatives": PopularNegatives, "negative_ratio": NegativeRatio,
        "item_knn": ItemKNN, "user_knn": UserKNN,
        "sasrec_neg": lambda: SASRec(SASRecConfig(sequence="negative", seed=cfg.seed, epochs=cfg.sasrec_epochs)),
        "sasrec_mixed": lambda: SASRec(SASRecConfig(sequence="mixed", seed=cfg.seed, epochs=cfg.sasrec_epochs)),
    }
    unknown = [m for m in cfg.methods if m not in factory]
    if unknown:
        raise ValueError(f"baselines.methods: unknown {unknown}; known {sorted(factory)}")
    return {m: factory[m]() for m in cfg.methods}


def run_baselines(raw: dict, run_dir) -> dict:
    """Fit each baseline on the data before the cuts it serves; write its predictions."""
    from ..data import Prepared

    run_dir = Path(run_dir)
    cfg = section_config(BaselinesConfig, raw, "baselines")
    ecfg = section_config(EvalConfig, raw, "eval")
    prepared = Prepared.load(run_dir / "data")
    samples = _eval_samples(prepared, ecfg)
    cands = candidates_frame(prepared, samples, ecfg.metrics.candidate_size)
    out = run_dir / "eval" / "predictions"
    summary = {}
    for name, model in make_baselines(cfg).items():
        t0 = time.perf_counter()
        model.fit(prepared, split=ecfg.split)
        rankings = model.recommend(samples, ecfg.k)
        write_parquet(out / f"{name}.parquet", rankings_to_frame(samples, rankings))
        _write_candidate_scores(run_dir / "eval" / "candidates" / f"{name}.parquet", cands,
                                model.score_pairs(samples, cands["row"].to_numpy(), cands["item_id"].to_numpy()))
        summary[name] = {"seconds": round(time.perf_counter() - t0, 2)}
        print(f"[baselines] {name}: fitted and ranked {len(samples)} users in {summary[name]['seconds']}s")
    write_json(run_dir / "eval" / "baselines_summary.json", summary)
    return summary


# ---------------------------------------------------------------- evaluate
TABLE_COLUMNS = [  # (metric key template, column title); {h} = main horizon
    ("recall@10_h{h}", "Recall@10"), ("recall@50_h{h}", "Recall@50"), ("fhr@20_h{h}", "FHR@20"),
    ("ndcg@10_h{h}", "NDCG@10"), ("next_hit@10", "NextNeg Hit@10"), ("coll_recall@10_h{h}", "Coll R@10"),
    ("prefix1_recall@10_h{h}", "SID-L1 R@10"), ("prefix2_recall@10_h{h}", "SID-L2 R@10"),
    ("lt_user/recall@10_h{h}", "LUF R@10"), ("lt_item/recall@10_h{h}", "LIF R@10"), ("candidate_acc", "Cand acc"),
]


def results_table(metrics: dict[str, dict], h: int) -> pd.DataFrame:
    rows = []
    for method, m in metrics.items():
        row = {"method": POLICY_LABELS.get(method, method)}
        for key, title in TABLE_COLUMNS:
            v = m.get(key.format(h=h))
            row[title] = np.nan if v is None else float(v)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    cell = lambda v: "-" if isinstance(v, float) and np.isnan(v) else f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def format_table(df: pd.DataFrame, title: str) -> str:
    return f"{title}\n" + df.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def run_evaluate(raw: dict, run_dir, predictions: str | None = None, targets: str | None = None,
                 log: str | None = None) -> dict:
    """Score every predictions file in eval/predictions against eval/targets.parquet and the log.

    With `predictions` (any tool's file: user_id, cut_ts, rank, item_id[, score]) only that file is
    scored, against `targets` (default eval/targets.parquet) and `log` (default
    data/interactions.parquet): nothing else of the run is read."""
    from ..tokenizer import SemanticIdTokenizer

    run_dir = Path(run_dir)
    cfg = section_config(EvalConfig, raw, "eval")
    ev = run_dir / "eval"
    targets_path = Path(targets) if targets else ev / "targets.parquet"
    log_path = Path(log) if log else run_dir / "data" / "interactions.parquet"
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
        files = sorted((ev / "predictions").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{ev / 'predictions'}: no predictions; run `negrec predict` / `negrec baselines`")
    # baselines first, then the SID policies in pipeline order
    order = {n: i for i, n in enumerate(POLICY_DIRS)}
    files.sort(key=lambda f: (f.stem in order, order.get(f.stem, 0), f.stem))
    keys = targets[["user_id", "cut_ts"]].drop_duplicates().sort_values(["user_id", "cut_ts"])
    # fitted once for all methods, on events before each evaluated user's cut only
    train_log = training_log(log, keys)
    swing = swing_from_log(train_log, alpha=cfg.metrics.swing_alpha, top_n=cfg.metrics.swing_top_n,
                           max_items_per_user=cfg.metrics.swing_max_items_per_user)
    metrics = {}
    for f in files:
        pred = pd.read_parquet(f)
        # every method is scored on the same rows: those of the targets file
        pred = pred.merge(keys, on=["user_id", "cut_ts"])
        # candidate accuracy by the method's own scores when it wrote them, else by its ranking's order
        cand_file = ev / "candidates" / f.name
        cand_scores = pd.read_parquet(cand_file) if cand_file.exists() and not predictions else None
        metrics[f.stem] = evaluate_predictions(pred, targets, log=log, cfg=cfg.metrics, train_log=train_log,
                                               sid_tok=sid_tok, swing=swing, candidate_scores=cand_scores)
        metrics[f.stem]["candidate_scored_by"] = "own scores" if cand_scores is not None else "ranking order"
    h = cfg.metrics.main_horizon
    table = results_table(metrics, h)
    text = format_table(table, f"Future-negative metrics, H = {h} days, {metrics[files[0].stem]['n_eval_h' + str(h)]} "
                               f"test users with a non-empty F_H ({cfg.split} split)")
    if predictions:  # an outside file: its metrics beside it, the run's own tables untouched
        write_json(Path(predictions).with_suffix(".metrics.json"), metrics)
    else:
        write_json(ev / "metrics.json", metrics)
        write_text(ev / "results_table.txt", text + "\n")
        write_text(ev / "results_table.md", markdown_table(table) + "\n")
    print(text)
    return {"metrics": metrics, "table": text}


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
    write_json(run_dir / "filter" / "curve.json", {"method": method, "k": cfg.k, "horizon": h, "curve": curve})
    print(f"[filter] {method}, top-{cfg.k} predicted dislikes, H={h}: theta -> negatives removed / positives removed")
    for r in curve:
        print(f"  {r['theta']:.2f}  {r['neg_removed'] or 0:.3f} / {r['pos_removed'] or 0:.3f}")
    return {"curve": curve}
