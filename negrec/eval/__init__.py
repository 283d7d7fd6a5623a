"""Offline evaluation: future-negative metrics, baselines, and the dislike filter.

The metric shares its matching code with `negrec.rewards`, so what is trained is what is measured.
"""
from negrec.eval.baselines import (
    Baseline,
    ItemKNN,
    NegativeRatio,
    PopularNegatives,
    RandomItems,
    SASRec,
    SASRecConfig,
    UserKNN,
    make_baselines,
)
from negrec.eval.filter import filter_candidates, filter_curve
from negrec.eval.metrics import (
    MetricsConfig,
    candidate_sets,
    evaluate_arrays,
    evaluate_predictions,
    evaluate_samples,
    rank_metrics,
)
from negrec.eval.stats import (
    bootstrap_ci,
    bootstrap_summary,
    format_ci,
    paired_bootstrap,
    paired_summary,
    sign_flip_p,
)
from negrec.eval.report import run_report
from negrec.eval.run import (BaselinesConfig, EvalConfig, FilterConfig, run_baselines, run_evaluate, run_filter,
                             run_predict)

__all__ = [
    "BaselinesConfig", "EvalConfig", "FilterConfig", "run_baselines", "run_evaluate", "run_filter", "run_predict",
    "run_report",
    "Baseline", "ItemKNN", "NegativeRatio", "PopularNegatives", "RandomItems", "SASRec", "SASRecConfig",
    "UserKNN", "make_baselines", "filter_candidates", "filter_curve", "MetricsConfig", "candidate_sets",
    "evaluate_arrays", "evaluate_predictions", "evaluate_samples", "rank_metrics",
    "bootstrap_ci", "bootstrap_summary", "format_ci", "paired_bootstrap", "paired_summary", "sign_flip_p",
]
