"""negrec against every baseline on ML-100K and the KuaiRand like/hate log, in one table.

`ml100k_csv` runs the same ratings as a plain CSV of bare ids through `configs/generic.yaml`, as a new
user's log would go (not in the default `--datasets`: `--datasets ml100k_csv`).

For each dataset: the whole pipeline (`negrec pipeline`, fixed seeds) in its own run folder under
runs/bench_quality/, which fits and scores every baseline beside the SID policies (SFT alone,
plain GRPO, progressive GRPO). Then one table over the datasets (test users, H = 7): Recall@10/50,
FHR@20, NDCG@10, next-negative Hit@10, Swing-widened recall, SID-prefix recall, long-tail users
and items, candidate accuracy, with 95% CIs over users for Recall@10 and FHR@20; the paired differences
of negrec against its rivals (eval/paired.json); the filter curve of the main method; and the goal
check (negrec's Recall@10 at least 30% above the best baseline's, with the CI of the gap).

GRPO as trained: `grpo.select: validation` ships the SFT start whenever no GRPO stage beats it on the
validation users, and then GRPO - SFT is 0 on test by construction. The stage then keeps its last
stage's end beside what it ships (`grpo/last`, `grpo_plain/last`): those policies rank the same test
users and are paired with the run's SFT and with each other (`grpo_as_trained` in the JSON): what GRPO
does to the policy, whichever way it falls.

Re-ranked rows (the `blend` section, `negrec.eval.blend`): the policy's candidates re-ordered with a
baseline's list, each a row of its own beside the `grpo` row, paired with it and with the best baseline.

    python benchmarks/bench_quality.py [--datasets ml100k kuairand] [--set grpo.generation=beam ...]

Stages already done in a run folder are skipped (the pipeline resumes), so a second run only
re-prints; pass --fresh to start over.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_result, score_on_base  # noqa: E402

from negrec.eval.blend import is_blend  # noqa: E402
from negrec.eval.run import best_baseline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BARE_CSV = ROOT / "runs" / "bench_quality" / "ml100k_ratings.csv"  # written from SHARED's u.data, never committed

DATASETS = {
    # the README's default config, on the shared copy of the same ML-100K ratings
    # (with the plain-GRPO ablation, which the default run leaves out for time)
    "ml100k": (ROOT / "configs" / "ml100k.yaml", ["data.format=movielens", f"data.path={SHARED / 'ml-100k'}",
                                                  "pipeline.skip=[]"]),
    "kuairand": (ROOT / "configs" / "kuairand.yaml", [f"data.path={SHARED / 'kuairand-27k-likehate'}"]),
    # a new user's log: the same ratings as a plain CSV of bare ids (no items table, so nothing to align)
    # through configs/generic.yaml as it ships (`cut_unit: auto`; `bare_ids_csv` writes the file)
    "ml100k_csv": (ROOT / "configs" / "generic.yaml", [f"data.generic.path={BARE_CSV}"]),
}
AS_TRAINED_METRICS = ("recall@5_h7", "recall@10_h7", "recall@50_h7", "fhr@20_h7")
COLUMNS = [("recall@10_h7", "R@10"), ("recall@50_h7", "R@50"), ("fhr@20_h7", "FHR@20"), ("ndcg@10_h7", "NDCG@10"),
           ("next_hit@10", "Next Hit@10"), ("coll_recall@10_h7", "Coll R@10"), ("prefix1_recall@10_h7", "SID-L1 R@10"),
           ("prefix2_recall@10_h7", "SID-L2 R@10"), ("lt_user/recall@10_h7", "LUF R@10"),
           ("lt_item/recall@10_h7", "LIF R@10"), ("candidate_acc", "Cand acc")]


def dataset_config(name: str, extra: list[str], more: tuple = ()) -> tuple[Path, dict]:
    """(config file, raw config) of dataset `name` with the benchmark's fixed seeds and `extra` overrides."""
    from negrec.config import load_config

    config, sets = DATASETS[name]
    return config, load_config(str(config), sets + [*extra, "data.seed=0", "tokenize.seed=0", *more])


def bare_ids_csv() -> Path:
    """ML-100K's u.data as `user,item,rating,timestamp`, read with negrec's own reader: the log a new
    user would hand `configs/generic.yaml`."""
    from negrec.data.reading import read_table

    if not BARE_CSV.exists():
        names = ["user", "item", "rating", "timestamp"]
        log = read_table(SHARED / "ml-100k" / "u.data", "\t", names, numeric=tuple(names))
        BARE_CSV.parent.mkdir(parents=True, exist_ok=True)
        log[names].to_csv(BARE_CSV.with_suffix(".tmp"), index=False)
        BARE_CSV.with_suffix(".tmp").replace(BARE_CSV)
    return BARE_CSV


