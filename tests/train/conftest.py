"""Fixtures shared by the training tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    # 2 OpenMP threads on a 2-core machine shared with other jobs can be 20x slower than 1
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
