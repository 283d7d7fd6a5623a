"""`negrec` command line: one subcommand per stage. Each reads a YAML config (plus `--set key=value`
overrides), writes into a run folder (runs/<name>/ by default) with the resolved config beside it,
and calls the stage's Python function."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

from .config import ConfigError, as_set, check_config, load_config
from .io import write_yaml
from .runlock import launched_rank, run_lock
from .stages import commands

# views of the one registry (negrec.stages): subcommand -> (module, function, help)
COMMANDS = commands()
STAGES = {name: (c.module, c.func, c.help) for name, c in COMMANDS.items()}

# Stages that never use torch: no torch thread setup for them, so that they run (and import
# nothing heavy) where torch is absent, as a serving stack running `export-codebook --verify`.
TORCH_FREE = {name for name, c in COMMANDS.items() if c.torch_free}

# the config sections each subcommand reads (checked before it runs; `pipeline`: all of them)
SECTIONS_OF = {name: c.sections for name, c in COMMANDS.items()}


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_threads(value: str, where: str = "--threads") -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{where}: {value!r} is not a positive integer (the number of torch CPU threads)")
    return n


def _threads_arg(value: str) -> int:
    try:
        return positive_threads(value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="negrec", description="Predict what users will dislike over the next days.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_) in STAGES.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name == "data":
            sp.add_argument("action", nargs="?", choices=["prepare", "stats"], default="prepare")
        if name == "sft":
            sp.add_argument("--task", choices=["align", "next"], default="align")
        if name == "grpo":
            sp.add_argument("--plain", action="store_true",
                            help="plain (non-progressive) GRPO into <run>/grpo_plain: the ablation")
        if name == "evaluate":
            sp.add_argument("--predictions", default=None,
                            help="score only this file (user_id, cut_ts, rank, item_id[, score]), e.g. another tool's")
            sp.add_argument("--targets", default=None, help="targets file (default: <run>/eval/targets.parquet)")
            sp.add_argument("--log", default=None, help="interaction log (default: <run>/data/interactions.parquet)")
        if name == "export-codebook":
            sp.add_argument("--verify", action="store_true", help="reload with numpy only and check every item's SID")
            sp.add_argument("--out", default=None, help="export folder (default: <run>/export)")
        sp.add_argument("--config", "-c", default=None,
                        help="YAML config (default: the run folder's config.yaml when --run-dir has one, "
                             "else the embedded ML-100K defaults)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set data.main_horizon=3 (repeatable)")
        sp.add_argument("--run-dir", default=None, help="run folder (default: runs/<run.name or config stem>)")
        sp.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
        sp.add_argument("--threads", type=_threads_arg, default=None,
                        help="torch CPU threads (default: $NEGREC_THREADS, else on machines with <= 4 cores all of them "
                             "when the CPU is idle at the start and 1 when other jobs use it); "
                             "ignored by stages that do not use torch")
    return p


def resolve_run_dir(raw: dict, args) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    run = raw.get("run") or {}
    name = run.get("name") or (Path(args.config).stem if args.config else "default")
    return Path(run.get("root", "runs")) / name


def _cpu_times() -> tuple[int, int]:
    """(total, idle) CPU ticks since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals[:8]), idle  # guest time is already counted in user


def _busy_cores(window_s: float = 0.2, windows: int = 3) -> float | None:
    """Cores kept busy by other processes, from /proc/stat (None elsewhere): the median over a few
    short windows, so neither a burst in one window (a process exiting, the end of an install) nor
    a competing job's pause in one window decides. Called before a stage starts, so this process
    itself is idle meanwhile. One 0.3 s window once made the default run pick one thread and take
    twice as long."""
    import os
    import statistics
    import time

    try:
        marks = [_cpu_times()]
        for _ in range(windows):
            time.sleep(window_s)
            marks.append(_cpu_times())
    except (OSError, ValueError, IndexError):
        return None
    busy = [1.0 - (i1 - i0) / (t1 - t0) for (t0, i0), (t1, i1) in zip(marks, marks[1:]) if t1 > t0]
    return statistics.median(busy) * (os.cpu_count() or 1) if busy else None


