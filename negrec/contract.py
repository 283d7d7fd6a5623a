"""The stage contract: one freshness rule and atomic stage folders, for every stage of
`negrec.stages.STAGES` (the CLI, the pipeline and `negrec status` all decide through here).

Freshness. A stage's fingerprint hashes its name, the config sections it reads (registry
`sections`), the fingerprint of each input stage (registry `inputs`; None for an input that is not
done), for raw inputs outside the run folder the registry's `fingerprint` function (sizes
and content hashes), and the code (syntax trees, docstrings left out) of the negrec subpackages its
module reaches by its imports (`code_fingerprint`): a stage made by other code, as after an upgrade, is stale. A stage
is *done* when its marker holds that fingerprint and its key outputs exist whole. The marker is
`<folder>/_DONE`, or `<folder>/_DONE.<stage>` where several stages write one folder (`eval/`:
baselines, predict, evaluate; the run folder itself: report). It holds the fingerprint and its
parts, so `negrec status` can say what changed, and the size of every file the stage wrote, so
that a truncated, replaced or deleted output is not taken for done (and `negrec evaluate` scores
the predictions files this run's stages wrote, not every file it finds).

Atomic folders. `stage_folder` yields a temporary folder beside the stage's own; the stage writes
its outputs there, the marker is written last and the folder is renamed into place, so a kill
leaves either the old folder or the new one, never a mix (`_finish_swap` puts one in place after
a kill between the two renames). A stage sharing its folder (`shared_stage_files`) writes each file
atomically (`negrec.io.atomic_path`), drops its marker first and writes it last, and marks itself
running meanwhile (`_RUNNING.<stage>`: killed, it reads as interrupted, and the stages reading it
refuse its half-written files). Resumable stages keep checkpoints in `work_dir` (`<run>/.work/<stage>/`),
outside the swapped folder, until their folder is in place (`drop_work`). Every stage starts with
`up_to_date`: an input stage's folder without a matching marker is refused, naming it.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import shutil
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from .config import ConfigError, fill_cut_unit, section_config
from .io import atomic_dir, config_hash, recording_writes, write_json
from .runlock import launched_rank, launched_world
from .stages import STAGES, PipelineConfig, stage

MARKER = "_DONE"
RUNNING = "_RUNNING"  # <folder>/_RUNNING.<stage>: a stage sharing its folder has started, not finished
WORK = ".work"  # <run>/.work/<stage>/: checkpoints of resumable stages, outside the swapped folder


class StageNotReady(ConfigError):
    """An input stage's folder is incomplete (no marker) or was made from another config or input."""


# ---- where a stage lives ----
def stage_dir(raw: dict, run_dir, name: str) -> Path:
    """The folder stage `name` writes: `<run>/<folder>`; export's is `export.out_dir` when set."""
    folder = stage(name).folder
    if folder == "{export}":
        export = raw.get("export") if isinstance(raw.get("export"), dict) else {}
        return Path(export["out_dir"]) if export.get("out_dir") else Path(run_dir) / "export"
    return Path(run_dir) / folder


def _shared(name: str) -> bool:
    folder = stage(name).folder
    return folder == "." or sum(s.folder == folder for s in STAGES) > 1


def marker_path(raw: dict, run_dir, name: str) -> Path:
    return stage_dir(raw, run_dir, name) / (f"{MARKER}.{name}" if _shared(name) else MARKER)


def running_path(raw: dict, run_dir, name: str) -> Path:
    return stage_dir(raw, run_dir, name) / f"{RUNNING}.{name}"


def output_paths(raw: dict, run_dir, name: str) -> list[Path]:
    """The stage's key outputs (registry `outputs`, relative to its folder's parent: the run folder)."""
    out = []
    for rel in stage(name).outputs:
        out.append(stage_dir(raw, run_dir, name) / rel.split("/", 1)[1] if rel.startswith("{export}/")
                   else Path(run_dir) / rel)
    return out


