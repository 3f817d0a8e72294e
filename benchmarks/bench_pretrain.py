"""Pretraining throughput on CPU: our megatron-core training step vs transformers'
OlmoForCausalLM of the same shape, batch and optimizer, measured in the same run.

    python benchmarks/bench_pretrain.py [--scale tiny] [--batch 16] [--seq 256] [--steps 10]
    python benchmarks/bench_pretrain.py --device cuda --scale 150m|1b --vocab 32000 --batch 8 --seq 1024

On CUDA (`--device cuda`, the default when a GPU is present) both models train with
bf16 autocast over fp32 weights (what `echo-nemo pretrain` does on GPU) and MFU is
against the GPU's dense bf16 peak (echo_nemo.train.mfu; $ECHO_NEMO_PEAK_TFLOPS for a GPU
it does not list).

A training step = forward + backward + gradient clipping + AdamW step, fp32, on random
token batches (vocab 1024, the echo-lab tokenizer's). Ours uses the loop's pieces
(build_gpt; causal_forward, the package's training forward over megatron's parameters with
torch's fused cross entropy and the padded-vocab mask; clip_gradients; OptimConfig.build),
with the CPU layer every echo-nemo command applies (echo_nemo.cpu): on CPU its
attention runs on echo-nemo's C kernel (echo_nemo/cpu/attention.c;
`ECHO_NEMO_CPU_KERNELS=torch` for torch's SDPA, which HF runs). The two models alternate in rounds so machine load
hits both alike; the median step time of each is reported, with the ratio
(target >= 1.0) and our MFU against the CPU fp32 matmul peak (best window measured
between rounds).

Both sides run under the malloc settings every echo-nemo command applies
(echo_nemo.cpu.malloc: freed memory stays in the process); `--malloc glibc` keeps glibc's
defaults, under which both page-fault much of each step's memory in again.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import OlmoForCausalLM

from echo_nemo import cpu
from echo_nemo import distributed as D
from echo_nemo.cpu import kernels, malloc
from echo_nemo.export.hf import olmo_config
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.model.forward import causal_forward
from echo_nemo.model.scales import flops_per_token, get_scale
from echo_nemo.optim import OptimConfig
from echo_nemo.parallel import clip_gradients
from echo_nemo.train.mfu import device_peak_flops, mfu


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    malloc.add_option(ap)
    return ap.parse_args()


def training_steps(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Callable[[], float]], int]:
    """One training step of each model on the same batch ({"ours": ..., "hf": ...}, each
    returning its loss), and our model's parameter count."""
    cfg = ModelConfig(scale=args.scale, seq_length=args.seq, vocab_size=args.vocab)
    optim_cfg = OptimConfig(warmup_steps=10)
    ours = build_gpt(cfg, args.vocab).to(device)
    ours_opt, _ = optim_cfg.build(ours, 1000)

    class _Tok:
        pad_id, eos_id = 0, 0

    hf = OlmoForCausalLM(olmo_config(cfg, get_scale(args.scale), _Tok(), torch.float32)).to(device).train()
    hf.config._attn_implementation = "sdpa"
    hf_opt, _ = optim_cfg.build(hf, 1000)

    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    tokens, labels = batch[:, :-1].to(device), batch[:, 1:].to(device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")  # noqa: E731

    def ours_step() -> float:
        with autocast():
            loss = causal_forward(ours, tokens, labels, vocab_size=args.vocab).float().mean()
        loss.backward()
        clip_gradients(ours.parameters(), 1.0)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        return loss.item()

    def hf_step() -> float:
        with autocast():
            logits = hf(input_ids=tokens).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return loss.item()

    return {"ours": ours_step, "hf": hf_step}, sum(p.numel() for p in ours.parameters())


def time_steps(steps: dict[str, Callable[[], float]], args: argparse.Namespace,
               device: torch.device) -> tuple[dict[str, list[float]], float | None]:
    """Seconds per step of each model, alternating in rounds; and the device's peak FLOP/s
    (on CPU the best matmul window measured between rounds)."""
    peak = device_peak_flops(device)
    for step in steps.values():  # warm-up (allocator, thread pools)
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        if device.type != "cuda":
            peak = max(peak, device_peak_flops(device))  # the best moment of the run
        for name, step in steps.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    return times, peak


def report(args: argparse.Namespace, device: torch.device, times: dict[str, list[float]], peak: float | None,
           params: int) -> None:
    cuda = device.type == "cuda"
    tps = {k: args.batch * args.seq / statistics.median(v) for k, v in times.items()}
    fpt = flops_per_token(get_scale(args.scale), args.vocab, args.seq)
    used = "echo-nemo" if kernels.load() is not None and not cuda else "torch"
    print(
        f"scale={args.scale} batch={args.batch}x{args.seq} vocab={args.vocab} "
        f"threads={torch.get_num_threads()} params={params:,} malloc={args.malloc} "
        f"kernels={used}"
    )
    if cuda:
        print(f"GPU {torch.cuda.get_device_name()}: bf16 autocast, dense bf16 peak "
              f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    else:
        print(f"CPU fp32 matmul peak (measured): {peak / 1e9:.1f} GFLOP/s")
    print(f"ours (megatron-core GPT):      {tps['ours']:10,.0f} tokens/s  MFU {mfu(tps['ours'], fpt, peak):.1%}")
    print(f"baseline (HF OlmoForCausalLM): {tps['hf']:10,.0f} tokens/s  MFU {mfu(tps['hf'], fpt, peak):.1%}")
    print(f"ratio ours / baseline: {tps['ours'] / tps['hf']:.2f}")


def main() -> None:
    args = parse_args()
    cpu.use_kernels()  # as every echo-nemo command does at start-up (echo_nemo.cli)
    if args.malloc == "echo-nemo":
        malloc.keep_freed_memory()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    D.init_distributed(tp=1, seed=0)
    steps, params = training_steps(args, device)
    times, peak = time_steps(steps, args, device)
    report(args, device, times, peak, params)
    D.destroy_distributed()


if __name__ == "__main__":
    main()
