"""One writer per run folder: `run_lock(run_dir, command)` holds `fcntl.flock` on `run_dir/.lock`
(the kernel releases it when the process dies, however it dies) and writes the holder (pid, host,
command, start time) inside. A second writer stops at once with `RunLocked`, one line naming the
holder. Holder info left behind by a killed process (the flock is free) is taken over with a note.
Re-entrant within one process (the CLI holds it around `run_pipeline`, which takes it too), and
held for the stages the pipeline launches under torchrun by the pipeline that launched them."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .config import ConfigError

LOCK_NAME = ".lock"
HOLDER_ENV = "NEGREC_LOCK_HOLDER"  # the pid of the pipeline that launched this stage (see run_lock)
_held: dict[str, list] = {}  # resolved run folder -> [open file, depth]


def launched_rank() -> int:
    """This process's rank under torchrun / accelerate launch / deepspeed (their RANK), else 0:
    the N ranks of one launch are one writer, rank 0."""
    return int(os.environ.get("RANK", "0") or 0)


def launched_world() -> int:
    """How many processes this launch runs (their WORLD_SIZE), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class RunLocked(ConfigError):
    """Another process writes into this run folder."""


def read_holder(run_dir) -> dict:
    """The holder info written in run_dir/.lock ({} when none or unreadable)."""
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe_holder(h: dict) -> str:
    if not h:
        return "another process (no holder info)"
    return f"pid {h.get('pid')} on {h.get('host')} (`{h.get('command')}`, since {h.get('started')})"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _stale_note(run_dir: Path, old: dict) -> str | None:
    if not old or old.get("pid") == os.getpid():
        return None
    dead = old.get("host") == socket.gethostname() and not _pid_alive(old.get("pid"))
    why = "its process is gone" if dead else "it no longer holds the lock"
    return (f"negrec: note: {run_dir}: took over the lock of {describe_holder(old)}: {why} "
            "(it stopped without finishing)")


def acquire(run_dir, command: str):
    """Take the lock or raise RunLocked; returns the open lock file (keep it open to hold the lock)."""
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunLocked(f"{run_dir}: in use by {describe_holder(read_holder(run_dir))}; "
                        "wait for it to finish or stop it (one writer per run folder)") from None
    note = _stale_note(run_dir, read_holder(run_dir))
    if note:
        print(note, file=sys.stderr)
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    f.flush()
    os.fsync(f.fileno())
    return f


def release(f) -> None:
    """Clear the holder info (a cleanly ended holder leaves none) and drop the lock."""
    import fcntl

    try:
        f.seek(0)
        f.truncate()
        f.flush()
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()


def _held_by_launching_pipeline(run_dir) -> bool:
    """A stage the pipeline runs on several processes (`pipeline.ranks`) works inside the pipeline's
    lock: the holder the lock names set $NEGREC_LOCK_HOLDER for it and is this process's ancestor."""
    holder = os.environ.get(HOLDER_ENV)
    if not holder or str(read_holder(run_dir).get("pid")) != holder:
        return False
    import psutil

    return any(p.pid == int(holder) for p in psutil.Process().parents())


@contextmanager
def run_lock(run_dir, command: str):
    key = str(Path(run_dir).resolve())
    if key not in _held and _held_by_launching_pipeline(run_dir):
        yield
        return
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [acquire(run_dir, command), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            release(_held.pop(key)[0])