def _auto_threads() -> tuple[int, str]:
    """Torch threads for a small CPU: all cores when nothing else runs, else one.

    Small models on a small shared CPU run far faster on one thread than on all when other jobs
    compete: on the 2-core CI machine an ML-100K RQ-VAE epoch took 2.6 s with torch's default
    threads (other jobs running) and 0.06 s with one. On the same machine idle, two threads ran
    next-negative SFT 1.8x faster (1.24 s/step vs 2.27) and tokenize 15.5 s -> 13.2 s."""
    import os

    cores = os.cpu_count() or 1
    if cores > 4:
        return 0, "torch default"  # 0: leave torch's own choice
    busy = _busy_cores()
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # a launch's processes on this machine
    if busy is not None and busy < 0.5:
        share = max(1, cores // ranks)
        return share, f"{share} (CPU idle{f', {ranks} ranks' if ranks > 1 else ''})"
    return 1, "1 (other jobs are using the CPU)" if busy is not None else "1"


def set_threads(n: int | None) -> None:
    """Set torch's CPU threads (imports torch: call it only for stages that use torch): `n`, else
    $NEGREC_THREADS, else `_auto_threads()` on machines with <= 4 cores."""
    import os

    if n is None and os.environ.get("NEGREC_THREADS"):
        n = int(os.environ["NEGREC_THREADS"])
    if n is None:
        n, why = _auto_threads()
        if n:
            # stdout: stderr is kept for the one line an error ends with
            print(f"torch threads: {why}; set NEGREC_THREADS or --threads to choose", flush=True)
    if n:
        import torch

        torch.set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Every error ends as one line on stderr and exit code 2 (a traceback
    only with --debug or NEGREC_DEBUG=1); Ctrl-C as one line and exit code 130."""
    import os

    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.command:
        _parser().print_help()
        return 0
    debug = getattr(args, "debug", False) or bool(os.environ.get("NEGREC_DEBUG"))
    caller_group, failed = _in_process_group(), True
    try:
        rc, failed = _run(args), False
        return rc
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"negrec {args.command}: interrupted; rerun to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error path ends the same way
        if debug:
            raise
        print(error_line(args.command, e), file=sys.stderr)
        return 2
    finally:
        if not caller_group:
            _leave_process_group(failed)


def _in_process_group() -> bool:
    dist = sys.modules.get("torch.distributed")  # never imports torch for a command that does not
    return dist is not None and dist.is_available() and dist.is_initialized()


def _leave_process_group(failed: bool = False) -> None:
    """Under a launcher, leave the torch.distributed group the command joined before the interpreter
    exits: a gloo group torn down at exit aborted a rank now and then ("terminate called without an
    active exception"). accelerate's cached state goes too, so a later command in the same
    process joins afresh. After a failure only a gloo group is left here: leaving an NCCL group
    can wait on peers still inside a collective, and a failed rank must exit, not hang."""
    if not _in_process_group():
        return
    dist = sys.modules["torch.distributed"]
    if failed and dist.get_backend() != "gloo":
        return
    dist.destroy_process_group()
    state = sys.modules.get("accelerate.state")
    if state is not None and hasattr(state.AcceleratorState, "_reset_state"):
        state.AcceleratorState._reset_state(reset_partial_state=True)


def error_line(command: str, e: BaseException) -> str:
    """One line: the message of a known error (it names file, line, field, value and rule), or the
    type of an unexpected one."""
    from .data.schema import DataError

    msg = str(e)
    if isinstance(e, OSError) and e.filename is not None and not isinstance(e, FileNotFoundError):
        msg = f"{e.filename}: {e.strerror or msg}"
    elif not isinstance(e, (ConfigError, DataError, ValueError, OSError)):
        msg = f"internal error {type(e).__name__}: {msg} (run with --debug for the traceback)"
    return f"negrec {command}: error: " + " ".join(msg.split())


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: the run folder (--run-dir or run.root/run.name) is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the run folder ({e.strerror or e})") from e


# one-shot options: kept in the saved config, every later run would repeat them (rerun, stop early)
ONE_SHOT = ("pipeline.force", "pipeline.stop_after")


def _write_config(run_dir: Path, raw: dict) -> None:
    """The config beside the outputs, as the user set it: the horizons filled in from `data` and the
    one-shot options left out (a later `--set data.main_horizon=3` must reach every section). Written
    only once every section passed validation and the run folder's lock is held."""
    try:
        write_yaml(run_dir / "config.yaml", as_set(raw, ONE_SHOT))
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the run folder ({e.strerror or e})") from e


def read_only(args, raw: dict, run_dir: Path) -> bool:
    """Commands that only read the run folder: no lock, no config.yaml. `status`; `data stats` of a
    prepared run; `report` when it is done (it then prints so and writes nothing);
    `evaluate --predictions` (outside files)."""
    if args.command == "status":
        return True
    if args.command == "data" and args.action == "stats":
        return (run_dir / "data" / "_DONE").exists()
    if args.command == "report":
        from .contract import is_done

        return is_done(raw, run_dir, "report")
    return args.command == "evaluate" and bool(args.predictions)


def _stage_kwargs(args) -> dict:
    kwargs = {}
    if args.command == "sft":
        kwargs["task"] = args.task
    if args.command == "grpo" and args.plain:
        kwargs["plain"] = True
    if args.command == "export-codebook":
        kwargs.update(out_dir=args.out, verify=args.verify)
    if args.command == "evaluate":
        kwargs.update(predictions=args.predictions, targets=args.targets, log=args.log)
    return kwargs


def _print_data_stats(run_dir: Path) -> None:
    from .data import Prepared, data_stats, format_stats

    prepared = Prepared.load(run_dir / "data")
    print(format_stats(data_stats(prepared), prepared.horizons))


def _run(args) -> int:
    import os

    if not args.config and args.run_dir and (Path(args.run_dir) / "config.yaml").exists():
        # the run's own config: what its stages' fingerprints were made from (negrec.contract)
        args.config = str(Path(args.run_dir) / "config.yaml")
    raw = load_config(args.config, args.overrides)
    notes = check_config(raw, SECTIONS_OF.get(args.command, []))
    if args.command != "pipeline":  # the pipeline shows its own notes
        for note in notes:
            print(f"negrec: note: {note}", file=sys.stderr)
    if os.environ.get("NEGREC_THREADS"):
        positive_threads(os.environ["NEGREC_THREADS"], "NEGREC_THREADS")
    run_dir = resolve_run_dir(raw, args)
    command = COMMANDS[args.command]
    fn = getattr(importlib.import_module(command.module), command.func)
    if read_only(args, raw, run_dir):
        if run_dir.exists() and not run_dir.is_dir():  # the same refusal a writing command gives
            raise ConfigError(f"{run_dir}: the run folder (--run-dir or run.root/run.name) is a file, not a folder")
        if args.command == "data":
            _print_data_stats(run_dir)
        else:
            fn(raw, run_dir, **_stage_kwargs(args))
        return 0
    # the sections --set changed too: config.yaml never records an override a later stage would refuse
    # (other sections come from the config file as given; checking them all would import torch here)
    check_config(raw, sorted({o.split("=", 1)[0].split(".")[0].strip() for o in args.overrides} - {"run"}))
    _prepare_run_dir(run_dir)
    # Under a launcher (torchrun, accelerate launch) the N ranks are one writer: rank 0 holds the
    # lock and writes config.yaml; the others would find the folder locked by their own rank 0.
    main_rank = launched_rank() == 0
    with run_lock(run_dir, " ".join(["negrec", *args.argv])[:200]) if main_rank else contextlib.nullcontext():
        if main_rank:
            _write_config(run_dir, raw)
        if args.command not in TORCH_FREE:
            set_threads(args.threads)
        fn(raw, run_dir, **_stage_kwargs(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
