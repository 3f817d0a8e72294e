"""Expert Iteration (as in the study): sample, keep what verifies, fine-tune, repeat.

    round n:  generate k samples per train question with the round-(n-1) model
              -> score -> keep reward = 1, drop duplicate (question, solution) pairs
              -> SFT on the kept set starting from the ORIGINAL base (or, with
                 `ei.online`, from the last round's model) -> the round-n model

One round is one step of the loop (rl/loop.py): metrics, eval and a checkpoint per
round, and a resume continues with the next round. Its phases: `sample` (every train
question, in chunks), `experience` (the filter: only kept samples become training
tensors), `update` (SFT with its own AdamW per round). No advantages, no KL.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from echo_nemo import distributed as D
from echo_nemo.model.generate import Rollout
from echo_nemo.optim import optimizer_step
from echo_nemo.rl.algorithm import Algorithm
from echo_nemo.rl.experience import Experience, build_experience, micro_batches, sequence_logprobs
from echo_nemo.rl.losses import masked_mean
from echo_nemo.rl.rollout import Batch
from echo_nemo.rl.state import RLRun
from echo_nemo.speed import between_steps


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


class ExpertIteration(Algorithm):
    def setup(self, run: RLRun) -> None:
        # no policy optimizer: each round's SFT builds its own; keep the base weights
        self.base = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                     for k, v in run.model.state_dict().items()}

    def sample(self, run: RLRun, rnd: int) -> Batch:
        """k samples per question, in chunks of rollout.prompts_per_step questions."""
        cfg = run.cfg
        questions = run.sampler.problems
        questions = questions[: cfg.ei.questions_per_round] if cfg.ei.questions_per_round else questions
        chunk = cfg.rollout.prompts_per_step
        parts = []
        for start in tqdm(range(0, len(questions), chunk), desc=f"ei round {rnd} sampling", leave=False,
                          disable=not D.is_main()):
            qs = questions[start : start + chunk]
            between_steps()  # a round is one long phase
            parts.append(run.sampler.generate(qs, rnd * 1_000_003 + start, samples=cfg.ei.samples_per_question,
                                              sampling=cfg.ei.sampling))
        return Batch(questions, _concat(parts), cfg.ei.samples_per_question)

    def experience(self, run: RLRun, batch: Batch, rewards: list[float]) -> Experience:
        """Training tensors of the kept samples only (verified, deduplicated)."""
        qids = [q.id for q in batch.problems for _ in range(batch.samples)]
        keep, dupes = filter_and_dedupe(qids, batch.rollout.completions, rewards)
        kept = _subset(batch.rollout, keep)
        exp = build_experience(kept, [rewards[i] for i in keep], run.pad_id, run.device) if keep else None
        stats = {"ei/kept": float(len(keep)), "ei/duplicates": float(dupes),
                 "ei/questions_solved": float(len({qids[i] for i in keep})) / max(1, len(batch.problems))}
        if exp is None:  # nothing verified: an empty experience, SFT is skipped
            exp = Experience(torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 0)), torch.zeros(0))
        exp.stats.update(stats)
        return exp

    def advantages(self, run: RLRun, exp: Experience) -> None:
        """Nothing to weigh: every kept sample is a target of the SFT."""

    def update(self, run: RLRun, exp: Experience, step: int):
        if not run.cfg.ei.online:
            run.model.load_state_dict(self.base)
        return sft(run, exp), None


def sft(run: RLRun, exp: Experience) -> dict[str, float]:
    """Supervised fine-tuning on the kept samples: NLL of the completion tokens (EOS included)."""
    cfg = run.cfg
    if len(exp) == 0:
        return {"sft/loss": 0.0, "sft/steps": 0}
    bs = cfg.ei.sft_batch_size
    steps = cfg.ei.sft_epochs * math.ceil(len(exp) / bs)
    opt, sched = cfg.optim.build(run.model, steps, lr=cfg.ei.sft_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    run.model.train()
    losses = []
    bar = tqdm(total=steps, desc="ei sft", leave=False, disable=not D.is_main())
    for _epoch in range(cfg.ei.sft_epochs):
        order = torch.randperm(len(exp), generator=gen).to(run.device)
        for b in range(0, len(exp), bs):
            between_steps()
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
            optimizer_step(run.model.parameters(), opt, cfg.optim.grad_clip, sched)
            losses.append(batch_loss)
            bar.update(1)
    bar.close()
    return {"sft/loss": losses[-1], "sft/loss_first": losses[0], "sft/steps": float(len(losses))}
