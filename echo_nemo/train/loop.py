"""The pretraining loop, top to bottom: `pretrain(cfg)`.

Global-batch semantics: one optimizer step always consumes `train.global_batch_size`
sequences, split as micro_batch_size x data-parallel ranks x accumulation steps, and
the loss is the mean over all of their tokens, so the same recipe gives the same
updates at any TP / DP / accumulation split (up to float reassociation).

Preemption: SIGTERM / SIGUSR1 (echo_nemo.preempt) let the current step finish, then
every rank agrees to stop, a resume checkpoint is saved and `Preempted` is raised (the
CLI exits 75 for a requeue; a rerun resumes from it exactly).

Precision: fp32 on CPU; on GPU fp32 master weights with bf16 autocast (what OLMo's
mixed-precision training does), unless `train.precision` says otherwise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from echo_nemo import checkpoint as C
from echo_nemo import distributed as D
from echo_nemo import parallel as P
from echo_nemo import preempt
from echo_nemo.config import save_config
from echo_nemo.data.loader import ShardLoader, read_manifest
from echo_nemo.errors import UserError
from echo_nemo.metrics import MetricsLogger, truncate_metrics
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.model.forward import causal_forward
from echo_nemo.model.scales import flops_per_token, get_scale, param_counts
from echo_nemo.optim import optimizer_step
from echo_nemo.schedule import log_spaced_steps
from echo_nemo.speed import between_steps
from echo_nemo.tokenizer import load_tokenizer
from echo_nemo.train.config import PretrainConfig
from echo_nemo.train.mfu import BestPeak, mfu


# ----------------------------------------------------------------------------- pieces
def checkpoint_steps(cfg: PretrainConfig) -> tuple[set[int], set[int]]:
    """(steps to save at, steps to keep forever): every N, the end, explicit and log-spaced."""
    total, ck = cfg.train.steps, cfg.checkpoint
    keep = {s for s in ck.keep_steps if 0 < s <= total}
    if ck.log_spaced > 0:  # the study's logspace(-2.1, 0, n) x total steps
        keep |= set(log_spaced_steps(total, ck.log_spaced))
    save = set(keep) | {total}
    if ck.every > 0:
        save |= set(range(ck.every, total + 1, ck.every))
    return save, keep


def _copy_tokenizer(manifest: dict[str, Any], shard_dir: str, run_dir: Path):
    """Load the shards' tokenizer and keep a copy in run_dir/tokenizer/ (checkpoints point there)."""
    tok_path = manifest.get("tokenizer_dir") or manifest.get("tokenizer")  # the shard folder's own copy first
    if tok_path and not Path(tok_path).is_absolute() and (Path(shard_dir) / tok_path).exists():
        tok_path = str(Path(shard_dir) / tok_path)
    tokenizer = load_tokenizer(tok_path)
    if tokenizer.vocab_size != int(manifest["vocab_size"]):
        raise UserError(f"the tokenizer of {shard_dir!r} ({tok_path}) has a vocabulary of {tokenizer.vocab_size}, "
                        f"but its manifest says the shards were built with {manifest['vocab_size']}: rebuild the "
                        "shards with `echo-nemo data build`")
    if D.is_main():
        tokenizer.save(str(run_dir / "tokenizer"))
    return tokenizer


# ----------------------------------------------------------------------------- the loop
def real_targets(tokens: torch.Tensor, labels: torch.Tensor, eos: int) -> torch.Tensor:
    """True where the label is a document token: EOS after EOS is best-fit packing's padding
    (a document is never empty, so a real EOS always follows a real token)."""
    return ~((tokens == eos) & (labels == eos))


def pretrain(cfg: PretrainConfig) -> Path:
    """Train `cfg.model` on `cfg.data.shards`; returns the run dir. Resumes automatically.

    A stop signal (see echo_nemo.preempt) ends it after the current step with a resume
    checkpoint and `preempt.Preempted`."""
    with preempt.catch_signals():
        return _pretrain(cfg)


@dataclass
class Pretraining:
    """What the set-up builds for the loop: the model and its optimizer, the data, the split
    of a global batch, and when to save."""

    model_cfg: ModelConfig
    vocab: int
    seq: int
    eos: int
    accum: int  # micro-batches per optimizer step on each DP rank
    bf16: bool
    tokenizer: Any
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: ShardLoader
    save_steps: set[int]
    keep_steps: set[int]


