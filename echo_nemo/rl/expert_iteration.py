"""Expert Iteration (as in the study): sample, keep what verifies, fine-tune, repeat.

    round n:  generate k samples per train question with the round-(n-1) model
              -> score -> keep reward = 1, drop duplicate (question, solution) pairs
              -> SFT on the kept set starting from the ORIGINAL base (or, with
                 `ei.online`, from the last round's model) -> the round-n model

One round is one "step" of the run: metrics, eval and a checkpoint per round, and a
resume continues with the next round.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from echo_nemo.model.generate import Rollout
from echo_nemo.rl.common import RLRun, build_experience, lr_lambda, micro_batches
from echo_nemo.rl.losses import masked_mean


def filter_and_dedupe(question_ids: list[str], completions: list[str], rewards: list[float]) -> tuple[list[int], int]:
    """Indices of the verified-correct samples (reward > 0.5), first of each (question, text) pair.

    Returns (kept indices in input order, number of correct duplicates dropped).
    """
    seen: set[tuple[str, str]] = set()
    keep: list[int] = []
    dupes = 0
    for i, (q, c, r) in enumerate(zip(question_ids, completions, rewards)):
        if r <= 0.5:
            continue
        if (q, c) in seen:
            dupes += 1
            continue
        seen.add((q, c))
        keep.append(i)
    return keep, dupes


def _subset(rollout: Rollout, idx: list[int]) -> Rollout:
    return Rollout([rollout.prompt_ids[i] for i in idx], [rollout.completion_ids[i] for i in idx],
                   [rollout.completions[i] for i in idx], [rollout.logprobs[i] for i in idx],
                   [rollout.finished[i] for i in idx], 0)


def _concat(parts: list[Rollout]) -> Rollout:
    out = Rollout([], [], [], [], [], 0)
    for r in parts:
        out.prompt_ids += r.prompt_ids
        out.completion_ids += r.completion_ids
        out.completions += r.completions
        out.logprobs += r.logprobs
        out.finished += r.finished
        out.num_tokens += r.num_tokens
    return out


def sample(run: RLRun, rnd: int) -> tuple[Rollout, list]:
    """k samples per question, in chunks of rollout.prompts_per_step questions."""
    cfg = run.cfg
    questions = run.problems[: cfg.ei.questions_per_round] if cfg.ei.questions_per_round else run.problems
    chunk = cfg.rollout.prompts_per_step
    parts = []
    for start in tqdm(range(0, len(questions), chunk), desc=f"ei round {rnd} sampling", leave=False):
        qs = questions[start : start + chunk]
        parts.append(run.generate(qs, rnd * 1_000_003 + start, samples=cfg.ei.samples_per_question,
                                  temperature=cfg.ei.temperature, top_p=cfg.ei.top_p))
    return _concat(parts), questions


def sft(run: RLRun, kept: Rollout) -> dict[str, float]:
    """Supervised fine-tuning on the kept samples: NLL of the completion tokens (EOS included)."""
    cfg = run.cfg
    if not kept.completion_ids:
        return {"sft/loss": 0.0, "sft/steps": 0}
    pad = run.tokenizer.pad_id if run.tokenizer.pad_id is not None else run.tokenizer.eos_id
    exp = build_experience(kept, [0.0] * len(kept.completion_ids), pad, run.device)
    bs = cfg.ei.sft_batch_size
    steps = cfg.ei.sft_epochs * math.ceil(len(exp) / bs)
    opt = torch.optim.AdamW(run.model.parameters(), lr=cfg.ei.sft_lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    o = cfg.optim
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, o.warmup_frac, o.min_lr_ratio, o.decay_frac))
    gen = torch.Generator().manual_seed(cfg.seed)
    run.model.train()
    losses = []
    from echo_nemo.rl.common import sequence_logprobs

    for _epoch in range(cfg.ei.sft_epochs):
        order = torch.randperm(len(exp), generator=gen).to(run.device)
        for b in range(0, len(exp), bs):
            idx = order[b : b + bs]
            total = exp.mask[idx].sum().clamp(min=1)
            batch_loss = 0.0
            for sl in micro_batches(len(idx), cfg.optim.micro_batch_size):
                rows = idx[sl]
                lp, _ = sequence_logprobs(run.model, exp.tokens[rows], 1.0, run.tokenizer.vocab_size)
                mask = exp.mask[rows]
                loss = -masked_mean(lp, mask) * (mask.sum() / total)
                loss.backward()
                batch_loss += float(loss.detach())
            run.clip_and_step(run.model, opt, sched)
            losses.append(batch_loss)
    return {"sft/loss": losses[-1], "sft/loss_first": losses[0], "sft/steps": float(len(losses))}


def train(run: RLRun) -> None:
    cfg = run.cfg
    base = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in run.model.state_dict().items()}
    run.total = cfg.ei.rounds
    from echo_nemo.rl.common import checkpoint_steps

    run.ckpt_steps = checkpoint_steps(run.total, cfg.num_checkpoints)
    run.resume()
    for rnd in run.steps():
        with run.timer("generate"):
            rollout, questions = sample(run, rnd)
        with run.timer("score"):
            rewards, formats = run.score(rollout, questions, samples=cfg.ei.samples_per_question)
        with run.timer("filter"):
            qids = [q.id for q in questions for _ in range(cfg.ei.samples_per_question)]
            keep, dupes = filter_and_dedupe(qids, rollout.completions, rewards)
            kept = _subset(rollout, keep)
        metrics = run.step_metrics(rollout, rewards, formats, None, None)
        with run.timer("update"):
            if not cfg.ei.online:
                run.model.load_state_dict(base)
            metrics.update(sft(run, kept))
        metrics.update({"ei/kept": float(len(keep)), "ei/duplicates": float(dupes),
                        "ei/questions_solved": float(len({qids[i] for i in keep})) / max(1, len(questions))})
        run.finish_step(rnd, metrics)
