"""Training stages: supervised fine-tuning (alignment, next negative) and progressive GRPO."""
from negrec.train.sft import SFTAlignConfig, SFTNextConfig, SFTStageConfig, run_sft, sft_config
from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, run_grpo, train_progressive_grpo
