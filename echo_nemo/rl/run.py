"""`run_rl(cfg) -> run dir`: set up the run (models, prompts, reward) and hand it to the algorithm.

One run dir per run: config.yaml, metrics.jsonl, tensorboard/, checkpoints/step_<N>/
(policy, loadable by eval/export), tokenizer/, report/. Running the same config on an
existing run dir resumes from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path

from echo_nemo.errors import UserError
from echo_nemo.rl.config import RLConfig

MODULES = {
    "ppo": "echo_nemo.rl.ppo",
    "grpo": "echo_nemo.rl.grpo",
    "reinforce": "echo_nemo.rl.reinforce",
    "ei": "echo_nemo.rl.expert_iteration",
}


def _load_policy(cfg: RLConfig, tokenizer=None):
    """(model, ModelConfig, tokenizer, tokenizer path) from model.init, or a fresh model."""
    import torch

    from echo_nemo.model.build import ModelConfig, build_gpt

    dtype = torch.bfloat16 if (cfg.model.bf16 and torch.cuda.is_available()) else torch.float32
    if cfg.model.init:
        from echo_nemo.checkpoint import (
            load_checkpoint,
            model_config_from_meta,
            read_meta,
            resolve_checkpoint,
            tokenizer_path_from_meta,
        )

        ckpt = resolve_checkpoint(cfg.model.init)
        meta = read_meta(ckpt)
        mcfg = model_config_from_meta(meta)
        model = build_gpt(mcfg, mcfg.vocab_size, params_dtype=dtype)
        load_checkpoint(ckpt, model, None, load_rank_extra=False)
        tok_path = cfg.model.tokenizer or tokenizer_path_from_meta(ckpt, meta)
    else:
        tok_path = cfg.model.tokenizer
        mcfg = None
        model = None
    if tokenizer is None:
        from echo_nemo.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_path)
        tok_path = str(tokenizer.path) if getattr(tokenizer, "path", None) else tok_path
    if model is None:
        mcfg = ModelConfig(scale=cfg.model.scale, vocab_size=tokenizer.vocab_size)
        torch.manual_seed(cfg.seed)  # the same fresh weights again on resume (the KL reference)
        model = build_gpt(mcfg, tokenizer.vocab_size, params_dtype=dtype)
    if mcfg.vocab_size and tokenizer.vocab_size > mcfg.vocab_size:
        raise UserError(
            f"tokenizer {tok_path!r} has {tokenizer.vocab_size} tokens but model {cfg.model.init!r} "
            f"was built for {mcfg.vocab_size}"
        )
    return model, mcfg, tokenizer, tok_path


def _problems(name: str, path: str | None, limit: int | None) -> list:
    from echo_nemo.data.sources import load_problems

    problems = load_problems(name, path=path, limit=limit)
    if not problems:
        raise UserError(f"data: prompt set {name!r} (path {path!r}) is empty")
    return problems


@contextlib.contextmanager
def open_run(
    cfg: RLConfig,
    *,
    reward_fn: Callable | None = None,
    problems: list | None = None,
    eval_problems: list | None = None,
    tokenizer=None,
) -> Iterator:
    """An RLRun ready to train (resumed if its run dir has a checkpoint); closes it after.

    The keyword hooks let tests and notebooks inject a python reward function, prompt
    lists or a tokenizer instead of the configured ones.
    """
    from echo_nemo import distributed as D
    from echo_nemo.config import save_config
    from echo_nemo.rl.common import RLRun, Scorer, reward_endpoint

    cfg.validate()
    run_dir = Path(cfg.run_dir)
    D.init_distributed(tp=cfg.model.tp, seed=cfg.seed)
    model, mcfg, tokenizer, tok_path = _load_policy(cfg, tokenizer)
    if D.is_main():
        save_config(cfg, run_dir)
        (run_dir / "report").mkdir(parents=True, exist_ok=True)
        if hasattr(tokenizer, "save") and not (run_dir / "tokenizer").exists():
            tokenizer.save(run_dir / "tokenizer")
    D.barrier()
    if (run_dir / "tokenizer").exists():
        tok_path = str((run_dir / "tokenizer").resolve())
    train = problems if problems is not None else _problems(cfg.data.train, cfg.data.train_path,
                                                            cfg.data.train_limit)
    held_out = eval_problems
    if held_out is None:
        held_out = _problems(cfg.data.eval, cfg.data.eval_path, cfg.data.eval_limit) if cfg.data.eval else []
    with reward_endpoint(cfg, reward_fn) as url:
        scorer = Scorer(cfg, url, reward_fn) if D.tp_rank() == 0 else None
        run = RLRun(cfg, run_dir, scorer=scorer, problems=train, eval_problems=held_out,
                    tokenizer=tokenizer, model=model, model_config=mcfg, tokenizer_path=tok_path)
        try:
            yield run
        finally:
            run.close()


def run_rl(cfg: RLConfig, **hooks) -> Path:
    """Run (or resume) RL as configured; returns the run dir. Hooks: see `open_run`."""
    module = importlib.import_module(MODULES[cfg.algorithm])
    with open_run(cfg, **hooks) as run:
        module.train(run)
    return Path(cfg.run_dir)
