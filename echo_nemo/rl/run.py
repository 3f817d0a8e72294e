"""`run_rl(cfg) -> run dir`: set up one RL run (models, prompts, reward) and train it.

One run dir per run: config.yaml, metrics.jsonl, tensorboard/, checkpoints/step_<N>/
(policy, loadable by eval/export), <aux>/checkpoints/ (e.g. PPO's critic), tokenizer/,
report/. Running the same config on an existing run dir resumes from its newest
checkpoint: one of the study's log-spaced ones (kept forever) or a resume checkpoint
(every `checkpoint.every` steps, the newest `checkpoint.keep_last` kept, and one when a
stop signal arrives: see echo_nemo.preempt).

`RLRun` is what the step loop (rl/loop.py) and the algorithms read and write; every
field is declared here, auxiliary models included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from echo_nemo import checkpoint as C
from echo_nemo import distributed as D
from echo_nemo import parallel as P
from echo_nemo import preempt
from echo_nemo.config import save_config
from echo_nemo.data.sources import benchmark_name, load_problems
from echo_nemo.errors import UserError
from echo_nemo.metrics import MetricsLogger, truncate_metrics
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.model.generate import Rollout, generate
from echo_nemo.reward.format_stats import format_metrics
from echo_nemo.rl import loop
from echo_nemo.rl.algorithm import Algorithm, AuxModel, Batch, clone_model
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.experience import Experience, build_experience, length_batches, sequence_logprobs
from echo_nemo.rl.expert_iteration import ExpertIteration
from echo_nemo.rl.grpo import GRPO
from echo_nemo.rl.losses import masked_mean
from echo_nemo.rl.ppo import PPO
from echo_nemo.rl.reinforce import Reinforce
from echo_nemo.speed import between_steps
from echo_nemo.tokenizer import load_tokenizer

ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO, "grpo": GRPO, "reinforce": Reinforce, "ei": ExpertIteration}
EVAL_BATCH = 64  # held-out prompts per generation call when rollout.batch_size is null
EVAL_HINT_TOKENS = 64 * 1024  # problems x new tokens above which the start of a run says how to bound it


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


# ----------------------------------------------------------------------------- the run
@dataclass
class RLRun:
    """Everything one RL run holds. Built by `open_run`; trained by `loop.train`."""

    cfg: RLConfig
    run_dir: Path
    scorer: Scorer | None  # None on TP ranks > 0 (they receive rank 0's scores)
    problems: list  # training prompts
    eval_problems: list  # held-out prompts of the in-loop greedy eval
    tokenizer: Any
    tokenizer_path: str | None
    model: Any  # the policy (megatron GPTModel)
    model_config: ModelConfig
    kl_in_reward: bool  # the KL term's place: the reward (True) or the loss
    total: int  # steps of the run (Expert Iteration: rounds)
    ckpt_steps: list[int]  # the study's log-spaced checkpoint steps
    reference: Any = None  # frozen copy of the starting policy when kl.coef > 0
    opt: torch.optim.Optimizer | None = None
    sched: Any = None
    aux: dict[str, AuxModel] = field(default_factory=dict)
    algo_state: dict[str, Any] = field(default_factory=dict)  # small algorithm state, checkpointed
    start_step: int = 0
    times: dict[str, float] = field(default_factory=dict)
    logger: MetricsLogger | None = None  # opened by steps(), after a resume truncated metrics.jsonl

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- timers and steps
    @contextlib.contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        between_steps()  # a study may re-divide the cores between its runs
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{phase}_s"] = self.times.get(f"time/{phase}_s", 0.0) + time.perf_counter() - t0

    def steps(self) -> Iterator[int]:
        """1-based step numbers still to run (after a resume, from the one after the checkpoint).

        A run with periodic evals (eval_every > 0) logs a step-0 row first: the held-out eval
        of the starting policy, so an accuracy curve has its baseline (the study's "largest
        gain" is often the first interval)."""
        self.logger = MetricsLogger(self.run_dir, enabled=D.is_main())
        if self.start_step == 0 and self.cfg.eval_every:
            self.times = {}
            with self.timer("eval"):
                metrics = self.evaluate()
            self.logger.log(0, {**metrics, **self.times})
        bar = tqdm(range(self.start_step + 1, self.total + 1), desc=f"rl {self.cfg.algorithm}",
                   initial=self.start_step, total=self.total, disable=not D.is_main())
        for step in bar:
            self.times = {}
            yield step

    def prompts_for_step(self, step: int) -> list:
        """This DP rank's prompts for `step`: a seeded shuffle per epoch, deterministic for resume."""
        per = self.cfg.rollout.prompts_per_step
        n = len(self.problems)
        out = []
        for k in range((step - 1) * per, step * per):
            epoch, i = divmod(k, n)
            order = np.random.default_rng(self.cfg.seed + epoch).permutation(n)
            out.append(self.problems[int(order[i])])
        return out[D.dp_rank() :: D.dp_size()]

    # --- phases
    def generate(self, problems: list, step: int, samples: int, temperature: float | None = None,
                 top_p: float | None = None) -> Rollout:
        """`samples` completions per problem, contiguous per problem (a GRPO group)."""
        r = self.cfg.rollout
        prompts = [p.prompt for p in problems for _ in range(samples)]
        return generate(
            self.model, self.tokenizer, prompts, max_new_tokens=r.max_new_tokens,
            temperature=temperature or r.temperature, top_p=top_p or r.top_p, top_k=r.top_k,
            seed=self.cfg.seed * 100_003 + step * 1_009 + D.dp_rank(), batch_size=r.batch_size,
            max_prompt_tokens=r.max_prompt_tokens,
        )

    def score(self, batch: Batch) -> tuple[list[float], list[str]]:
        """Rewards and formats; only TP rank 0 asks the scorer, the others receive its answer."""
        result = self.scorer(batch.rollout.completions, batch.truths()) if D.tp_rank() == 0 else None
        return P.broadcast_tp(result)

    def logprobs(self, model, exp: Experience, with_entropy: bool = False):
        """Per-label log-probs (and entropy) over micro-batches, without grad."""
        lps = torch.zeros_like(exp.mask)
        ents = torch.zeros_like(exp.mask) if with_entropy else None
        with torch.no_grad():
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

    # --- logging, eval, checkpoints
    def step_metrics(self, rollout: Rollout, rewards: list[float], formats: list[str], exp: Experience,
                     entropy: torch.Tensor | None) -> dict[str, float]:
        """reward/mean, format shares/acc, kl/mean, entropy/mean, response length, tokens/s."""
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
        gen = self.times.get("time/generate_s", 0.0)
        m["throughput/tokens_per_s"] = rollout.num_tokens / gen if gen > 0 else 0.0
        m["throughput/rollout_tokens"] = float(rollout.num_tokens)
        return P.mean_over_dp(m)

    def finish_step(self, step: int, metrics: dict[str, float]) -> str | None:
        """Log the step (with its timers), run the periodic eval, checkpoint when due or when
        a stop signal reached any rank. Returns that signal's name (every rank the same)."""
        every = self.cfg.eval_every
        if (every and step % every == 0) or step == self.total:
            with self.timer("eval"):
                metrics.update(self.evaluate())
        stop = preempt.stop_requested()
        periodic = self.cfg.checkpoint.every and step % self.cfg.checkpoint.every == 0
        if step in self.ckpt_steps or periodic or stop:
            with self.timer("checkpoint"):
                self.save(step)
        metrics.update(self.times)
        self.logger.log(step, metrics)
        return stop if step < self.total else None  # the last step ends the run anyway

    def eval_hint(self) -> str | None:
        """A line for the start of a run whose held-out eval is long (e.g. all 1319 GSM8K
        test problems at 1024 new tokens: minutes even on a GPU, on CPU far longer)."""
        n = len(self.eval_problems)
        new_tokens = self.cfg.eval_max_new_tokens or self.cfg.rollout.max_new_tokens
        if n * new_tokens <= EVAL_HINT_TOKENS:
            return None
        when = f"every {self.cfg.eval_every} steps and " if self.cfg.eval_every else ""
        return (f"[rl] held-out eval: {n} {benchmark_name(self.cfg.data.eval)} problems x up to {new_tokens} "
                f"new tokens, greedy, {when}at the last step; a smoke run can bound it with "
                f"data.eval_limit=N (and eval_max_new_tokens=N)")

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 and format shares on the held-out prompts (all ranks, same prompts),
        in batches under a progress bar (problems, rate, ETA) on rank 0."""
        if not self.eval_problems:
            return {}
        r = self.cfg.rollout
        prompts = [p.prompt for p in self.eval_problems]
        bs = r.batch_size or EVAL_BATCH
        completions: list[str] = []
        with tqdm(total=len(prompts), desc=f"rl eval {benchmark_name(self.cfg.data.eval)} greedy", unit="problem",
                  leave=False, disable=not D.is_main()) as bar:
            for start in range(0, len(prompts), bs):
                chunk = prompts[start : start + bs]
                out = generate(self.model, self.tokenizer, chunk, greedy=True,
                               max_new_tokens=self.cfg.eval_max_new_tokens or r.max_new_tokens,
                               batch_size=len(chunk), max_prompt_tokens=r.max_prompt_tokens)
                completions += out.completions
                bar.update(len(chunk))
        truths = [p.answer for p in self.eval_problems]
        res = self.scorer(completions, truths) if D.tp_rank() == 0 else None
        rewards, formats = P.broadcast_tp(res)
        m = {f"acc/{benchmark_name(self.cfg.data.eval)}/pass@1": float(np.mean(rewards))}
        m.update(format_metrics("eval/", formats, rewards))
        return m

    def save(self, step: int) -> None:
        """The policy as a standard checkpoint (eval/export load it) plus RL resume state;
        each auxiliary model as a checkpoint of its own under run_dir/<name>/.

        The study's log-spaced steps are marked keep (never pruned); of the others the
        newest `checkpoint.keep_last` stay, for the policy and every auxiliary model alike.
        """
        extra = {"rl_step": step, "sched": self.sched.state_dict() if self.sched else None,
                 "aux_sched": {n: a.sched.state_dict() for n, a in self.aux.items() if a.sched is not None},
                 "algo_state": dict(self.algo_state)}
        keep = {"keep_last": self.cfg.checkpoint.keep_last, "keep_steps": self.ckpt_steps}
        C.save_checkpoint(self.run_dir, step, self.model, self.opt, model_config=self.model_config,
                          tokenizer=self.tokenizer_path, kind="rl", extra=extra, rank_extra={"rng": C.rng_state()},
                          **keep)
        for name, a in self.aux.items():
            C.save_checkpoint(self.run_dir / name, step, a.module, a.opt, model_config=self.model_config,
                              tokenizer=self.tokenizer_path, kind=f"rl_{name}", **keep)

    def latest_complete_step(self) -> int | None:
        """The newest step saved completely for the policy and every auxiliary model (a kill
        between the policy's save and the critic's leaves only the policy's)."""
        steps = {s for s, _ in C.complete_checkpoints(self.run_dir)}
        for name in self.aux:
            steps &= {s for s, _ in C.complete_checkpoints(self.run_dir / name)}
        return max(steps, default=None)

    def resume(self) -> None:
        """Continue after the newest checkpoint of this run dir, if there is one."""
        if D.is_main():
            for d in [self.run_dir, *(self.run_dir / n for n in self.aux)]:
                C.remove_incomplete(d)  # `.tmp` folders of saves that were killed
        D.barrier()
        step = self.latest_complete_step() if self.cfg.checkpoint.resume else None
        if step is None:  # a fresh start: rows of an earlier attempt that saved nothing go
            if D.is_main():
                truncate_metrics(self.run_dir, -1)
            return
        ckpt = C.checkpoints_dir(self.run_dir) / f"step_{step}"
        loaded = C.load_checkpoint(ckpt, self.model, self.opt)
        if loaded.extra.get("sched") and self.sched:
            self.sched.load_state_dict(loaded.extra["sched"])
        self.algo_state.update(loaded.extra.get("algo_state") or {})
        for name, a in self.aux.items():
            C.load_checkpoint(self.run_dir / name / "checkpoints" / ckpt.name, a.module, a.opt)
            state = (loaded.extra.get("aux_sched") or {}).get(name)
            if state and a.sched is not None:
                a.sched.load_state_dict(state)
        if loaded.rank_extra:
            C.set_rng_state(loaded.rank_extra["rng"])
        self.start_step = loaded.step
        if D.is_main():
            truncate_metrics(self.run_dir, loaded.step)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


# ----------------------------------------------------------------------------- set-up
def _load_policy(cfg: RLConfig, tokenizer=None):
    """(model, ModelConfig, tokenizer, tokenizer path) from model.init, or a fresh model."""
    dtype = torch.bfloat16 if (cfg.model.bf16 and torch.cuda.is_available()) else torch.float32
    if cfg.model.init:
        ckpt = C.resolve_checkpoint(cfg.model.init)
        meta = C.read_meta(ckpt)
        mcfg = C.model_config_from_meta(meta)
        model = build_gpt(mcfg, mcfg.vocab_size, params_dtype=dtype)
        C.load_checkpoint(ckpt, model, None, load_rank_extra=False)
        tok_path = cfg.model.tokenizer or C.tokenizer_path_from_meta(ckpt, meta)
    else:
        tok_path = cfg.model.tokenizer
        mcfg = None
        model = None
    if tokenizer is None:
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
) -> Iterator[RLRun]:
    """An RLRun ready to train (not yet resumed: `loop.train` resumes after the
    algorithm's set-up); closes it after.

    The keyword hooks let tests and notebooks inject a python reward function, prompt
    lists or a tokenizer instead of the configured ones.
    """
    cfg.validate()
    run_dir = Path(cfg.run_dir)
    cfg.parallel.build(seed=cfg.seed)
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
    algo = ALGORITHMS[cfg.algorithm]
    total = cfg.total_steps(len(train))
    reference = None
    if cfg.kl.coef > 0:  # a frozen copy of the starting policy
        reference = clone_model(model, mcfg).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    with reward_endpoint(cfg, reward_fn) as url:
        scorer = Scorer(cfg, url, reward_fn) if D.tp_rank() == 0 else None
        run = RLRun(
            cfg=cfg, run_dir=run_dir, scorer=scorer, problems=train, eval_problems=held_out,
            tokenizer=tokenizer, tokenizer_path=tok_path, model=model, model_config=mcfg,
            kl_in_reward=cfg.kl.in_reward if cfg.kl.in_reward is not None else algo.kl_in_reward,
            total=total, ckpt_steps=C.log_spaced_steps(total, cfg.num_checkpoints), reference=reference,
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
        hint = run.eval_hint()
        if hint and D.is_main():
            print(hint, flush=True)
        loop.train(run, ALGORITHMS[cfg.algorithm]())
    return Path(cfg.run_dir)
