"""`negrec report`: report.md and PNG plots in the run folder, for a person to read.

The results table with 95% CIs over users, paired differences of the main method against its
rivals (eval/paired.json), metrics by user slice (eval/slices.json), Recall@K per method (with
CI error bars), recall by horizon H, the SFT stages' learning curves, GRPO reward and stage over steps, SID code usage per
level, the dislike-filter curve, and five example users: their history, the predicted dislikes
(titles decoded from SIDs) and what they actually disliked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import section_config
from ..io import atomic_path, read_json, read_jsonl, write_text
from .stats import format_ci


@dataclass
class ReportConfig:
    examples: int = 5
    k_shown: int = 10
    seed: int = 0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path.name


def plot_recall_at_k(metrics: dict, h: int, ks, path: Path) -> str:
    """Recall@K per method; error bars = the CIs (`recall@K_h{h}_lo` / `_hi`) where metrics.json has them."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, m in metrics.items():
        ys = np.array([np.nan if m.get(f"recall@{k}_h{h}") is None else m[f"recall@{k}_h{h}"] for k in ks])
        if np.isnan(ys).all():
            continue
        lo = np.array([m.get(f"recall@{k}_h{h}_lo", np.nan) for k in ks], dtype=float)
        hi = np.array([m.get(f"recall@{k}_h{h}_hi", np.nan) for k in ks], dtype=float)
        # a missing bound draws no bar (0), rather than hiding the method
        yerr = np.nan_to_num(np.vstack([ys - lo, hi - ys]), nan=0.0).clip(min=0)
        ax.errorbar(ks, ys, yerr=yerr, marker="o", capsize=3, label=method)
    ax.set(xlabel="K", ylabel=f"future-negative Recall@K (H={h})", xscale="log",
           title="Recall@K per method (bars: 95% CI over users)")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xticks([], minor=True)  # no log-scale minor labels between the K ticks
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_recall_by_horizon(metrics: dict, horizons, k: int, path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / max(len(metrics), 1)
    for i, (method, m) in enumerate(metrics.items()):
        ys = [m.get(f"recall@{k}_h{h}") or 0.0 for h in horizons]
        ax.bar(np.arange(len(horizons)) + i * width, ys, width, label=method)
    ax.set_xticks(np.arange(len(horizons)) + 0.4 - width / 2, [f"H={h}" for h in horizons])
    ax.set(ylabel=f"Recall@{k}", title="Recall by horizon H (days after the cut)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_grpo(log_rows: list[dict], path: Path) -> str | None:
    rows = [r for r in log_rows if any("reward" in k for k in r)]
    if not rows:
        return None
    key = "reward" if "reward" in rows[0] else next(k for k in rows[0] if "reward" in k and "std" not in k)
    steps = [r.get("global_step", i + 1) for i, r in enumerate(rows)]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    values = np.asarray([r.get(key) for r in rows], dtype=float)
    ax.plot(steps, values, marker=".", alpha=0.4, label=key)
    w = min(8, len(values))  # one step's mean is a few prompts' noise: the trend is the moving mean
    ax.plot(steps[w - 1:], np.convolve(values, np.ones(w) / w, mode="valid"), label=f"{key}, mean of {w} steps")
    hit = "rewards/future_neg_hit/mean"
    if hit in rows[0]:
        ax.plot(steps, [r.get(hit) for r in rows], alpha=0.6, label="exact future-negative hit rate")
    if "zero_std_share" in rows[0]:
        ax.plot(steps, [r.get("zero_std_share") for r in rows], alpha=0.6, label="share of zero-std groups")
    stages = [r.get("stage") for r in rows]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            ax.axvline(steps[i], color="grey", ls="--", lw=0.8)
            ax.text(steps[i], ax.get_ylim()[1], f" {stages[i]}", fontsize=7, va="top")
    ax.set(xlabel="GRPO step", ylabel="mean reward", title=f"GRPO reward over steps (stage {stages[0]} first)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_sft(summary: dict, path: Path) -> str | None:
    """An SFT stage's training loss (by epoch in the timeline loop, by logged step under TRL's
    `mode: prompt`; a grey line where an alignment phase begins) and, where it validated, validation
    Recall@10 with the kept epoch marked."""
    losses = summary.get("loss_curve") or []
    if not losses:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    unit = "epoch" if summary.get("mode") == "timeline" else "logged step"
    ax.plot(np.arange(1, len(losses) + 1), losses, marker=".", label="training loss")
    start = 0
    for phase in (summary.get("phases") or [])[:-1]:
        start += len(phase.get("loss_curve") or [])
        ax.axvline(start + 0.5, color="grey", ls="--", lw=0.8)
    ax.set(xlabel=unit, ylabel="training loss", title=f"SFT ({summary.get('task', '?')}): learning curve")
    val = [(h["epoch"], h["val_recall@10"]) for h in summary.get("history") or [] if h.get("val_recall@10") is not None]
    if val:
        right = ax.twinx()
        right.plot(*zip(*val), "o-", color="C1", label="validation Recall@10")
        if summary.get("kept_epoch"):
            right.axvline(summary["kept_epoch"], color="C1", ls=":", lw=1, label=f"kept: epoch {summary['kept_epoch']}")
        right.set_ylabel("validation Recall@10")
        right.legend(fontsize=7, loc="center right")
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def grpo_selection_text(summary: dict) -> str:
    """Which policy the GRPO stage shipped (`grpo.select`), with the validation curve it chose on."""
    if summary.get("skipped"):
        return f"GRPO did not run ({summary['skipped']}): the `grpo` policy is left out and the SFT policy stands.\n"
    kept = summary.get("kept") or {}
    curve = ", ".join(f"{v['name']} (step {v['step']}) {v['val_recall@10']:.4f}" for v in summary.get("validation") or [])
    if not curve:
        return f"GRPO shipped its last stage ({kept.get('name', '?')}); no validation selection.\n"
    text = f"Validation Recall@10 of the SFT start and each GRPO stage: {curve}. Shipped: **{kept['name']}**"
    if kept.get("name") == "sft":
        text += " (no GRPO stage beat its SFT start on validation, so the `grpo` policy is the SFT policy)"
    return text + ".\n"


def grpo_stage_text(log_rows: list[dict]) -> str:
    """Each GRPO stage's mean reward and exact future-negative hit rate, first half against second half of
    its steps: whether the reward moved within a stage (a stage's targets differ from the next one's)."""
    hit = "rewards/future_neg_hit/mean"
    by_stage: dict = {}  # in log order
    for r in log_rows:
        if r.get("reward") is not None:
            by_stage.setdefault(r.get("stage_name", r.get("stage")), []).append(r)
    parts = []
    for stage, mine in by_stage.items():
        half = max(1, len(mine) // 2)
        halves = [mine[:half], mine[half:] or mine[-1:]]
        reward = " -> ".join(f"{np.mean([r['reward'] for r in h]):.3f}" for h in halves)
        text = f"{stage} {reward}"
        if all(hit in r for r in mine):
            text += " (hit " + " -> ".join(f"{np.mean([r[hit] for r in h]):.3f}" for h in halves) + ")"
        parts.append(text)
    if not parts:
        return ""
    return ("Mean reward by stage, first half of its steps -> second half (exact future-negative hit rate): "
            + "; ".join(parts) + ".\n")


def alignment_text(alignment: dict) -> str:
    """What the SFT policy knows of its items (`sft_next/summary.json`), beside chance."""
    from ..llm.evaluation import alignment_line

    return (f"## What the policy knows of its items\n\nOn {alignment['n']} items after the next-negative SFT: "
            f"{alignment_line(alignment)}.\n")


def plot_code_usage(tok_metrics: dict, path: Path) -> str | None:
    levels = tok_metrics.get("levels")
    if not levels:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    x = np.arange(len(levels))
    ax.bar(x - 0.2, [lv["used"] for lv in levels], 0.4, label="codes used")
    ax.bar(x + 0.2, [lv["perplexity"] for lv in levels], 0.4, label="perplexity")
    ax.plot(x, [lv["size"] for lv in levels], "k_", ms=30, label="codebook size")
    ax.set_xticks(x, [f"level {lv['level']}" for lv in levels])
    ax.set(title=f"SID code usage per level (unique raw SIDs {tok_metrics.get('unique_fraction', 0):.1%})")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_filter(curve: dict, path: Path) -> str | None:
    pts = curve.get("curve") or []
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    xs = [p["pos_removed"] or 0 for p in pts]
    ys = [p["neg_removed"] or 0 for p in pts]
    ax.plot(xs, ys, marker="o")
    for p, x, y in zip(pts, xs, ys):
        ax.annotate(f"θ={p['theta']:.2f}", (x, y), fontsize=6)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="future positives wrongly removed", ylabel="future negatives removed",
           title=f"Dislike filter ({curve.get('method')}, top-{curve.get('k')})")
    return _save(fig, path)


def paired_markdown(pairs: list[dict]) -> str:
    """eval/paired.json as a markdown table."""
    lines = ["| a | b | metric | diff (a - b) [95% CI] | p | n |", "|---|---|---|---|---|---|"]
    for p in pairs:
        pv = "-" if p["p"] is None else f"{p['p']:.3g}"
        diff = format_ci(p["diff"], p["lo"], p["hi"])
        lines.append(f"| {p['a']} | {p['b']} | {p['metric']} | {diff} | {pv} | {p['n']} |")
    return "\n".join(lines) + "\n"


def slice_markdown(slices: dict) -> str:
    """eval/slices.json as one markdown table per metric: a row per method, a column per slice bin."""
    rows = slices.get("rows") or []
    out = []
    for metric in dict.fromkeys(r["metric"] for r in rows):
        sel = [r for r in rows if r["metric"] == metric]
        bins = list(dict.fromkeys((r["slice"], r["bin"]) for r in sel))
        n = {(r["slice"], r["bin"]): r["n"] for r in sel}  # the same rows for every method
        out.append(f"**{metric}**\n")
        out.append("| method | " + " | ".join(f"{s} {b} (n={n[(s, b)]})" for s, b in bins) + " |")
        out.append("|---|" + "---|" * len(bins))
        for method in dict.fromkeys(r["method"] for r in sel):
            cell = {(r["slice"], r["bin"]): format_ci(r["mean"], r["lo"], r["hi"])
                    for r in sel if r["method"] == method}
            out.append(f"| {method} | " + " | ".join(cell.get(b, "-") for b in bins) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def example_users(prepared, predictions: pd.DataFrame, n: int, k: int, h: int, seed: int) -> str:
    samples = prepared.samples["test"]
    samples = samples[samples[f"future_neg_h{h}"].map(len) > 0]
    if predictions is not None:  # only rows the method ranked (eval.max_users may evaluate a subset)
        ranked = predictions[["user_id", "cut_ts"]].drop_duplicates()
        samples = samples.merge(ranked, on=["user_id", "cut_ts"])
    if len(samples) == 0 or predictions is None:
        return "_no test users with future negatives and predictions_\n"
    pick = samples.sample(n=min(n, len(samples)), random_state=seed)
    title = prepared.item_text
    out = []
    for row in pick.itertuples():
        pred = predictions[(predictions.user_id == row.user_id) & (predictions.cut_ts == row.cut_ts)].sort_values("rank")
        pred_ids = pred["item_id"].head(k).tolist()
        truth = set(int(i) for i in getattr(row, f"future_neg_h{h}"))
        cut = pd.Timestamp(int(row.cut_ts), unit="s", tz="UTC").strftime("%Y-%m-%d")
        out.append(f"### User {row.user_id} (cut {cut})\n")
        negs = [f"{title(i)} ({kd})" for i, kd in zip(list(row.neg_items)[-5:], list(row.neg_kinds)[-5:])]
        pos = [title(i) for i in list(row.pos_items)[-5:]]
        out.append(f"- recent dislikes: {'; '.join(negs) or '(none)'}")
        out.append(f"- recent likes: {'; '.join(pos) or '(none)'}")
        out.append("- predicted dislikes: " + "; ".join(("**" + title(i) + "** ✓") if i in truth else title(i)
                                                      for i in pred_ids))
        out.append(f"- actually disliked in the next {h} days: " + "; ".join(title(i) for i in sorted(truth)) + "\n")
    return "\n".join(out) + "\n"


def new_targets_text(stats_path: Path) -> str:
    """What share of the test targets are items absent from the fitted log, and the Recall@10 that
    caps for methods ranking logged items (`Prepared.unlogged_targets`); "" without the figures."""
    stats = read_json(stats_path) if stats_path.exists() else {}
    if "test_targets_unlogged_share" not in stats:
        return ""
    return (f"New items: {stats['test_targets_unlogged_share']:.0%} of the test targets never occur in the log the "
            f"models are fitted on, so a method ranking only logged items reaches at most Recall@10 "
            f"{stats['test_logged_recall@10_ceiling']:.3f}.\n")


def _comparison_sections(ev: Path) -> list[str]:
    """The report's paired-comparison and slice sections, from eval/paired.json and eval/slices.json."""
    parts = []
    if (ev / "paired.json").exists() and read_json(ev / "paired.json"):
        parts.append("## Paired comparisons\n\nDifferences a - b on the same test rows; CI and p by a paired "
                     "bootstrap over users (the same users drawn for both methods).\n\n"
                     + paired_markdown(read_json(ev / "paired.json")))
    if (ev / "slices.json").exists():
        sl = read_json(ev / "slices.json")
        bins = "; ".join(f"{name} {label} = [{lo}, {'inf' if hi is None else hi})"
                         for name, b in sl.get("bins", {}).items() for label, (lo, hi) in b.items())
        parts.append("## By user slice\n\nhistory_len = the user's events before the cut; neg_ratio = the user's "
                     f"share of negatives in the training log. Fixed bins: {bins}. n = test rows with a non-empty "
                     "F_H in the bin.\n\n" + slice_markdown(sl))
    return parts


def run_report(raw: dict, run_dir) -> dict:
    from ..contract import shared_stage_files, up_to_date

    run_dir = Path(run_dir)
    if up_to_date(raw, run_dir, "report"):
        return {"report": str(run_dir / "report.md")}
    with shared_stage_files(raw, run_dir, "report"):
        return _report(raw, run_dir)


def _stage_sections(raw: dict, run_dir: Path, plots: Path) -> list[str]:
    """A plotted section per stage output that exists, and which policy GRPO shipped; an older run's
    SFT or GRPO folder (in pipeline.skip, `left_out`) is not this run's and is not shown."""
    from ..contract import left_out

    sources = [  # (stage left out when an older run's, its file, reader, plot, png, title); None: always shown
        ("sft-align", "sft_align/summary.json", read_json, plot_sft, "sft_align_curve.png",
         "## Alignment SFT (training loss; a grey line where a phase begins)\n\n![sft_align curve]"),
        ("sft-next", "sft_next/summary.json", read_json, plot_sft, "sft_next_curve.png",
         "## Next-negative SFT (training loss and validation Recall@10)\n\n![sft_next curve]"),
        ("grpo", "grpo/log.jsonl", read_jsonl, plot_grpo, "grpo_reward.png", "## GRPO (reward by step)\n\n![GRPO reward]"),
        (None, "tokenize/metrics.json", read_json, plot_code_usage, "code_usage.png", "## Semantic IDs\n\n![code usage]"),
        (None, "filter/curve.json", read_json, plot_filter, "filter_curve.png", "## Dislike filter\n\n![filter]")]
    shown = {stage for stage in ("sft-align", "sft-next", "grpo") if not left_out(raw, run_dir, stage)}
    parts = []
    for stage, src, read, plot, png, title in sources:
        rows = read(run_dir / src) if (stage is None or stage in shown) and (run_dir / src).exists() else None
        name = plot(rows, plots / png) if rows is not None else None
        if name:
            parts.append(f"{title}(plots/{name})\n")
        if stage == "grpo" and rows is not None:  # what GRPO did, beside its plot
            parts.append(grpo_stage_text(rows))
        if stage == "grpo" and "grpo" in shown and (run_dir / "grpo" / "summary.json").exists():
            parts.append(grpo_selection_text(read_json(run_dir / "grpo" / "summary.json")))
    return [p for p in parts if p]


def _report(raw: dict, run_dir: Path) -> dict:
    from ..data import Prepared
    from .run import EvalConfig, scored_rows_warning

    cfg = section_config(ReportConfig, raw, "report")
    ecfg = section_config(EvalConfig, raw, "eval")
    mcfg = ecfg.metrics
    h = mcfg.main_horizon
    plots = run_dir / "plots"
    ev = run_dir / "eval"
    parts = [f"# negrec report: `{run_dir.name}`\n"]
    metrics = read_json(ev / "metrics.json") if (ev / "metrics.json").exists() else {}
    if (ev / "results_table.md").exists():
        parts.append(f"## Results (test users, H = {h} days)\n\n" + (ev / "results_table.md").read_text())
        parts.append("Recall@K = hits / min(K, |F_H|); Std R@K = hits / |F_H| (standard recall); MRR@K = 1 / rank "
                     f"of the first hit; FHR@{mcfg.fhr_k} = share of users with a top-{mcfg.fhr_k} item in F_H; "
                     "NextNeg = the conventional next-negative target; LUF/LIF = long-tail users/items; "
                     "Coll = F_H widened by Swing co-negatives. [lo, hi] = 95% CI by a bootstrap over users "
                     "(all rows of a user resampled together).\n")
        parts.append(new_targets_text(run_dir / "data" / "stats.json"))
        scored = [m for m in metrics.values() if isinstance(m, dict)]
        warning = scored_rows_warning(scored[0], h, ecfg.split) if scored else ""
        if warning:
            parts.append(f"**Warning: {warning}.**\n")
    parts += _comparison_sections(ev)
    if metrics:
        ks = sorted(mcfg.ks)
        parts.append(f"![Recall@K](plots/{plot_recall_at_k(metrics, h, ks, plots / 'recall_at_k.png')})\n")
        parts.append(f"![Recall by H](plots/{plot_recall_by_horizon(metrics, sorted(mcfg.horizons), 10, plots / 'recall_by_horizon.png')})\n")
    parts += _stage_sections(raw, run_dir, plots)
    sft = read_json(run_dir / "sft_next" / "summary.json") if (run_dir / "sft_next" / "summary.json").exists() else {}
    if sft.get("alignment"):
        parts.append(alignment_text(sft["alignment"]))
    pred_path = ev / "predictions.parquet"
    if (run_dir / "data" / "interactions.parquet").exists():
        prepared = Prepared.load(run_dir / "data")
        preds = pd.read_parquet(pred_path) if pred_path.exists() else None
        parts.append("## Example users\n\n" + example_users(prepared, preds, cfg.examples, cfg.k_shown, h, cfg.seed))
    path = write_text(run_dir / "report.md", "\n".join(parts))
    print(f"[report] {path} ({len(list(plots.glob('*.png'))) if plots.exists() else 0} plots)")
    return {"report": str(path)}
