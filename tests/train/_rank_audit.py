"""`negrec ARGS...` with a record of what this process changes on disk (launched once per rank).

Python's audit hooks see every file opened for writing and every mkdir, rename and delete made
from Python (DeepSpeed's torch.save, the Trainer's json and TensorBoard writers, negrec's own).
The ones under $NEGREC_AUDIT_ROOT are written at exit to $NEGREC_AUDIT_DIR/rank<RANK>.json, so a
test can tell which rank wrote what. Writes from native code (safetensors) are not seen.
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

ROOT = os.path.realpath(os.environ["NEGREC_AUDIT_ROOT"])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree")
changes: list[list[str]] = []
recording = [True]


def _under_root(path) -> bool:
    if isinstance(path, int):  # a file descriptor
        return False
    return os.path.realpath(os.fsdecode(path)).startswith(ROOT + os.sep)


def _opens_for_writing(mode, flags) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool((flags or 0) & WRITE_FLAGS)


def record(event: str, args: tuple) -> None:
    if not recording[0]:
        return
    if event == "open" and _opens_for_writing(args[1], args[2]) and _under_root(args[0]):
        changes.append([event, os.path.realpath(os.fsdecode(args[0]))])
    elif event in PATH_EVENTS and _under_root(args[0]):
        changes.append([event, os.path.realpath(os.fsdecode(args[0]))])
    elif event == "os.rename" and _under_root(args[1]):
        changes.append([event, os.path.realpath(os.fsdecode(args[1]))])


def dump() -> None:
    recording[0] = False
    out = os.path.join(os.environ["NEGREC_AUDIT_DIR"], f"rank{os.environ.get('RANK', '0')}.json")
    with open(out, "w") as f:
        json.dump(changes, f)


if __name__ == "__main__":
    atexit.register(dump)
    sys.addaudithook(record)
    sys.argv = ["negrec", *sys.argv[1:]]
    runpy.run_module("negrec.cli", run_name="__main__", alter_sys=True)