def _pretrain(cfg: PretrainConfig) -> Path:
    """set-up -> resume -> per step: train_step (the global batch's forward and backward, one
    optimizer step) -> log -> checkpoint when due or when a stop signal arrived."""
    run_dir = Path(cfg.run_dir)
    p = set_up(cfg, run_dir)
    step = resume(cfg, p, run_dir)
    logger = MetricsLogger(run_dir, enabled=D.is_main())
    flops_tok = flops_per_token(get_scale(p.model_cfg.scale), p.vocab, p.seq)
    peak = BestPeak()
    announce(cfg, p, step, run_dir)

    batches = iter(p.loader)
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not D.is_main(), desc="pretrain")
    p.model.train()
    while step < cfg.train.steps:
        between_steps()  # a study may re-divide the cores between its runs
        t0 = time.perf_counter()
        lr = p.scheduler.get_last_lr()[0]
        loss_value, grad_norm = train_step(cfg, p, batches)
        step += 1
        dt = time.perf_counter() - t0
        tokens_per_s = cfg.train.global_batch_size * p.seq / dt
        if not math.isfinite(loss_value):
            raise RuntimeError(f"loss is {loss_value} at step {step}: diverged")
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            logger.log(step, {"loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                              "throughput/tokens_per_s": tokens_per_s,
                              "mfu": mfu(tokens_per_s, flops_tok, peak.update(), dist.get_world_size()),
                              "time/step_s": dt})
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
        bar.update(1)
        # checkpoint when due, and when any rank got a stop signal (all ranks agree)
        stop = preempt.stop_requested()
        if step in p.save_steps or stop:
            save(cfg, p, step, run_dir)
        if stop and step < cfg.train.steps:
            bar.close()
            logger.close()
            raise preempt.Preempted(stop, step, C.checkpoints_dir(run_dir) / f"step_{step}")
    bar.close()
    logger.close()
    return run_dir


# ----------------------------------------------------------------------------- phases
def set_up(cfg: PretrainConfig, run_dir: Path) -> Pretraining:
    """Process groups, the shards' shapes and tokenizer, the model and its optimizer, the loader."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    cfg.parallel.build(seed=cfg.train.seed)
    manifest = read_manifest(cfg.data.shards)  # validates the build (UserError if broken)
    vocab, seq = int(manifest["vocab_size"]), int(manifest["seq_length"])
    model_cfg = _model_config(cfg, vocab, seq)
    accum = _accumulation(cfg)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and torch.cuda.is_available())
    run_dir.mkdir(parents=True, exist_ok=True)
    if D.is_main():
        save_config(cfg, run_dir)
        for stale in C.remove_incomplete(run_dir):
            print(f"[pretrain] removed {stale.name}: a save that was killed before it finished")
    tokenizer = _copy_tokenizer(manifest, cfg.data.shards, run_dir)
    D.barrier()
    model = build_gpt(model_cfg, vocab)  # fp32 master weights; bf16 through autocast
    optimizer, scheduler = cfg.optim.build(model, cfg.train.steps)
    loader = ShardLoader(cfg.data.shards, cfg.train.micro_batch_size, dp_rank=D.dp_rank(), dp_size=D.dp_size(),
                         seed=cfg.train.seed)
    save_steps, keep_steps = checkpoint_steps(cfg)
    return Pretraining(model_cfg, vocab, seq, int(manifest["eos_id"]), accum, bf16, tokenizer, model, optimizer,
                       scheduler, loader, save_steps, keep_steps)


def _model_config(cfg: PretrainConfig, vocab: int, seq: int) -> ModelConfig:
    """The recipe's model with the shards' vocabulary and (at least) their sequence length."""
    if cfg.model.vocab_size not in (None, vocab):
        raise UserError(
            f"model.vocab_size={cfg.model.vocab_size} but the shards in {cfg.data.shards!r} "
            f"were tokenized with a vocabulary of {vocab}"
        )
    model_cfg = replace(cfg.model, vocab_size=vocab, seq_length=cfg.model.seq_length or seq)
    if model_cfg.seq_length < seq:
        raise UserError(f"model.seq_length={model_cfg.seq_length} is shorter than the shards' {seq}")
    return model_cfg


def _accumulation(cfg: PretrainConfig) -> int:
    """Micro-batches per step on each DP rank: global batch / (micro batch x DP size)."""
    micro, gbs, dp_size = cfg.train.micro_batch_size, cfg.train.global_batch_size, D.dp_size()
    if gbs % (micro * dp_size):
        raise UserError(
            f"train.global_batch_size={gbs} is not a multiple of micro_batch_size x data-parallel "
            f"size = {micro} x {dp_size}"
        )
    return gbs // (micro * dp_size)


def resume(cfg: PretrainConfig, p: Pretraining, run_dir: Path) -> int:
    """The step to continue after: the latest complete checkpoint's (model, optimizer,
    schedule, data position, RNG), else 0 with `train.init_from`'s weights if given."""
    latest = C.latest_checkpoint(run_dir) if cfg.checkpoint.resume else None
    if latest is not None:
        loaded = C.load_checkpoint(latest, p.model, p.optimizer)
        p.scheduler.load_state_dict(loaded.extra["scheduler"])
        p.loader.load_state_dict(loaded.extra["loader"])  # global sample count: any DP size
        if loaded.rank_extra is not None:  # same layout: every rank's RNG streams continue
            C.set_rng_state(loaded.rank_extra["rng"])
        if D.is_main():
            truncate_metrics(run_dir, loaded.step)
        return loaded.step
    if cfg.train.init_from:
        init_meta = C.read_meta(cfg.train.init_from)
        got = (init_meta["model"].get("scale"), init_meta["model"].get("vocab_size"))
        if got != (p.model_cfg.scale, p.vocab):
            raise UserError(
                f"train.init_from={cfg.train.init_from!r} holds a {got[0]!r} model with vocabulary "
                f"{got[1]}, but this run trains {p.model_cfg.scale!r} on shards with vocabulary {p.vocab}"
            )
        C.load_checkpoint(cfg.train.init_from, p.model, None, load_rank_extra=False)
    return 0


