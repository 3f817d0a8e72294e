"""`run_rl(cfg) -> run dir`: set up one RL run (models, prompts, reward) and train it.

One run dir per run: config.yaml, metrics.jsonl, tensorboard/, checkpoints/step_<N>/
(policy, loadable by eval/export), <aux>/checkpoints/ (e.g. PPO's critic), tokenizer/,
report/. Running the same config on an existing run dir resumes from its newest
checkpoint (rl/checkpointing.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from echo_nemo import distributed as D
from echo_nemo import preempt
from echo_nemo.config import save_config
from echo_nemo.data.sources import load_problems
from echo_nemo.errors import UserError
from echo_nemo.rl import loop
from echo_nemo.rl.algorithm import Algorithm
from echo_nemo.rl.checkpointing import RunCheckpoints
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.evaluation import HeldOutEval
from echo_nemo.rl.expert_iteration import ExpertIteration
from echo_nemo.rl.grpo import GRPO
from echo_nemo.rl.models import TrainState, frozen_reference, load_policy
from echo_nemo.rl.ppo import PPO
from echo_nemo.rl.reinforce import Reinforce
from echo_nemo.rl.rollout import Sampler
from echo_nemo.rl.scoring import Scorer, reward_endpoint
from echo_nemo.rl.state import RLRun

ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO, "grpo": GRPO, "reinforce": Reinforce, "ei": ExpertIteration}


def _problems(name: str, path: str | None, limit: int | None) -> list:
    problems = load_problems(name, path=path, limit=limit)
    if not problems:
        raise UserError(f"data: prompt set {name!r} (path {path!r}) is empty")
    return problems


def _prepare_run_dir(cfg: RLConfig, run_dir: Path, tokenizer, tok_path: str | None) -> str | None:
    """config.yaml, report/ and a copy of the tokenizer (rank 0); returns the tokenizer path
    checkpoints record: the run dir's copy when there is one."""
    if D.is_main():
        save_config(cfg, run_dir)
        (run_dir / "report").mkdir(parents=True, exist_ok=True)
        if hasattr(tokenizer, "save") and not (run_dir / "tokenizer").exists():
            tokenizer.save(run_dir / "tokenizer")
    D.barrier()
    if (run_dir / "tokenizer").exists():
        return str((run_dir / "tokenizer").resolve())
    return tok_path


@contextlib.contextmanager
def open_run(
    cfg: RLConfig,
    *,
    reward_fn: Callable | None = None,
    problems: list | None = None,
    eval_problems: list | None = None,
    tokenizer=None,
) -> Iterator[RLRun]:
    """An RLRun ready to train (not yet resumed: `loop.train` resumes after the
    algorithm's set-up); closes it after.

    The keyword hooks let tests and notebooks inject a python reward function, prompt
    lists or a tokenizer instead of the configured ones.
    """
    cfg.validate()
    run_dir = Path(cfg.run_dir)
    cfg.parallel.build(seed=cfg.seed)
    model, mcfg, tokenizer, tok_path = load_policy(cfg, tokenizer)
    tok_path = _prepare_run_dir(cfg, run_dir, tokenizer, tok_path)
    train = problems if problems is not None else _problems(cfg.data.train, cfg.data.train_path,
                                                            cfg.data.train_limit)
    held_out = eval_problems
    if held_out is None:
        held_out = _problems(cfg.data.eval, cfg.data.eval_path, cfg.data.eval_limit) if cfg.data.eval else []
    total = cfg.total_steps(len(train))
    reference = frozen_reference(model, mcfg) if cfg.kl.coef > 0 else None
    kl_in_reward = cfg.kl.in_reward if cfg.kl.in_reward is not None else ALGORITHMS[cfg.algorithm].kl_in_reward
    with reward_endpoint(cfg, reward_fn) as url:
        scorer = Scorer(cfg, url, reward_fn)
        run = RLRun(
            cfg=cfg, run_dir=run_dir, tokenizer=tokenizer, model_config=mcfg, state=TrainState(model),
            total=total, kl_in_reward=kl_in_reward, sampler=Sampler(cfg, train, model, tokenizer),
            scorer=scorer, evaluator=HeldOutEval(cfg, held_out, scorer),
            checkpoints=RunCheckpoints(cfg, run_dir, total, mcfg, tok_path), reference=reference,
        )
        try:
            yield run
        finally:
            run.close()


def run_rl(cfg: RLConfig, **hooks) -> Path:
    """Run (or resume) RL as configured; returns the run dir. Hooks: see `open_run`.

    A stop signal (echo_nemo.preempt) ends it after the current step with a resume
    checkpoint and `preempt.Preempted`."""
    with open_run(cfg, **hooks) as run, preempt.catch_signals():
        hint = run.evaluator.hint()
        if hint and D.is_main():
            print(hint, flush=True)
        loop.train(run, ALGORITHMS[cfg.algorithm]())
    return Path(cfg.run_dir)
