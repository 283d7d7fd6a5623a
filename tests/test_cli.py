"""The CLI contract: subcommands listed, YAML + --set overrides, resolved config in the run folder."""
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import yaml

from negrec.cli import STAGES, main
from negrec.config import ConfigError, apply_overrides, from_dict


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "negrec.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in STAGES:
        assert name in out


def test_run_folder_gets_resolved_config(tmp_path, ml100k_dir, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "movielens", "path": str(ml100k_dir), "main_horizon": 7}}))
    rc = main(["data", "prepare", "--config", str(cfg), "--set", "data.main_horizon=3",
               "--set", "data.split.min_context=8", "--run-dir", str(tmp_path / "r")])
    assert rc == 0
    resolved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert resolved["data"]["main_horizon"] == 3 and resolved["data"]["split"]["min_context"] == 8
    assert (tmp_path / "r" / "data" / "samples_test.parquet").exists()
    assert "users            943" in capsys.readouterr().out


def test_bad_config_names_file_and_field(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  fromat: movielens\n")
    assert main(["data", "--config", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: data" in err and "fromat" in err


@dataclass
class _Inner:
    k: int = 1


@dataclass
class _Outer:
    a: float = 0.5
    inner: _Inner = field(default_factory=_Inner)
    hs: list[int] = field(default_factory=lambda: [1])


def test_from_dict_types_and_errors():
    o = from_dict(_Outer, apply_overrides({"inner": {"k": 2}}, ["a=3", "hs=[1,3,7]"]))
    assert o.a == 3.0 and o.inner.k == 2 and o.hs == [1, 3, 7]
    with pytest.raises(ConfigError, match=r"x\.inner\.k: expected an integer"):
        from_dict(_Outer, {"inner": {"k": "two"}}, "x")
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(_Outer, {"b": 1})
