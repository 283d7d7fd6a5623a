"""The processes of a launch (torchrun, accelerate launch) training one model together: the timeline
loop's data parallelism.

Each rank computes its share of every batch (windows rank, rank + world, ...) divided by the weight
of the whole batch, and one all-reduce sums the ranks' gradients: the step is the one-process step
(up to the order of float sums), so the ranks' weights stay equal, and the batch order, schedule and
epoch selection are one process's. Validation users are split in whole beam-search batches and their
recalls gathered on every rank, which then selects the same epoch; rank 0 alone writes (checkpoints,
TensorBoard, the stage folder). For several GPUs; on a 2-core CPU two ranks of one thread took the
default SFT's epochs in the time one process of two threads takes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from negrec.runlock import launched_world
from negrec.runtime import launch_state, rank_span


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This rank's windows of a batch."""
        return idx[self.rank::self.world]

    def span(self, n: int, batch_size: int) -> slice:
        """This rank's rows of n, in whole batches (`negrec.runtime.rank_span`)."""
        return slice(*rank_span(n, batch_size, self.rank, self.world))

    def sum_grads(self, params: list, loss: torch.Tensor) -> float:
        """Sum every rank's gradients into each rank's (a rank with no share of the batch adds
        zeros) and return the summed loss, in one all-reduce."""
        import torch.distributed as dist

        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
                         + [loss.detach().reshape(1).float().to(params[0].device)])
        dist.all_reduce(flat)
        start = 0
        for p in params:
            p.grad = flat[start:start + p.numel()].view_as(p).to(p.dtype)
            start += p.numel()
        return float(flat[-1])

    def gather(self, part: np.ndarray) -> np.ndarray:
        """Every rank's `part`, concatenated in rank order, on every rank."""
        if self.world == 1:
            return part
        import torch.distributed as dist

        parts = [None] * self.world
        dist.all_gather_object(parts, part)
        return np.concatenate(parts)


def join_launch() -> None:
    """Under a launcher, join it before a model loads: "cuda" then means this rank's GPU."""
    if launched_world() > 1:
        launch_state()


def launch_ranks(model) -> Ranks:
    """The ranks of this launch, the process group joined and `model` on this rank's device; one
    rank without a launcher."""
    if launched_world() <= 1:
        return Ranks()
    state = launch_state()
    model.to(state.device)
    return Ranks(state.process_index, state.num_processes)
