"""The policy LM: SID vocabulary, context-discerning prompts, constrained SID decoding and the
evaluation of a policy (teacher-forced scores, alignment accuracy).

The names below load on first use (PEP 562), so that `negrec.llm.prompts` (torch-free: prompt
settings and text) can be imported where torch is absent, e.g. by the config check of `negrec evaluate`."""
from __future__ import annotations

import importlib

_HOME = {"SidConstraint": "constrained", "constrained_beam_search": "constrained", "constrained_sample": "constrained",
         "alignment_accuracy": "evaluation", "completion_logprobs": "evaluation", "score_items": "evaluation",
         "ModelConfig": "model", "build_policy": "model", "load_policy": "model", "run_build_model": "model",
         "save_policy": "model", "PromptBuilder": "prompts", "PromptConfig": "prompts"}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"negrec.llm.{_HOME[name]}"), name)
    raise AttributeError(f"module 'negrec.llm' has no attribute {name!r}")
