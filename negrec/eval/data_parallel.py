"""Data-parallel predict: under a launcher (`accelerate launch`, `torchrun`) with N processes each
ranks a contiguous share of the users on its own device, and rank 0 merges the shares in order.

Shares are cut at multiples of the beam-search batch size, so every process runs exactly the
batches one process would run for those rows: the merged rankings equal the one-process ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runlock import launched_world
from ..runtime import launch_state, rank_span


@dataclass
class Shard:
    rank: int
    world: int
    device: object

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def span(self, n: int, batch_size: int) -> tuple[int, int]:
        """[start, end) of this process's rows among n: whole batches, spread as evenly as they go."""
        return rank_span(n, batch_size, self.rank, self.world)

    def gather(self, part: list) -> list | None:
        """Every process's `part`, concatenated in rank order, on rank 0 (None elsewhere)."""
        from accelerate.utils import gather_object

        merged = gather_object([part])  # a collective: every rank joins
        return [x for p in merged for x in p] if self.is_main else None


def current_shard() -> Shard | None:
    """This process's shard under a launcher with more than one process; None in a plain run."""
    if launched_world() <= 1:
        return None
    state = launch_state()
    return Shard(state.process_index, state.num_processes, state.device)


def gather_scores(shard: Shard, rows: np.ndarray, scores: np.ndarray | None, n: int) -> np.ndarray | None:
    """Candidate scores computed for positions `rows` on each process, placed into one array of n on rank 0."""
    if scores is None:
        return None
    pairs = shard.gather(list(zip(rows.tolist(), scores.tolist())))
    if pairs is None:
        return None
    full = np.full(n, np.nan)
    for i, s in pairs:
        full[i] = s
    return full
