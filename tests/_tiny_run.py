"""A tiny run folder up to `build-model` (the embedded ML-100K, the pipeline test's budgets; a few
seconds): the input of the tests that launch stages in several processes."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ml100k.yaml"


def tiny_overrides() -> list[str]:
    from tests.test_pipeline import TINY

    return [*TINY, "encode.text_weight=0.0"]  # collaborative embeddings only: no text model to load


def prepare_tiny_run(run_dir: Path) -> Path:
    from negrec.config import load_config
    from negrec.pipeline import run_pipeline

    run_pipeline(load_config(str(CONFIG), [*tiny_overrides(), "pipeline.stop_after=build-model"]), run_dir)
    return run_dir
