"""What every RL algorithm shares: setup, the generate and score phases, sequence
log-probabilities, step metrics (formats, KL, entropy, timers), greedy evaluation and
log-spaced checkpoints with resume.

An algorithm module (grpo.py, ppo.py, ...) owns only its advantages and update: its
`train(run)` loops over `run.steps()` and calls the phases here, each under
`run.timer(name)` so `time/<name>_s` is logged for every step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from echo_nemo.data.sources import benchmark_name
from echo_nemo.model.generate import Rollout, gather_logits, generate
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.losses import entropy_from_logits, masked_mean, token_logprobs

FORMATS = ("tinygsm", "llm_code", "text", "other")


# ----------------------------------------------------------------------------- pure helpers
def checkpoint_steps(total: int, num: int = 15) -> list[int]:
    """The study's log-spaced checkpoint steps: ceil(logspace(-2.1, 0, num) * total), unique, >= 1.

    The last step is always among them (num <= 1 keeps only it): a run's result is saved.
    """
    if num <= 1:
        return [total]
    fracs = np.logspace(-2.1, 0, num)
    return sorted({max(1, min(total, math.ceil(f * total - 1e-9))) for f in fracs} | {total})


def format_stats(formats: list[str], rewards: list[float], prefix: str = "") -> dict[str, float]:
    """format/<name>/share (share of samples) and format/<name>/acc (mean reward within it).

    acc is NaN-free: a format with no samples reports acc 0.0 and share 0.0.
    """
    n = max(len(formats), 1)
    out: dict[str, float] = {}
    for name in FORMATS:
        rs = [r for f, r in zip(formats, rewards) if f == name]
        out[f"{prefix}format/{name}/share"] = len(rs) / n
        out[f"{prefix}format/{name}/acc"] = float(sum(rs) / len(rs)) if rs else 0.0
    return out


@dataclass
class Experience:
    """Right-padded prompt+completion sequences and per-label-position tensors.

    Position j of the [n, L-1] tensors scores tokens[:, j + 1]; `mask` is 1 where that
    token is a completion token.
    """

    tokens: torch.Tensor  # [n, L]
    mask: torch.Tensor  # [n, L-1] float
    rewards: torch.Tensor  # [n] sequence rewards
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None  # [n, L-1]
    returns: torch.Tensor | None = None
    values: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.size(0)


def build_experience(rollout: Rollout, rewards: list[float], pad_id: int, device: torch.device) -> Experience:
    lengths = [len(p) + len(c) for p, c in zip(rollout.prompt_ids, rollout.completion_ids)]
    n, seq = len(lengths), max(lengths)
    tokens = torch.full((n, seq), pad_id, dtype=torch.long)
    mask = torch.zeros((n, seq - 1), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(rollout.prompt_ids, rollout.completion_ids)):
        tokens[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[i, len(p) - 1 : len(p) - 1 + len(c)] = 1.0
    return Experience(tokens.to(device), mask.to(device), torch.tensor(rewards, dtype=torch.float32, device=device))


def sequence_logprobs(
    model, tokens: torch.Tensor, temperature: float = 1.0, vocab_size: int | None = None, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(tokens[:, j+1] | tokens[:, :j+1]) for every j: [n, L-1], and optionally the entropy.

    Logits are divided by the sampling temperature so the ratio compares the same
    distribution the rollout sampled from. Vocabulary padding entries are dropped.
    """
    from echo_nemo.model.build import causal_forward

    logits = gather_logits(causal_forward(model, tokens))[:, :-1]
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    logits = logits.float() / temperature
    lp = token_logprobs(logits, tokens[:, 1:])
    ent = entropy_from_logits(logits) if with_entropy else None
    return lp, ent


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def length_batches(mask: torch.Tensor, size: int) -> list[tuple[torch.Tensor, int]]:
    """Micro-batches of rows of similar length, each cut to its longest row: [(rows, width)].

    `tokens[rows, :width]` holds every real token of those rows and `mask[rows, :width - 1]`
    every completion label. Rollout lengths vary several-fold (prompts up to
    max_prompt_tokens, completions from a few tokens to max_new_tokens), so padding every
    row to the batch maximum wastes a large share of the forward and backward passes;
    causal attention makes the cut exact (no position sees the padding after it).
    """
    n = mask.size(0)
    if n == 0:
        return []
    # a row's length: its last completion label position + 2 (labels are shifted by one)
    ends = (mask > 0).cumsum(-1).argmax(-1) + 2
    order = torch.argsort(ends, stable=True)
    out = []
    for i in range(0, n, size):
        rows = order[i : i + size]
        out.append((rows, min(int(ends[rows].max()), mask.size(1) + 1)))
    return out


