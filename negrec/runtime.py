"""Where torch runs: the one device rule every stage uses (imports torch only when called)."""
from __future__ import annotations


def resolve_device(name=None):
    """`torch.device` for a config value: "auto" or None = CUDA when available, else CPU; any other
    name ("cpu", "cuda", "cuda:1", a torch.device) as given."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
