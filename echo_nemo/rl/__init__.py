"""RL fine-tuning: the step loop (loop.py), the algorithms (ppo, grpo, reinforce,
expert_iteration: subclasses of algorithm.Algorithm), advantages and losses (pure).

`echo_nemo.rl.run.run_rl(cfg)` runs (or resumes) one RL run in process and returns its
run dir. Nothing is imported here, so reading an RL recipe (rl.config) stays light.
"""