def lr_lambda(total_steps: int, warmup_frac: float, min_ratio: float,
              decay_frac: float = 1.0) -> Callable[[int], float]:
    """Pretraining's schedule (`train.optim.lr_factor`) with its warmup and decay given as
    fractions of the run: warmup, constant, cosine to min_ratio over the last decay_frac."""
    from echo_nemo.train.optim import lr_factor

    warmup = max(0, int(round(warmup_frac * total_steps)))
    decay = int(round(decay_frac * total_steps))
    return lambda step: lr_factor(step, warmup, total_steps, min_ratio, decay)


# ----------------------------------------------------------------------------- reward
class Scorer:
    """Scores completions against ground truths: in process, over HTTP, or with a python function.

    A custom `reward_fn(completions, ground_truths)` may return floats or Score-like
    objects (with .reward and .format); floats are recorded with format 'other'.
    """

    def __init__(self, cfg: RLConfig, url: str | None, reward_fn: Callable | None = None):
        self.fn = reward_fn
        self.client = None
        if reward_fn is None and not cfg.reward.in_process:
            from echo_nemo.reward.client import RewardClient

            self.client = RewardClient(url, timeout=cfg.reward.timeout_s)

    def __call__(self, completions: list[str], truths: list[str]) -> tuple[list[float], list[str]]:
        if self.fn is not None:
            scores = self.fn(completions, truths)
        elif self.client is not None:
            scores = self.client.score(completions, truths)
        else:
            from echo_nemo.reward import score

            scores = score(completions, truths)
        rewards = [float(getattr(s, "reward", s)) for s in scores]
        formats = [getattr(s, "format", "other") or "other" for s in scores]
        return rewards, formats


@contextlib.contextmanager
def reward_endpoint(cfg: RLConfig, reward_fn: Callable | None) -> Iterator[str | None]:
    """The reward server URL: the configured one, or a local server started (and stopped) here."""
    if reward_fn is not None or cfg.reward.in_process or cfg.reward.url:
        yield cfg.reward.url
        return
    from echo_nemo.reward.client import local_reward_server

    with local_reward_server(workers=cfg.reward.workers) as url:
        yield url


def clone_model(model, model_config):
    """A second GPTModel with the same weights (deepcopy cannot copy megatron's process groups)."""
    from echo_nemo.model.build import build_gpt

    dtype = next(model.parameters()).dtype
    with torch.random.fork_rng(devices=[]):  # building draws init weights: keep the run's RNG
        twin = build_gpt(model_config, model_config.vocab_size, params_dtype=dtype)
    twin.load_state_dict(model.state_dict())
    return twin


