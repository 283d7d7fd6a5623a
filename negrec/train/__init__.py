"""Training stages on TRL: SFT (item alignment, next negative) and progressive GRPO."""
from negrec.train.grpo import GRPOStageConfig, ProgressiveGRPOConfig, run_grpo, train_progressive_grpo