def run_dataset(name: str, extra: list[str], fresh: bool) -> dict:
    from negrec.pipeline import run_pipeline

    if name == "ml100k_csv":
        bare_ids_csv()
    run_dir = ROOT / "runs" / "bench_quality" / name
    if fresh:  # and the copy grpo_as_trained makes of it
        for folder in (run_dir, run_dir.parent / f"{name}_grpo_last"):
            shutil.rmtree(folder, ignore_errors=True)
    _, raw = dataset_config(name, extra)
    t0 = time.time()
    summary = run_pipeline(raw, run_dir)
    seconds = time.time() - t0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    curve = json.loads((run_dir / "filter" / "curve.json").read_text())
    paired_path = run_dir / "eval" / "paired.json"
    paired = json.loads(paired_path.read_text()) if paired_path.exists() else []
    return {"run_dir": str(run_dir), "seconds": round(seconds, 1), "stages": summary, "metrics": metrics,
            "filter": curve, "paired": paired}


def grpo_as_trained(name: str, run_dir: Path, extra: list[str]) -> dict:
    """GRPO's last stages, progressive and plain, paired with the run's SFT policy and with each other
    (module docstring): each stage keeps its last stage's end in `<stage>/last` when validation shipped
    something else (else `final` is it), ranked here for the run's test users as `negrec predict` ranks."""
    from negrec.config import fill_cut_unit, section_config
    from negrec.eval.checks import with_original_ids
    from negrec.eval.run import _eval_rows, eval_config, predict_with_policy
    from negrec.io import write_parquet
    from negrec.llm.model import ModelConfig
    from negrec.llm.prompts import prompt_config

    out = run_dir.parent / f"{name}_grpo_last"
    config, raw = dataset_config(name, extra)
    fill_cut_unit(raw, run_dir)  # generic.yaml's `cut_unit: auto`, as the run's data stage chose it
    cfg = eval_config(raw)  # the ranking windows the pipeline's predict used (they follow the cut unit)
    t0, prepared, samples = time.time(), None, None
    files = {"sft_next": run_dir / "eval" / "predictions" / "sft_next.parquet"}
    for row, stage in (("grpo_last", "grpo"), ("grpo_plain_last", "grpo_plain")):
        policy = last_policy(run_dir / stage)
        if policy is None:
            continue
        if prepared is None:
            prepared, samples, _ = _eval_rows(run_dir, cfg)
        # ranked afresh on every run (about a minute): a file kept from an earlier GRPO would be paired
        # with this run's SFT
        pred, _ = predict_with_policy(policy, prepared, samples, cfg, prompt_config(raw),
                                      dtype=section_config(ModelConfig, raw, "model").dtype)
        files[row] = out / f"{row}.parquet"
        write_parquet(files[row], with_original_ids(pred, prepared.id_maps))
    pairs = [("grpo_last", "sft_next"), ("grpo_plain_last", "sft_next"), ("grpo_last", "grpo_plain_last")]
    rows, paired = score_on_base(run_dir, files, pairs, AS_TRAINED_METRICS, config)
    return {"folder": str(out), "seconds": round(time.time() - t0, 1), "rows": rows, "paired": paired}


def last_policy(stage_dir: Path) -> Path | None:
    """The GRPO stage's last stage's end: `last` where the stage shipped something else, `final`
    where it shipped that end itself (its summary's kept policy is a GRPO stage, not the SFT start)."""
    summary = stage_dir / "summary.json"
    if not summary.exists():
        return None
    if (stage_dir / "last" / "config.json").exists():
        return stage_dir / "last"
    kept = json.loads(summary.read_text()).get("kept", {}).get("name")
    return stage_dir / "final" if kept not in (None, "sft") else None


def table_row(ds: str, method: str, m: dict) -> dict:
    """One method's row: the COLUMNS, then the 95% CI bounds (over users) of Recall@10 and FHR@20."""
    row = {"dataset": ds, "method": method, "n": m.get("n_eval_h7")}
    row.update({title: m.get(key) for key, title in COLUMNS})
    for key, title in (("recall@10_h7", "R@10"), ("fhr@20_h7", "FHR@20")):
        row[f"{title}_lo"], row[f"{title}_hi"] = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    return row


