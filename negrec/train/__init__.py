"""Training stages: supervised fine-tuning (alignment, next negative) and progressive GRPO."""
from negrec.train.sft import SFTStageConfig, alignment_accuracy, run_sft
from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, run_grpo, run_grpo_plain, train_progressive_grpo
