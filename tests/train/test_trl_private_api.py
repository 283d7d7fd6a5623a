"""What negrec relies on in TRL's private GRPOTrainer API (`TRLPrivateHooks.PRIVATE_METHODS`) still
exists in the installed TRL with the same parameters, and TRL still calls it: when TRL changes it,
this fails here, naming the method, instead of SID generation silently falling back to TRL's own."""
from __future__ import annotations

import inspect

import pytest
from trl import GRPOTrainer

from negrec.train.grpo_trainer import SidGRPOTrainer, TRLPrivateHooks


@pytest.mark.parametrize("name", sorted(TRLPrivateHooks.PRIVATE_METHODS))
def test_private_trl_methods_exist_with_the_same_parameters_and_are_called(name):
    params, caller = TRLPrivateHooks.PRIVATE_METHODS[name]
    method = getattr(GRPOTrainer, name, None)
    assert method is not None, f"TRL's GRPOTrainer no longer has {name}: port TRLPrivateHooks"
    assert tuple(inspect.signature(method).parameters) == params, \
        f"GRPOTrainer.{name}{inspect.signature(method)} changed: port TRLPrivateHooks"
    assert f"self.{name}(" in inspect.getsource(getattr(GRPOTrainer, caller)), \
        f"GRPOTrainer.{caller} no longer calls {name}: negrec's SID generation would be bypassed"


def test_only_the_adapter_overrides_private_trl_methods():
    """SidGRPOTrainer itself overrides no private GRPOTrainer method: they all go through the adapter."""
    private = {n for n in vars(SidGRPOTrainer) if n.startswith("_") and not n.startswith("__")}
    assert not private & set(dir(GRPOTrainer)), private & set(dir(GRPOTrainer))
    assert set(TRLPrivateHooks.PRIVATE_METHODS) <= set(vars(TRLPrivateHooks))


def test_the_distributed_backend_negrec_builds_is_there():
    from trl.distributed import DistributedBackend

    assert callable(getattr(DistributedBackend, "summon_full_params", None))