def work_dir(run_dir, name: str) -> Path:
    """Checkpoints and other resumable state of stage `name`, kept outside its swapped folder."""
    return Path(run_dir) / WORK / name


def drop_work(run_dir, name: str) -> None:
    """Stage `name`'s folder is in place: its resumable state is garbage. A TRL checkpoint holds the
    optimizer's moments beside the weights (about three times the model: 1.5 GB for SmolLM2-135M)."""
    shutil.rmtree(work_dir(run_dir, name), ignore_errors=True)


# ---- the one freshness rule ----
def _raw_inputs(raw: dict, name: str):
    spec = stage(name).fingerprint
    if not spec:
        return None
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)(raw)


class _Rule:
    """Fingerprints and states of one (config, run folder), each computed once per question."""

    def __init__(self, raw: dict, run_dir):
        fill_cut_unit(raw, run_dir)  # `cut_unit: auto`: fingerprints hold the unit this folder's data stage chose
        self.raw, self.run_dir = raw, Path(run_dir)
        self._parts: dict[str, dict] = {}
        self._states: dict[str, dict] = {}

    def parts(self, name: str) -> dict:
        if name not in self._parts:
            s = stage(name)
            self._parts[name] = {
                "stage": name,
                # an empty section is the defaults, as an absent one is (`prompt: {}` is left where
                # `fill_cut_unit` takes back a day_breaks it filled for another unit)
                "config": config_hash({sec: self.raw.get(sec) or None for sec in s.sections}),
                "inputs": {i: (self.fingerprint(i) if self.done(i) else None) for i in s.inputs},
                "raw": config_hash(_raw_inputs(self.raw, name)),
                "code": code_fingerprint(s.module),
            }
        return self._parts[name]

    def fingerprint(self, name: str) -> str:
        return config_hash(self.parts(name))

    def recorded(self, name: str) -> dict | None:
        """The marker's content, or None when there is none (or it is unreadable)."""
        try:
            rec = json.loads(marker_path(self.raw, self.run_dir, name).read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def done(self, name: str) -> bool:
        return self.state(name)["state"] == "done"

    def state(self, name: str) -> dict:
        """{"state": done | stale | missing, "why": ...}, read once per stage (markers, file sizes)."""
        if name not in self._states:
            self._states[name] = self._state(name)
        return self._states[name]

    def _state(self, name: str) -> dict:
        folder = stage_dir(self.raw, self.run_dir, name)
        rec = self.recorded(name)
        if rec is None:
            if not _shared(name) and not folder.exists() and _staged(self.raw, self.run_dir, name):
                return {"state": "missing", "why": "killed while its finished folder was being renamed into place; "
                                                   "the next command reading it puts it there"}
            if folder.exists() and not _shared(name):
                return {"state": "missing", "why": f"{folder} has no {MARKER} (incomplete: killed or never finished)"}
            if running_path(self.raw, self.run_dir, name).exists():
                return {"state": "missing", "why": f"started, not finished (running now, or killed): its files "
                                                   f"in {folder} may be half-written"}
            work = work_dir(self.run_dir, name)
            if work.exists() and any(work.iterdir()):
                return {"state": "missing", "why": f"not finished (resumable state in {work})"}
            return {"state": "missing", "why": "never ran"}
        now = self.parts(name)
        if rec.get("fingerprint") != self.fingerprint(name):
            return {"state": "stale", "why": _what_changed(stage(name), rec.get("parts") or {}, now)}
        absent = [p for p in output_paths(self.raw, self.run_dir, name) if not p.exists()]
        if absent:
            return {"state": "missing", "why": "no " + ", ".join(str(p) for p in absent[:2])}
        damaged = _damaged(folder, rec.get("files") or {})
        if damaged:
            return {"state": "missing", "why": damaged}
        return {"state": "done", "why": "fingerprint matches, outputs present"}


def _file_sizes(folder: Path, paths) -> dict[str, int]:
    """{path relative to `folder`: size} of the files a stage wrote there, markers left out."""
    out = {}
    for p in map(Path, paths):  # all written below `folder` as given (a linked subfolder is kept)
        if p.is_relative_to(folder) and p.is_file() and not p.name.startswith((MARKER, RUNNING)):
            out[p.relative_to(folder).as_posix()] = p.stat().st_size
    return dict(sorted(out.items()))


def _damaged(folder: Path, files: dict[str, int]) -> str | None:
    """Why the files a marker records are not as the stage wrote them (None when they are)."""
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{path} is gone (the stage wrote it)"
        now = path.stat().st_size
        if now != size:
            return f"{path} is {now} bytes, the stage wrote {size} (truncated or replaced?)"
    return None


UNRECORDED = "unrecorded"  # `stage_files` of a marker written before markers recorded files


def stage_files(raw: dict, run_dir, name: str) -> list[Path] | str | None:
    """The files stage `name` wrote, as its marker records them; None without a marker, UNRECORDED
    for a marker from before markers recorded files."""
    rec = _Rule(raw, run_dir).recorded(name)
    if rec is None:
        return None
    if not isinstance(rec.get("files"), dict):
        return UNRECORDED
    folder = stage_dir(raw, run_dir, name)
    return [folder / rel for rel in rec["files"]]


def _what_changed(spec, old: dict, now: dict) -> str:
    why = []
    if old.get("config") != now["config"]:
        why.append(f"its config ({', '.join(spec.sections)}) changed")
    if old.get("raw") != now["raw"]:
        why.append("its raw input files changed")
    inputs = [i for i in spec.inputs if (old.get("inputs") or {}).get(i) != now["inputs"][i]]
    if inputs:
        why.append("input " + ", ".join(f"{i} ({'not done' if now['inputs'][i] is None else 'changed'})"
                                        for i in inputs))
    if not old.get("code"):
        why.append("made by a negrec that did not record its code")
    elif old["code"] != now["code"]:
        changed = [f"negrec.{sub}" for sub in now["code"] if old["code"].get(sub) != now["code"][sub]]
        why.append(f"its code changed ({', '.join(changed) or 'fewer subpackages'})")
    return "; ".join(why) or "made by another version of negrec"


# ---- what code made a stage ----
PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _imported_subpackages(sub: str) -> frozenset[str]:
    """The negrec subpackages (folders below negrec/) that the files of negrec/<sub> import."""
    out = set()
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        here = ["negrec", *path.relative_to(PACKAGE).parent.parts]  # the package the file is in
        for node in ast.walk(_syntax_tree(path)):
            if isinstance(node, ast.ImportFrom):
                named = [(here[:len(here) - node.level + 1] if node.level else []) + (node.module or "").split(".")]
            elif isinstance(node, ast.Import):
                named = [a.name.split(".") for a in node.names]
            else:
                continue
            out.update(n[1] for n in named if len(n) > 1 and n[0] == "negrec" and (PACKAGE / n[1]).is_dir())
    return frozenset(out)


@lru_cache(maxsize=None)
def code_reach(module: str) -> tuple[str, ...]:
    """The subpackages whose code a stage's module ("negrec.train") runs: its own and those its
    files import, transitively. The run machinery beside them (config, io, contract, ...) is left
    out: it reads and writes files, and an edit there would make every run folder stale."""
    seen, todo = set(), [module.split(".")[1]]
    while todo:
        sub = todo.pop()
        if sub not in seen:
            seen.add(sub)
            todo.extend(_imported_subpackages(sub))
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def _source_hash(sub: str) -> str:
    """sha256 over the source files of negrec/<sub>: their names and what their code does (the
    syntax tree without docstrings, `_syntax_tree`), so an upgrade that edits only comments,
    docstrings or layout leaves the stages it made done (retraining a policy for a reworded docstring
    costs hours on real logs). The Python version's tree format is in it: a new Python makes stages
    stale, as it may change results."""
    h = hashlib.sha256()
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        h.update(f"{path.relative_to(PACKAGE).as_posix()}\0".encode() + ast.dump(_syntax_tree(path)).encode() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _syntax_tree(path: Path) -> ast.Module:
    """The parsed file without its docstrings (module, class and function), parsed once a process."""
    tree = ast.parse(path.read_bytes(), str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:]  # dumped and walked, never compiled: an empty body is fine
    return tree


def code_fingerprint(module: str) -> dict[str, str]:
    """{subpackage: hash of its source} over `code_reach(module)`: what `negrec status` compares to
    name the code that changed."""
    return {sub: _source_hash(sub) for sub in code_reach(module)}


def fingerprint(raw: dict, run_dir, name: str) -> str:
    return _Rule(raw, run_dir).fingerprint(name)


def state(raw: dict, run_dir, name: str) -> dict:
    return _Rule(raw, run_dir).state(name)


def is_done(raw: dict, run_dir, name: str) -> bool:
    return _Rule(raw, run_dir).done(name)


def left_out(raw: dict, run_dir, name: str) -> bool:
    """Stage `name` is in `pipeline.skip` and its folder is not done for this config and these inputs
    (an older run's): this run leaves it out, and the stages that list it in `skippable_inputs` do
    not read it (nor refuse to run); every other reader refuses it (`_check_inputs`)."""
    return name in _skipped(raw) and stage_dir(raw, run_dir, name).exists() and not is_done(raw, run_dir, name)


def _skipped(raw: dict) -> list[str]:
    return section_config(PipelineConfig, raw, "pipeline").skip


def _check_inputs(rule: _Rule, name: str) -> None:
    """Refuse to read an input stage whose folder exists without a marker matching the current
    config and inputs (killed, unfinished, or made from another config): one line naming it. An
    input that never ran, or whose marker matches but lacks a file, is left to the reader (it
    names the file it needs and the command to run, or does without)."""
    raw, run_dir = rule.raw, rule.run_dir
    skip = _skipped(raw)
    for i in stage(name).inputs:
        rec = rule.recorded(i)
        if rec is None and (_shared(i) and not running_path(raw, run_dir, i).exists()
                            or not stage_dir(raw, run_dir, i).exists()):
            continue
        if rec is not None and rec.get("fingerprint") == rule.fingerprint(i):
            continue
        skipped = i in skip
        if skipped and i in stage(name).skippable_inputs:  # the reader leaves it out (`left_out`)
            continue
        # in pipeline.skip, the pipeline would never make it again: say what to change
        how = (f"take {i} out of pipeline.skip (or run `negrec {stage(i).command_line}`)" if skipped else
               f"run `negrec {stage(i).command_line}` (or `negrec pipeline`)")
        raise StageNotReady(f"{stage_dir(raw, run_dir, i)}: {i} is not done ({rule.state(i)['why']}); {how} first")


def up_to_date(raw: dict, run_dir, name: str) -> bool:
    """The entry check of every stage: refuse unusable inputs, then True (printing so) when the
    stage is done by the rule, so that it skips itself."""
    if launched_world() == 1:  # under a launcher every rank checks here: no rank may rename alone
        for n in (*stage(name).inputs, name):
            _finish_swap(raw, run_dir, n)
    rule = _Rule(raw, run_dir)  # one rule: the input fingerprints (raw-file hashes) computed once
    _check_inputs(rule, name)
    if rule.done(name):
        if launched_rank() == 0:  # under a launcher every rank checks, rank 0 says so
            print(f"[{name}] up to date: {stage_dir(raw, run_dir, name)}")
        return True
    return False


def _marker_record(rule: _Rule, name: str) -> dict:
    return {"fingerprint": rule.fingerprint(name), "parts": rule.parts(name)}


def _with_files(record: dict, folder: Path, paths) -> dict:
    return {**record, "files": _file_sizes(folder, paths)}


def mark_done(raw: dict, run_dir, name: str, folder: str | Path | None = None) -> None:
    """Write stage `name`'s marker (into `folder` instead of its own folder: a staging folder)."""
    record = _marker_record(_Rule(raw, run_dir), name)
    path = marker_path(raw, run_dir, name)
    write_json(Path(folder) / path.name if folder is not None else path, record)


def clear(raw: dict, run_dir, name: str) -> None:
    """Drop stage `name`'s marker: it is not done until it runs again (pipeline.force)."""
    marker_path(raw, run_dir, name).unlink(missing_ok=True)


# ---- atomic stage folders ----
def _remove_leftovers(folder: Path, run_dir) -> None:
    """Staging folders of a killed run beside `folder` (`.<name>.*`): garbage once we hold the
    run folder's lock. Beside a folder outside the run folder (export.out_dir) nothing is ours to delete."""
    if not folder.resolve().is_relative_to(Path(run_dir).resolve()):
        return
    for p in folder.parent.glob(f".{folder.name}.*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _staged(raw: dict, run_dir, name: str) -> list[Path]:
    """Finished staging folders of stage `name` (its marker written), oldest first."""
    folder = stage_dir(raw, run_dir, name)
    old = folder.with_name(f".{folder.name}.old")
    return sorted((p for p in folder.parent.glob(f".{folder.name}.*")
                   if p != old and (p / marker_path(raw, run_dir, name).name).is_file()),
                  key=lambda p: p.stat().st_mtime_ns)


def _finish_swap(raw: dict, run_dir, name: str) -> None:
    """A kill between the two renames of `negrec.io.atomic_dir` leaves the stage without its folder:
    the finished new one (its marker written) or else the old one (`.<name>.old`) is put in place."""
    folder = stage_dir(raw, run_dir, name)
    if _shared(name) or folder.exists() or not folder.resolve().is_relative_to(Path(run_dir).resolve()):
        return
    old, staged = folder.with_name(f".{folder.name}.old"), _staged(raw, run_dir, name)
    if staged or old.is_dir():
        os.replace(staged[-1] if staged else old, folder)
        _remove_leftovers(folder, run_dir)
        if staged:
            drop_work(run_dir, name)


@contextmanager
def stage_folder(raw: dict, run_dir, name: str) -> Iterator[Path]:
    """Yield an empty staging folder beside stage `name`'s own; when the block succeeds the
    marker is written into it last and it replaces the stage's folder in one rename."""
    record = _marker_record(_Rule(raw, run_dir), name)  # the inputs as they are now, before writing
    folder = stage_dir(raw, run_dir, name)
    _remove_leftovers(folder, run_dir)
    with atomic_dir(folder) as tmp:
        yield tmp
        write_json(tmp / marker_path(raw, run_dir, name).name, _with_files(record, tmp, tmp.rglob("*")))
    drop_work(run_dir, name)


@contextmanager
def shared_stage_files(raw: dict, run_dir, name: str) -> Iterator[Path]:
    """For a stage writing into a folder it shares (eval/, the run folder): yield that folder; the
    stage's marker is dropped first and written last, naming the files the stage wrote (each
    atomically, `negrec.io.atomic_path`); `_RUNNING.<stage>` stands meanwhile, so a kill or an
    error in between leaves the stage interrupted, not "never ran"."""
    record = _marker_record(_Rule(raw, run_dir), name)
    marker, running = marker_path(raw, run_dir, name), running_path(raw, run_dir, name)
    marker.unlink(missing_ok=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    for torn in [*marker.parent.glob(".*.tmp"), *marker.parent.glob("*/.*.tmp")]:  # writes a kill cut short
        torn.unlink(missing_ok=True)
    write_json(running, {"stage": name, "pid": os.getpid()})
    with recording_writes() as written:
        yield marker.parent
    write_json(marker, _with_files(record, marker.parent, written))
    running.unlink(missing_ok=True)


def copy_tree(src: Path, dst: Path) -> None:
    """`src` into `dst` by hard links where the file system allows (a model folder costs no space),
    else by copies; the source stays intact, so a kill before the swap loses nothing."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link)
