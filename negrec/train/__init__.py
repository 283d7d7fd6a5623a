"""Training stages: supervised fine-tuning (alignment, next negative) and progressive GRPO."""
from negrec.train.sft import SFTStageConfig, run_sft
from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, run_grpo, train_progressive_grpo
