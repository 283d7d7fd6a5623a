"""Interaction logs with explicit and implicit negatives, per-user chronological cuts, samples."""
from .implicit import SkipRule, add_implicit_negatives
from .generic import GenericLogSpec, load_generic
from .loaders import RatingRule, load_kuairand, load_ml100k, load_movielens, load_recbole, recbole_ml100k_path
from .prepare import (DataConfig, Prepared, data_stats, format_stats, prepare_data, raw_inputs_fingerprint,
                      run_prepare)
from .schema import EXPLICIT, IMPLICIT, NEGATIVE, NEUTRAL, POSITIVE, DataError
from .splits import SampleBuilder, SplitConfig, compute_cuts

__all__ = [
    "DataConfig", "DataError", "GenericLogSpec", "Prepared", "RatingRule", "SampleBuilder", "SkipRule", "SplitConfig",
    "add_implicit_negatives", "compute_cuts", "data_stats", "format_stats", "load_generic", "load_kuairand",
    "load_ml100k", "load_movielens", "load_recbole", "prepare_data", "raw_inputs_fingerprint",
    "recbole_ml100k_path", "run_prepare",
    "EXPLICIT", "IMPLICIT", "NEGATIVE", "NEUTRAL", "POSITIVE",
]
