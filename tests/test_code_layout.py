"""Code layout rules of negrec/ (docs/ARCHITECTURE.md): every function fits on a screen, and no
subpackage reaches into another's private names. And one rule of benchmarks/: a script that trains
through `run_pipeline` sets torch's threads as the CLI does."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "negrec"
MAX_FUNCTION_LINES = 80
FILES = sorted(PACKAGE.rglob("*.py"))
BENCHMARKS = sorted((PACKAGE.parent / "benchmarks").glob("*.py"))


def _module_of(path: Path) -> list[str]:
    """negrec/llm/prompts.py -> ["negrec", "llm", "prompts"]; a package's __init__ is the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _subpackage(module: list[str]) -> str:
    """The first level below negrec ("llm", "eval", ...; "io" for negrec/io.py, "" for negrec itself)."""
    return module[1] if len(module) > 1 else ""


def _imported_module(path: Path, node: ast.ImportFrom) -> list[str]:
    """Absolute dotted parts of what `from X import ...` names, relative imports resolved."""
    target = node.module.split(".") if node.module else []
    if not node.level:
        return target
    here = _module_of(path)
    base = here if path.name == "__init__.py" else here[:-1]  # the package the file is in
    return base[: len(base) - (node.level - 1)] + target


def test_no_function_over_80_lines():
    long = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines (split them into named helpers):\n" + "\n".join(long)


def _private_cross_imports(path: Path, tree: ast.AST) -> list[str]:
    """`from negrec.x... import _name` (or the relative form) in `path` where x is not path's own subpackage."""
    here = _subpackage(_module_of(path))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _imported_module(path, node)
        if not target or target[0] != "negrec" or _subpackage(target) == here:
            continue
        out += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} from {'.'.join(target)} import {a.name}"
                for a in node.names if a.name.startswith("_")]
    return out


def test_no_private_name_imported_across_subpackages():
    bad = [line for path in FILES for line in _private_cross_imports(path, ast.parse(path.read_text(), str(path)))]
    assert not bad, "private names imported across subpackages (make them public or move them):\n" + "\n".join(bad)


@pytest.mark.parametrize("file,source,flagged", [
    ("train/sft.py", "from negrec.llm.constrained import _encode_prompts", True),
    ("eval/run.py", "from ..llm.constrained import _encode_prompts", True),
    ("cli.py", "from .io import _json_default", True),
    ("llm/evaluation.py", "from .constrained import _encode_prompts", False),  # same subpackage
    ("llm/evaluation.py", "from negrec.llm.constrained import _encode_prompts", False),
    ("train/sft.py", "from negrec.llm.constrained import encode_prompts", False),
])
def test_the_private_import_rule_itself(file, source, flagged):
    assert bool(_private_cross_imports(PACKAGE / file, ast.parse(source))) == flagged


def _called_names(tree: ast.AST) -> set[str]:
    """The names of the functions a module calls (`f(...)` and `x.f(...)`)."""
    return {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}


def test_benchmarks_that_run_the_pipeline_set_the_cli_threads():
    # torch.set_num_threads also turns MKL's dynamic threading off: a run retrained in a benchmark's
    # process without it trained to other numbers than `negrec pipeline` (docs/RESULTS.md "Future probes")
    missing = [p.name for p in BENCHMARKS
               if {"run_pipeline"} <= (called := _called_names(ast.parse(p.read_text()))) and "set_threads" not in called]
    assert BENCHMARKS and not missing, f"benchmarks that call run_pipeline without negrec.cli.set_threads: {missing}"