def gap_ci(paired: list[dict], a: str, b: str, metric: str = "recall@10_h7") -> str:
    """"+0.0123 [0.004, 0.020], p=0.003": the paired difference a - b from eval/paired.json, or n/a."""
    p = next((p for p in paired if p["a"] == a and p["b"] == b and p["metric"] == metric), None)
    if p is None or None in (p["diff"], p["lo"], p["hi"]):
        return "gap CI n/a"
    return f"gap {p['diff']:+.4f} [{p['lo']:.4f}, {p['hi']:.4f}], p={p['p']:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "kuairand"], choices=list(DATASETS))
    ap.add_argument("--set", action="append", default=[], help="config override for every dataset, k=v")
    ap.add_argument("--fresh", action="store_true", help="delete the run folders first")
    a = ap.parse_args()

    from negrec.cli import set_threads

    set_threads(None)
    results = {name: run_dataset(name, a.set, a.fresh) for name in a.datasets}
    for name, res in results.items():
        res["grpo_as_trained"] = grpo_as_trained(name, Path(res["run_dir"]), a.set)

    rows, goals, paired = [], {}, []
    for ds, res in results.items():
        metrics = res["metrics"]
        rows += [table_row(ds, method, m) for method, m in metrics.items()]
        paired += [{"dataset": ds, **{k: p.get(k) for k in ("a", "b", "metric", "diff", "lo", "hi", "p")}}
                   for p in res["paired"]]
        best_base = best_baseline(metrics, 7)
        base_r10 = metrics[best_base].get("recall@10_h7") or 0.0
        ours = metrics.get("grpo", {}).get("recall@10_h7")
        goals[ds] = {"best_baseline": best_base, "best_baseline_r10": base_r10, "negrec_r10": ours,
                     "relative_gain": None if ours is None or base_r10 == 0 else ours / base_r10 - 1,
                     "gap_ci": gap_ci(res["paired"], "grpo", best_base)}
        # the re-ranked rows (blend.baselines): rows of their own, never the policy's goal
        goals[ds]["blends"] = {k: {"r10": v.get("recall@10_h7"), "vs_grpo": gap_ci(res["paired"], k, "grpo"),
                                   "vs_best_baseline": gap_ci(res["paired"], k, best_base)}
                               for k, v in metrics.items() if is_blend(k)}
    print_table(rows, "Future-negative metrics on test users, H = 7 days (negrec = grpo: progressive GRPO); "
                      "_lo/_hi: 95% CI, bootstrap over users")
    print_table(paired, "Paired differences a - b on the same test rows (95% CI and p: paired bootstrap over users)")
    for ds, res in results.items():
        c = res["filter"]
        print_table([{"theta": r["theta"], "true negatives removed": r["neg_removed"],
                      "future positives removed": r["pos_removed"]} for r in c["curve"]],
                    f"{ds}: filter with the top-{c['k']} predicted dislikes of {c['method']} (H = {c['horizon']})")
    for ds, res in results.items():
        print_table([{"dataset": ds, **p} for p in res["grpo_as_trained"]["paired"]],
                    f"{ds}: GRPO as trained (grpo.select: last) against the SFT and progressive against plain, a - b")
    print("\nGoal: negrec's Recall@10 >= 1.3 x the best baseline's")
    for ds, g in goals.items():
        gain = "n/a" if g["relative_gain"] is None else f"{g['relative_gain']:+.0%}"
        met = g["relative_gain"] is not None and g["relative_gain"] >= 0.3
        print(f"  {ds}: negrec {g['negrec_r10']}, best baseline {g['best_baseline']} {g['best_baseline_r10']:.4f} "
              f"-> {gain} ({'met' if met else 'NOT met'}; {g['gap_ci']}); pipeline {results[ds]['seconds']}s")
        for name, b in g["blends"].items():
            print(f"    {name} (re-ranked, a row of its own): {b['r10']:.4f}; - grpo {b['vs_grpo']}; "
                  f"- {g['best_baseline']} {b['vs_best_baseline']}")
    payload = {"command": " ".join(["python", "benchmarks/bench_quality.py", *sys.argv[1:]]),
               "table": rows, "goal": goals, "paired": paired,
               "filter": {ds: r["filter"] for ds, r in results.items()},
               "seconds": {ds: r["seconds"] for ds, r in results.items()},
               "grpo_as_trained": {ds: r["grpo_as_trained"] for ds, r in results.items()}}
    for ds in results:  # one JSON per dataset: a run on one dataset leaves the other's figures alone
        save_result(f"bench_quality_{ds}", dataset_payload(payload, ds))


def dataset_payload(payload: dict, ds: str) -> dict:
    """The part of the benchmark's payload that belongs to dataset `ds`."""
    return {"command": payload["command"], "table": [r for r in payload["table"] if r["dataset"] == ds],
            "goal": {ds: payload["goal"][ds]}, "paired": [p for p in payload["paired"] if p["dataset"] == ds],
            "filter": {ds: payload["filter"][ds]}, "seconds": {ds: payload["seconds"][ds]},
            "grpo_as_trained": {ds: payload["grpo_as_trained"][ds]}}


if __name__ == "__main__":
    main()
