"""RL fine-tuning. Modules, lowest first (each imports only those above it):

    config       RLConfig, the recipe schema
    losses, advantages   pure functions
    experience   a scored rollout as training tensors; log-prob forwards
    models       the policy, its frozen reference, TrainState (what a checkpoint holds)
    rollout      the step's prompts and sampling them (Sampler, Batch)
    scoring      rewards and formats (Scorer), the local reward server
    evaluation   the held-out greedy eval (HeldOutEval)
    checkpointing  when and what to save, resuming (RunCheckpoints)
    state        RLRun: the above, grouped, with the phase timer
    policy       old/ref log-probs and the shared clipped policy-gradient update
    algorithm    the Algorithm base class; ppo, grpo, reinforce, expert_iteration subclass it
    loop         the RL step, written once: train(run, algorithm)
    run          open_run / run_rl: build an RLRun from a config and train it

`echo_nemo.rl.run.run_rl(cfg)` runs (or resumes) one RL run in process and returns its
run dir. Nothing is imported here, so reading an RL recipe (rl.config) stays light.
"""
