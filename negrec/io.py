"""Atomic writes and run folders: nothing half-written survives a kill."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml


_recorders: list[list[Path]] = []  # open `recording_writes` blocks


@contextmanager
def recording_writes() -> Iterator[list[Path]]:
    """Collect the paths `atomic_path` puts in place inside the block: a stage that shares its
    folder with others names the files it wrote (see `negrec.contract.shared_stage_files`)."""
    paths: list[Path] = []
    _recorders.append(paths)
    try:
        yield paths
    finally:
        _recorders.remove(paths)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        kill_point("write")  # the new content complete, not yet in place
        os.replace(tmp, path)
        for paths in _recorders:
            paths.append(path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; it replaces `path` only if the block succeeds."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            kill_point("swap")  # the old folder moved aside, the new one not yet in place
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            kill_point("swap")
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_kill_counts: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Test hook for the interruption tests: with NEGREC_KILL_AT=<name>[:<n>] the process kills
    itself (SIGKILL, as a power cut or the OOM killer would) the n-th time (default 1st) it
    reaches point `name`. Without the variable it does nothing."""
    spec = os.environ.get("NEGREC_KILL_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file ([] when it does not exist); a line a kill cut short is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill (or a blank one)
            pass
    return rows


def write_yaml(path: str | Path, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_parquet(path: str | Path, df) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_sha256(path: str | Path) -> str:
    """sha256 over every file of a folder, names and contents: equal for byte-identical copies."""
    root, h = Path(path), hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(root).as_posix()}\0{file_sha256(p)}\0".encode())
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """Stable hash of a config (used to decide whether a stage's outputs are up to date)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


FULL_HASH_MAX = 64 << 20  # files below this size are hashed whole; larger ones by their first and last MiB
_EDGE = 1 << 20


def file_fingerprint(path: str | Path) -> dict:
    """Size and a sha256 of a raw input file, so that an edited, truncated or replaced input makes its
    stage stale: what the file holds, not where it lies or when it was written (a run folder copied
    to another machine or checkout stays done). A file of 64 MiB or more is hashed by its first and
    last MiB and its size, and its mtime (ns) is kept too, since the hash does not cover its middle."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size < FULL_HASH_MAX:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(_EDGE))
            f.seek(st.st_size - _EDGE)
            h.update(f.read(_EDGE))
            h.update(str(st.st_size).encode())
    out = {"size": st.st_size, "sha256": h.hexdigest()[:16]}
    return out if st.st_size < FULL_HASH_MAX else {**out, "mtime_ns": st.st_mtime_ns}


def inputs_fingerprint(spec: str | Path) -> dict:
    """`file_fingerprint` of every file a path names: the file, every file under a folder (hidden
    ones left out), or every match of a glob; {spec: "missing"} when it names nothing. Files are
    named relative to what the spec names (the file by its own name, the others by their path under
    the folder or under the glob's fixed leading part): the config says where the inputs lie, so the
    same files reached from another checkout (the embedded ML-100K lies inside each checkout's
    virtualenv), through a symlink or after a move are the same input."""
    import glob

    spec = str(spec)
    p = Path(spec)
    if p.is_file():
        files, root = [p], p.parent
    elif p.is_dir():
        files, root = sorted(f for f in p.rglob("*") if f.is_file()
                             and not any(part.startswith(".") for part in f.relative_to(p).parts)), p
    else:
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        wild = [k for k, part in enumerate(p.parts) if glob.escape(part) != part]  # parts with a wildcard
        root = Path(*p.parts[:wild[0]]) if wild and wild[0] else Path(".")
    if not files:
        return {spec: "missing"}
    return {f.relative_to(root).as_posix(): file_fingerprint(f) for f in files}