# ----------------------------------------------------------------------------- the run
class RLRun:
    """Everything one RL run holds: models, tokenizer, prompts, scorer, logger, timers.

    Built by `open_run` (which also resumes); the algorithm modules drive it.
    """

    def __init__(self, cfg: RLConfig, run_dir: Path, *, scorer: Scorer, problems: list, eval_problems: list,
                 tokenizer, model, model_config, tokenizer_path: str | None):

        self.cfg = cfg
        self.run_dir = run_dir
        self.scorer = scorer
        self.problems = problems
        self.eval_problems = eval_problems
        self.tokenizer = tokenizer
        self.tokenizer_path = tokenizer_path
        self.model = model
        self.model_config = model_config
        self.device = next(model.parameters()).device
        self.total = cfg.total_steps(len(problems))
        self.ckpt_steps = checkpoint_steps(self.total, cfg.num_checkpoints)
        self.logger = None  # opened by steps(), after a resume has truncated metrics.jsonl
        self.times: dict[str, float] = {}
        self.start_step = 0
        self.algo_state: dict[str, Any] = {}  # small algorithm state saved with checkpoints
        self.extra_models: dict[str, tuple[Any, Any]] = {}  # name -> (module, optimizer), e.g. the critic
        self.opt: torch.optim.Optimizer | None = None
        self.sched: Any = None
        self.reference = None
        if cfg.kl.coef > 0:  # a frozen copy of the starting policy
            self.reference = clone_model(model, model_config).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)

    # --- timers and steps
    @contextlib.contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{phase}_s"] = self.times.get(f"time/{phase}_s", 0.0) + time.perf_counter() - t0

    def steps(self) -> Iterator[int]:
        """1-based step numbers still to run (after a resume, from the one after the checkpoint)."""
        from tqdm import tqdm

        from echo_nemo import distributed as D

        self.logger = _logger(self.run_dir, D.is_main())
        bar = tqdm(range(self.start_step + 1, self.total + 1), desc=f"rl {self.cfg.algorithm}",
                   initial=self.start_step, total=self.total, disable=not D.is_main())
        for step in bar:
            self.times = {}
            yield step

    def prompts_for_step(self, step: int) -> list:
        """This DP rank's prompts for `step`: a seeded shuffle per epoch, deterministic for resume."""
        from echo_nemo import distributed as D

        per = self.cfg.rollout.prompts_per_step
        n = len(self.problems)
        out = []
        for k in range((step - 1) * per, step * per):
            epoch, i = divmod(k, n)
            order = np.random.default_rng(self.cfg.seed + epoch).permutation(n)
            out.append(self.problems[int(order[i])])
        return out[D.dp_rank() :: D.dp_size()]

    # --- phases shared by the algorithms
    def generate(self, problems: list, step: int, samples: int | None = None, temperature: float | None = None,
                 top_p: float | None = None) -> Rollout:
        """`samples` completions per problem, contiguous per problem (a GRPO group)."""
        r = self.cfg.rollout
        k = samples or r.samples_per_prompt
        prompts = [p.prompt for p in problems for _ in range(k)]
        from echo_nemo import distributed as D

        return generate(
            self.model, self.tokenizer, prompts, max_new_tokens=r.max_new_tokens,
            temperature=temperature or r.temperature, top_p=top_p or r.top_p, top_k=r.top_k,
            seed=self.cfg.seed * 100_003 + step * 1_009 + D.dp_rank(), batch_size=r.batch_size,
            max_prompt_tokens=r.max_prompt_tokens,
        )

    def score(self, rollout: Rollout, problems: list, samples: int | None = None) -> tuple[list[float], list[str]]:
        """Rewards and formats; only TP rank 0 asks the scorer, the others receive its answer."""
        from echo_nemo import distributed as D

        k = samples or self.cfg.rollout.samples_per_prompt
        truths = [p.answer for p in problems for _ in range(k)]
        result = self.scorer(rollout.completions, truths) if D.tp_rank() == 0 else None
        return _broadcast_tp(result)

    def logprobs(self, model, exp: Experience, with_entropy: bool = False, grad: bool = False):
        """Per-label log-probs (and entropy) over micro-batches, no grad unless asked."""
        lps = torch.zeros_like(exp.mask)
        ents = torch.zeros_like(exp.mask) if with_entropy else None
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            for rows, w in length_batches(exp.mask, self.cfg.optim.micro_batch_size):
                lp, ent = sequence_logprobs(model, exp.tokens[rows, :w], self.cfg.rollout.temperature,
                                            self.tokenizer.vocab_size, with_entropy)
                lps[rows, : w - 1] = lp
                if ents is not None:
                    ents[rows, : w - 1] = ent
        return lps, ents

    def make_experience(self, rollout: Rollout, rewards: list[float]) -> Experience:
        """Experience with old (and reference) log-probs computed by a training-mode forward.

        With one update epoch and no reference model the old log-probs are those of the
        update's own forward pass before its step (the ratio is exactly 1), so this
        separate pass is skipped: `policy_update` takes them from that forward.
        """
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id
        exp = build_experience(rollout, rewards, pad, self.device)
        if self.cfg.optim.epochs > 1 or self.reference is not None:
            exp.old_logprobs, _ = self.logprobs(self.model, exp)
        if self.reference is not None:
            exp.ref_logprobs, _ = self.logprobs(self.reference, exp)
        return exp

    def optimizer(self, params, lr: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        o = self.cfg.optim
        opt = torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        schedule = lr_lambda(self.total, o.warmup_frac, o.min_lr_ratio, o.decay_frac)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return opt, sched

    def clip_and_step(self, model, opt: torch.optim.Optimizer, sched=None) -> float:
        """All-reduce gradients over data parallel ranks, clip, step; returns the grad norm."""
        _allreduce_grads(model)
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip) if params else torch.tensor(0.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
        return float(norm)

    # --- logging, eval, checkpoints
    def step_metrics(self, rollout: Rollout, rewards: list[float], formats: list[str], exp: Experience | None,
                     entropy: torch.Tensor | None) -> dict[str, float]:
        """reward/mean, format shares/acc, kl/mean, entropy/mean, response length, tokens/s."""
        m: dict[str, float] = {"reward/mean": float(np.mean(rewards)) if rewards else 0.0}
        m.update(format_stats(formats, rewards))
        lens = [len(c) for c in rollout.completion_ids]
        m["response_length/mean"] = float(np.mean(lens)) if lens else 0.0
        m["response_length/max"] = float(max(lens)) if lens else 0.0
        m["response/finished_share"] = float(np.mean(rollout.finished)) if rollout.finished else 0.0
        if exp is not None:
            if exp.ref_logprobs is not None:
                kl = exp.old_logprobs - exp.ref_logprobs  # k1 on the sampled tokens
                m["kl/mean"] = float(masked_mean(kl, exp.mask))
            else:
                m["kl/mean"] = 0.0
            if entropy is not None:
                m["entropy/mean"] = float(masked_mean(entropy, exp.mask))
        gen = self.times.get("time/generate_s", 0.0)
        m["throughput/tokens_per_s"] = rollout.num_tokens / gen if gen > 0 else 0.0
        m["throughput/rollout_tokens"] = float(rollout.num_tokens)
        return _reduce_dp(m)

    def finish_step(self, step: int, metrics: dict[str, float]) -> None:
        """Log the step (with its timers), run the periodic eval, checkpoint when due."""
        every = self.cfg.eval_every
        if (every and step % every == 0) or step == self.total:
            with self.timer("eval"):
                metrics.update(self.evaluate())
        if step in self.ckpt_steps:
            with self.timer("checkpoint"):
                self.save(step)
        metrics.update(self.times)
        self.logger.log(step, metrics)

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 and format shares on the held-out prompts (all ranks, same prompts)."""
        if not self.eval_problems:
            return {}
        r = self.cfg.rollout
        out = generate(self.model, self.tokenizer, [p.prompt for p in self.eval_problems], greedy=True,
                       max_new_tokens=self.cfg.eval_max_new_tokens or r.max_new_tokens,
                       batch_size=r.batch_size, max_prompt_tokens=r.max_prompt_tokens)
        truths = [p.answer for p in self.eval_problems]
        res = self.scorer(out.completions, truths) if _tp_rank() == 0 else None
        rewards, formats = _broadcast_tp(res)
        m = {f"acc/{benchmark_name(self.cfg.data.eval)}/pass@1": float(np.mean(rewards))}
        m.update(format_stats(formats, rewards, prefix="eval/"))
        return m

    def save(self, step: int, extra_models: dict[str, Any] | None = None) -> None:
        """The policy as a standard checkpoint (eval/export load it) plus RL resume state.

        `extra_models` = {name: (module, optimizer)} (e.g. PPO's critic) are saved as
        checkpoints of their own under run_dir/<name>/.
        """
        from echo_nemo.checkpoint import rng_state, save_checkpoint

        extra = {"rl_step": step, "sched": self.sched.state_dict() if self.sched else None,
                 "algo_state": dict(self.algo_state)}
        save_checkpoint(self.run_dir, step, self.model, self.opt, model_config=self.model_config,
                        tokenizer=self.tokenizer_path, kind="rl", extra=extra, rank_extra={"rng": rng_state()})
        for name, (module, opt) in (extra_models or self.extra_models).items():
            save_checkpoint(self.run_dir / name, step, module, opt, model_config=self.model_config,
                            tokenizer=self.tokenizer_path, kind=f"rl_{name}")

    def resume(self) -> None:
        """Continue after the newest checkpoint of this run dir, if there is one."""
        from echo_nemo.checkpoint import latest_checkpoint, load_checkpoint, set_rng_state
        from echo_nemo.metrics import truncate_metrics

        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return
        loaded = load_checkpoint(ckpt, self.model, self.opt)
        if loaded.extra.get("sched") and self.sched:
            self.sched.load_state_dict(loaded.extra["sched"])
        self.algo_state.update(loaded.extra.get("algo_state") or {})
        for name, (module, opt) in self.extra_models.items():
            load_checkpoint(self.run_dir / name / "checkpoints" / ckpt.name, module, opt)
        if loaded.rank_extra:
            set_rng_state(loaded.rank_extra["rng"])
        self.start_step = loaded.step
        truncate_metrics(self.run_dir, loaded.step)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


def _logger(run_dir: Path, main: bool):
    from echo_nemo.metrics import MetricsLogger

    return MetricsLogger(run_dir, enabled=main)


def _tp_rank() -> int:
    from echo_nemo import distributed as D

    return D.tp_rank()


def _broadcast_tp(obj: Any) -> Any:
    """TP rank 0's python object on every rank of its TP group."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized() or ps.get_tensor_model_parallel_world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(
        box, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group()
    )
    return box[0]


def _allreduce_grads(model) -> None:
    from echo_nemo import distributed as D

    if D.dp_size() == 1:
        return
    from megatron.core import parallel_state as ps

    group = ps.get_data_parallel_group()
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad, group=group)
            p.grad /= D.dp_size()


