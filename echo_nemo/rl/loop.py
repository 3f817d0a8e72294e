"""The RL step, written once for every algorithm: `train(run, algorithm)`.

    set-up:    the algorithm's models -> resume -> held-out eval at step 0 (with eval_every)
    per step:  sample -> score -> experience (log-probs; KL penalty into the reward)
               -> the algorithm's advantages -> update -> metrics
               -> held-out eval when due -> checkpoint when due -> log
               -> stop here if a rank got SIGTERM/SIGUSR1 (saved: echo_nemo.preempt)

Each phase runs under `run.timer(name)`, so `time/<name>_s` is logged for every step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from echo_nemo import distributed as D
from echo_nemo import parallel as P
from echo_nemo import preempt
from echo_nemo.metrics import MetricsLogger
from echo_nemo.model.generate import Rollout
from echo_nemo.reward.format_stats import format_metrics
from echo_nemo.rl.algorithm import Algorithm
from echo_nemo.rl.experience import Experience
from echo_nemo.rl.losses import masked_mean
from echo_nemo.rl.state import RLRun


def train(run: RLRun, algo: Algorithm) -> None:
    """Run (or resume) the configured number of steps."""
    for step in start(run, algo):
        with run.timer("generate"):
            batch = algo.sample(run, step)
        with run.timer("score"):
            rewards, formats = run.scorer(batch.rollout.completions, batch.truths())
        with run.timer("logprobs"):
            exp = algo.experience(run, batch, rewards)
            add_kl_penalty(run, exp)
        with run.timer("advantages"):
            algo.advantages(run, exp)
        with run.timer("update"):
            stats, entropy = algo.update(run, exp, step)
        metrics = step_metrics(run, batch.rollout, rewards, formats, exp, entropy)
        metrics.update(exp.stats)
        metrics.update(stats)
        stop = finish_step(run, step, metrics)  # evaluates, saves (also when stopping), logs
        if stop:
            raise preempt.Preempted(stop, step, run.checkpoints.step_dir(step))


def start(run: RLRun, algo: Algorithm) -> Iterator[int]:
    """Set up the algorithm, resume, log the step-0 eval; then the 1-based steps still to
    run (after a resume, from the one after the checkpoint), each with fresh timers.

    A run with periodic evals (eval_every > 0) logs a step-0 row first: the held-out eval
    of the starting policy, so an accuracy curve has its baseline (the study's "largest
    gain" is often the first interval)."""
    algo.setup(run)
    first = run.checkpoints.resume(run.state) + 1
    run.logger = MetricsLogger(run.run_dir, enabled=D.is_main())
    if first == 1 and run.evaluator.due(0, run.total):
        run.timer.reset()
        with run.timer("eval"):
            metrics = run.evaluator(run.model, run.tokenizer)
        run.logger.log(0, {**metrics, **run.timer.times})
    bar = tqdm(range(first, run.total + 1), desc=f"rl {run.cfg.algorithm}",
               initial=first - 1, total=run.total, disable=not D.is_main())
    for step in bar:
        run.timer.reset()
        yield step


def add_kl_penalty(run: RLRun, exp: Experience) -> None:
    """k1 per token when the KL term goes into the reward: the penalty the sample's reward
    pays (algorithms read it through exp.sequence_rewards() or exp.token_rewards())."""
    if run.kl_in_reward and exp.ref_logprobs is not None:
        exp.kl_penalty = run.cfg.kl.coef * (exp.old_logprobs - exp.ref_logprobs) * exp.mask


def step_metrics(run: RLRun, rollout: Rollout, rewards: list[float], formats: list[str], exp: Experience,
                 entropy: torch.Tensor | None) -> dict[str, float]:
    """reward/mean, format shares/acc, kl/mean, entropy/mean, response length, tokens/s,
    averaged over DP ranks."""
    m: dict[str, float] = {"reward/mean": float(np.mean(rewards)) if rewards else 0.0}
    m.update(format_metrics("", formats, rewards))
    lens = [len(c) for c in rollout.completion_ids]
    m["response_length/mean"] = float(np.mean(lens)) if lens else 0.0
    m["response_length/max"] = float(max(lens)) if lens else 0.0
    m["response/finished_share"] = float(np.mean(rollout.finished)) if rollout.finished else 0.0
    if exp.ref_logprobs is not None:
        m["kl/mean"] = float(masked_mean(exp.old_logprobs - exp.ref_logprobs, exp.mask))  # k1
    else:
        m["kl/mean"] = 0.0
    if entropy is not None:
        m["entropy/mean"] = float(masked_mean(entropy, exp.mask))
    gen = run.timer.times.get("time/generate_s", 0.0)
    m["throughput/tokens_per_s"] = rollout.num_tokens / gen if gen > 0 else 0.0
    m["throughput/rollout_tokens"] = float(rollout.num_tokens)
    return P.mean_over_dp(m)


def finish_step(run: RLRun, step: int, metrics: dict[str, float]) -> str | None:
    """Run the held-out eval when due, checkpoint when due or when a stop signal reached
    any rank, log the step with its timers. Returns that signal's name (every rank the same)."""
    if run.evaluator.due(step, run.total):
        with run.timer("eval"):
            metrics.update(run.evaluator(run.model, run.tokenizer))
    stop = preempt.stop_requested()
    if run.checkpoints.due(step, stop):
        with run.timer("checkpoint"):
            run.checkpoints.save(step, run.state)
    metrics.update(run.timer.times)
    run.logger.log(step, metrics)
    return stop if step < run.total else None  # the last step ends the run anyway