def announce(cfg: PretrainConfig, p: Pretraining, step: int, run_dir: Path) -> None:
    if D.is_main():
        print(
            f"[pretrain] {p.model_cfg.scale}: {param_counts(get_scale(p.model_cfg.scale), p.vocab)['params']:,} "
            f"params, tp={D.tp_size()} dp={D.dp_size()} accum={p.accum}, {'bf16' if p.bf16 else 'fp32'}, "
            f"steps {step}->{cfg.train.steps}, run dir {run_dir}"
        )


def train_step(cfg: PretrainConfig, p: Pretraining, batches) -> tuple[float, float]:
    """One optimizer step over a global batch; returns (loss per real token over every DP
    rank, grad norm before clipping).

    Padding weighs nothing, but each micro-batch's loss is a mean over all its positions,
    so that every TP/DP/accumulation split agrees; dividing by the share of real tokens
    at the end gives the loss per real token.
    """
    device = D.device()
    sums = torch.zeros(2, device=device)  # [loss over positions, share of real tokens]
    for _ in range(p.accum):
        batch = next(batches).to(device, non_blocking=True).long()
        tokens, labels = batch[:, :-1], batch[:, 1:]
        real = real_targets(tokens, labels, p.eos)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=p.bf16):
            per_token = causal_forward(p.model, tokens, labels, vocab_size=p.vocab)
        loss = (per_token.float() * real).mean() / p.accum
        loss.backward()
        sums += torch.stack([loss.detach(), real.float().mean() / p.accum])
    grad_norm = optimizer_step(p.model.parameters(), p.optimizer, cfg.optim.grad_clip, p.scheduler)
    loss_pos, real_share = sums.tolist()  # .tolist() also waits for the GPU (honest timing)
    over_dp = P.mean_over_dp({"loss_pos": loss_pos, "real_share": real_share})
    return over_dp["loss_pos"] / over_dp["real_share"], grad_norm


def save(cfg: PretrainConfig, p: Pretraining, step: int, run_dir: Path) -> None:
    """A resume checkpoint: model, optimizer, schedule, data position and every rank's RNG."""
    C.save_checkpoint(
        run_dir, step, p.model, p.optimizer, model_config=p.model_cfg, tokenizer=run_dir / "tokenizer",
        kind="pretrain", extra={"scheduler": p.scheduler.state_dict(), "loader": p.loader.state_dict()},
        rank_extra={"rng": C.rng_state()}, keep_last=cfg.checkpoint.keep_last, keep_steps=sorted(p.keep_steps),
    )