def _reduce_dp(metrics: dict[str, float]) -> dict[str, float]:
    """Average the step metrics over data-parallel ranks (each saw its own prompts)."""
    from echo_nemo import distributed as D

    if D.dp_size() == 1:
        return metrics
    from megatron.core import parallel_state as ps

    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=D.device())
    torch.distributed.all_reduce(t, group=ps.get_data_parallel_group(with_context_parallel=False))
    return {k: float(v) / D.dp_size() for k, v in zip(keys, t)}


# ----------------------------------------------------------------------------- shared update
def policy_update(run: RLRun, exp: Experience, clip: float, kl_in_loss: bool) -> tuple[dict[str, float], torch.Tensor]:
    """Clipped policy-gradient update over `cfg.optim.epochs` passes (one optimizer step each).

    loss = clipped_pg + kl.coef * KL_est (when `kl_in_loss`) - entropy_coef * entropy,
    each a token mean over the whole rollout batch (micro-batches weighted by their
    token counts). Returns (stats, per-token entropy of the first pass, detached).
    `policy/ratio_first_epoch` is the mean ratio before any step: exactly 1.
    """
    from echo_nemo.rl.losses import clipped_pg_loss, kl_estimate

    cfg = run.cfg
    total_tokens = exp.mask.sum().clamp(min=1)
    stats: dict[str, float] = {}
    entropy = torch.zeros_like(exp.mask)
    batches = length_batches(exp.mask, cfg.optim.micro_batch_size)
    run.model.train()
    for epoch in range(cfg.optim.epochs):
        sums = {"loss/policy": 0.0, "loss/kl": 0.0, "policy/ratio": 0.0, "policy/clipfrac": 0.0}
        for rows, w in batches:
            mask = exp.mask[rows, : w - 1]
            weight = mask.sum() / total_tokens
            need_ent = epoch == 0 or cfg.entropy_coef > 0
            lp, ent = sequence_logprobs(run.model, exp.tokens[rows, :w], cfg.rollout.temperature,
                                        run.tokenizer.vocab_size, with_entropy=need_ent)
            # on-policy (one epoch, no reference): the old log-probs are this forward's own
            old = exp.old_logprobs[rows, : w - 1] if exp.old_logprobs is not None else lp.detach()
            pg, st = clipped_pg_loss(lp, old, exp.advantages[rows, : w - 1], mask, clip)
            loss = pg
            if kl_in_loss and exp.ref_logprobs is not None:
                kl = masked_mean(kl_estimate(lp, exp.ref_logprobs[rows, : w - 1], cfg.kl.estimator), mask)
                loss = loss + cfg.kl.coef * kl
                sums["loss/kl"] += float(kl.detach()) * float(weight)
            if cfg.entropy_coef > 0:
                loss = loss - cfg.entropy_coef * masked_mean(ent, mask)
            (loss * weight).backward()
            if epoch == 0:
                entropy[rows, : w - 1] = ent.detach()
            sums["loss/policy"] += float(pg.detach()) * float(weight)
            sums["policy/ratio"] += float(st["ratio"]) * float(weight)
            sums["policy/clipfrac"] += float(st["clipfrac"]) * float(weight)
        if epoch == 0:
            stats["policy/ratio_first_epoch"] = sums["policy/ratio"]
        stats.update(sums)
        stats["grad_norm"] = run.clip_and_step(run.model, run.opt)
    stats["lr"] = run.opt.param_groups[0]["lr"]
    run.sched.step()
    return stats, entropy
