"""The shell entry points pass their arguments on as documented (`scripts/run_pipeline.sh`: an
optional config first, then negrec's own flags), run here against a stand-in for setup and the CLI."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipeline_script(tmp_path):
    """A copy of run_pipeline.sh whose setup does nothing and whose `negrec` prints its arguments."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "run_pipeline.sh", tmp_path / "scripts")
    (tmp_path / "scripts" / "setup.sh").write_text("true\n")
    entry = tmp_path / ".venv" / "bin" / "negrec"
    entry.parent.mkdir(parents=True)
    entry.write_text('#!/usr/bin/env bash\necho "$@"\n')
    entry.chmod(0o755)
    return tmp_path / "scripts" / "run_pipeline.sh"


@pytest.mark.parametrize("args, expect", [
    ([], "pipeline --config configs/ml100k.yaml"),
    (["configs/kuairand.yaml"], "pipeline --config configs/kuairand.yaml"),
    (["configs/generic.yaml", "--set", "a.b=1"], "pipeline --config configs/generic.yaml --set a.b=1"),
    # flags alone keep the default config (the first flag was once taken for the config's path)
    (["--set", "a.b=1", "--run-dir", "r"], "pipeline --config configs/ml100k.yaml --set a.b=1 --run-dir r"),
])
def test_run_pipeline_takes_an_optional_config_first(pipeline_script, args, expect):
    out = subprocess.run(["bash", str(pipeline_script), *args], capture_output=True, text=True, check=True).stdout
    assert out.strip() == expect
