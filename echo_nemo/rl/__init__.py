"""RL fine-tuning: rollouts, advantages, losses and the PPO / GRPO / REINFORCE / EI loops.

`run_rl(cfg)` runs (or resumes) one RL run in process and returns its run dir.
"""

from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.run import run_rl

__all__ = ["RLConfig", "run_rl"]
