"""Fixtures of the eval tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._tiny_run import CONFIG, prepare_tiny_run, tiny_overrides


@pytest.fixture(scope="session")  # read-only: the tests copy it
def policy_run(tmp_path_factory) -> Path:
    """A tiny run whose sft_next policy is the built (untrained) model: predict only needs a policy."""
    from negrec.config import load_config
    from negrec.contract import mark_done

    run = prepare_tiny_run(tmp_path_factory.mktemp("predict") / "run")
    shutil.copytree(run / "model", run / "sft_next" / "final")
    mark_done(load_config(str(CONFIG), tiny_overrides()), run, "sft-next")  # assembled by hand: marked as the stage would
    return run
