"""Where torch runs: the one device rule every stage uses (imports torch only when called)."""
from __future__ import annotations


def resolve_device(name=None):
    """`torch.device` for a config value: "auto" or None = CUDA when available, else CPU; any other
    name ("cpu", "cuda", "cuda:1", a torch.device) as given."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def launch_state():
    """accelerate's state of this process's launch (torchrun, accelerate launch): joins its process
    group and, on GPUs, makes the rank's own GPU current. Call it only under a launcher."""
    import torch
    from accelerate import PartialState

    # cpu=True where no GPU is: else accelerate takes a CPU-only launch for a single process
    return PartialState(cpu=not torch.cuda.is_available())


def rank_span(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank's rows among n, in whole batches of batch_size spread as evenly as they go:
    each rank runs the very batches one process would, so the gathered results equal its."""
    batches = -(-n // max(batch_size, 1))
    first, last = (batches * rank) // world, (batches * (rank + 1)) // world
    return min(n, first * batch_size), min(n, last * batch_size)
