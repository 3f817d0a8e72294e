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
(build_gpt, causal_forward -- by default the lean forward over megatron's parameters with
torch's fused cross entropy and, on CPU, echo-nemo's attention kernel
(echo_nemo/model/attention.c; `ECHO_NEMO_CPU_KERNELS=torch` for torch's SDPA, which HF
runs); `--engine megatron` for megatron's own forward and loss -- with the padded-vocab
mask, clip_gradients, OptimConfig.build). The two models alternate in rounds so machine load
hits both alike; the median step time of each is reported, with the ratio
(target >= 1.0) and our MFU against the CPU fp32 matmul peak (best window measured
between rounds).

Both sides run under the malloc settings every echo-nemo command applies
(echo_nemo.malloc: freed memory stays in the process); `--malloc glibc` keeps glibc's
defaults, under which both page-fault much of each step's memory in again.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from echo_nemo import malloc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--engine", default="lean", choices=["lean", "megatron"],
                    help="causal_forward's engine: the lean forward (default) or megatron's own")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    malloc.add_option(ap)
    args = ap.parse_args()
    if args.malloc == "echo-nemo":
        malloc.keep_freed_memory()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import OlmoForCausalLM

    from echo_nemo import distributed as D
    from echo_nemo.export.hf import olmo_config
    from echo_nemo.model.build import ModelConfig, build_gpt, causal_forward
    from echo_nemo.model.scales import flops_per_token, get_scale
    from echo_nemo.optim import OptimConfig
    from echo_nemo.parallel import clip_gradients
    from echo_nemo.train.mfu import device_peak_flops, mfu

    D.init_distributed(tp=1, seed=0)
    scale = get_scale(args.scale)
    cfg = ModelConfig(scale=args.scale, seq_length=args.seq, vocab_size=args.vocab)
    optim_cfg = OptimConfig(warmup_steps=10)

    ours = build_gpt(cfg, args.vocab).to(device)
    ours_opt, _ = optim_cfg.build(ours, 1000)

    class _Tok:
        pad_id, eos_id = 0, 0

    hf = OlmoForCausalLM(olmo_config(cfg, scale, _Tok(), torch.float32)).to(device).train()
    hf.config._attn_implementation = "sdpa"
    hf_opt, _ = optim_cfg.build(hf, 1000)

    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    tokens, labels = batch[:, :-1].to(device), batch[:, 1:].to(device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)  # noqa: E731

    def ours_step() -> float:
        with autocast():
            loss = causal_forward(ours, tokens, labels, vocab_size=args.vocab, engine=args.engine).float().mean()
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

    peak = device_peak_flops(device)
    for step in (ours_step, hf_step):  # warm-up (allocator, thread pools)
        step()
        step()
    times: dict[str, list[float]] = {"ours": [], "hf": []}
    for _ in range(args.rounds):
        if not cuda:
            peak = max(peak, device_peak_flops(device))  # the best moment of the run
        for name, step in (("ours", ours_step), ("hf", hf_step)):
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)

    tokens_per_step = args.batch * args.seq
    tps = {k: tokens_per_step / statistics.median(v) for k, v in times.items()}
    fpt = flops_per_token(scale, args.vocab, args.seq)
    from echo_nemo.model import cpu_kernels

    kernels = "echo-nemo" if cpu_kernels.load() is not None and not cuda else "torch"
    print(
        f"scale={args.scale} batch={args.batch}x{args.seq} vocab={args.vocab} "
        f"threads={torch.get_num_threads()} params={sum(p.numel() for p in ours.parameters()):,} malloc={args.malloc} "
        f"kernels={kernels}"
    )
    if cuda:
        print(f"GPU {torch.cuda.get_device_name()}: bf16 autocast, dense bf16 peak "
              f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    else:
        print(f"CPU fp32 matmul peak (measured): {peak / 1e9:.1f} GFLOP/s")
    print(f"ours (megatron-core GPT, {args.engine}):{' ' * (8 - len(args.engine))}{tps['ours']:10,.0f} tokens/s  MFU {mfu(tps['ours'], fpt, peak):.1%}")
    print(f"baseline (HF OlmoForCausalLM): {tps['hf']:10,.0f} tokens/s  MFU {mfu(tps['hf'], fpt, peak):.1%}")
    print(f"ratio ours / baseline: {tps['ours'] / tps['hf']:.2f}")
    D.destroy_distributed()


if __name__ == "__main__":
    main()
