"""The policy LM: SID vocabulary, context-discerning prompts, constrained SID decoding and the
evaluation of a policy (teacher-forced scores, alignment accuracy)."""
from negrec.llm.constrained import SidConstraint, constrained_beam_search, constrained_sample
from negrec.llm.evaluation import alignment_accuracy, completion_logprobs, score_items
from negrec.llm.model import ModelConfig, build_policy, load_policy, run_build_model, save_policy
from negrec.llm.prompts import PromptBuilder, PromptConfig

__all__ = ["SidConstraint", "constrained_beam_search", "constrained_sample", "score_items", "ModelConfig", "build_policy",
           "load_policy", "save_policy", "run_build_model", "PromptBuilder", "PromptConfig", "alignment_accuracy",
           "completion_logprobs"]
