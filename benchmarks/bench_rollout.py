"""Rollout throughput: echo-nemo's KV-cache sampler on megatron-core vs transformers `generate`.

Same run, same weights, same batch: a freshly initialised GPT of the chosen scale is
built with megatron-core; its weights are copied into transformers' OlmoForCausalLM
with the exporter's own mapping (echo_nemo.export.hf.megatron_to_hf), and the two
models are checked to give the same logits before anything is timed. Both then sample
B completions of exactly N new tokens (temperature 1, EOS masked until then on both
sides: transformers' `min_new_tokens`; prompts of the echo-lab test set, left-padded for
HF), alternating ours and HF for R repeats so machine load hits both alike; the median
time of each is reported. Figure: generated tokens/s; baseline: HF generate (with its KV
cache); ratio = ours / HF. Ours is echo_nemo.model.generate (the package's decoder,
echo_nemo.model.decode), with the CPU layer every echo-nemo command applies
(echo_nemo.cpu).

On CPU ours multiplies the decode step's rows by weights of 1 MiB and more with
echo-nemo's decode kernel (echo_nemo/cpu/decode_gemm.c; `ECHO_NEMO_CPU_KERNELS=torch`
for MKL's best bitwise form): all of 150m's, none of tiny's. Both sides run under the
malloc settings every echo-nemo command applies (echo_nemo.cpu.malloc); `--malloc glibc`
keeps glibc's defaults. Neither moves generation much: at 150m `generate` runs at one of
two speeds from run to run under either setting (~141-152 or ~163-172 tokens/s on this
project's machines), so quote several runs.

When a GPU is present it also times one PPO-style update (forward + backward of the
policy over the rollout batch) in tokens/s.

Run: python benchmarks/bench_rollout.py [--scale tiny] [--batch 64] [--new-tokens 128] [--repeats 3]
     python benchmarks/bench_rollout.py --scale 150m --batch 16 --new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import OlmoForCausalLM

from echo_nemo import cpu
from echo_nemo.cpu import kernels, malloc
from echo_nemo.data.sources import load_problems
from echo_nemo.distributed import init_distributed
from echo_nemo.export.hf import megatron_to_hf, olmo_config
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.model.forward import causal_forward
from echo_nemo.model.generate import generate
from echo_nemo.model.scales import get_scale
from echo_nemo.rl.experience import build_experience, micro_batches, sequence_logprobs
from echo_nemo.tokenizer import load_tokenizer


def build(scale: str, dtype: torch.dtype):
    init_distributed(tp=1, seed=0)
    tok = load_tokenizer()
    cfg = ModelConfig(scale=scale, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    ours = build_gpt(cfg, tok.vocab_size, params_dtype=dtype).eval()
    sd = {k: v for k, v in ours.state_dict().items() if not k.endswith("_extra_state") and v is not None}
    hf = OlmoForCausalLM(olmo_config(cfg, get_scale(scale), tok, dtype))
    missing, unexpected = hf.load_state_dict(megatron_to_hf(sd, get_scale(scale), tok.vocab_size), strict=False)
    # only buffers (rotary tables) may be missing: every weight must have been copied
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    hf = hf.to(device=next(ours.parameters()).device, dtype=dtype).eval()
    return ours, hf, tok


@torch.no_grad()
def check_same_logits(ours, hf, tok) -> float:
    dev = next(ours.parameters()).device
    ids = torch.tensor([tok.encode("Tom has 3 apples and buys 4 more. How many?\n\n")], device=dev)
    a = causal_forward(ours, ids)[..., : tok.vocab_size].float()
    b = hf(ids).logits.float()
    return float((a - b).abs().max())


def time_ours(ours, tok, prompts: list[str], new_tokens: int, seed: int) -> tuple[float, int]:
    _sync()
    t0 = time.perf_counter()
    out = generate(ours, tok, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0,
                   seed=seed)
    _sync()
    return time.perf_counter() - t0, out.num_tokens


@torch.no_grad()
def time_hf(hf, tok, prompts: list[str], new_tokens: int) -> tuple[float, int]:
    dev = next(hf.parameters()).device
    ids = [tok.encode(p) for p in prompts]
    width = max(map(len, ids))
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=dev)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=dev)
    _sync()
    t0 = time.perf_counter()
    out = hf.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                      top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad)
    _sync()
    return time.perf_counter() - t0, int(out[:, width:].numel())


def time_update(ours, tok, prompts: list[str], new_tokens: int, micro_batch: int) -> float:
    """Tokens/s of one policy-gradient forward+backward over a rollout batch (GPU only)."""
    out = generate(ours, tok, prompts, max_new_tokens=new_tokens, temperature=1.0, seed=0)
    exp = build_experience(out, [0.0] * len(prompts), tok.eos_id, next(ours.parameters()).device)
    ours.train()
    _sync()
    t0 = time.perf_counter()
    for sl in micro_batches(len(exp), micro_batch):
        lp, _ = sequence_logprobs(ours, exp.tokens[sl], 1.0, tok.vocab_size)
        (-(lp * exp.mask[sl]).sum()).backward()
    _sync()
    return float(exp.tokens.numel()) / (time.perf_counter() - t0)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    malloc.add_option(ap)
    args = ap.parse_args()
    cpu.use_kernels()  # as every echo-nemo command does at start-up (echo_nemo.cli)
    if args.malloc == "echo-nemo":
        malloc.keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    ours, hf, tok = build(args.scale, dtype)
    diff = check_same_logits(ours, hf, tok)
    used = "echo-nemo" if kernels.load() is not None and not torch.cuda.is_available() else "torch"
    print(f"scale {args.scale}, batch {args.batch}, {args.new_tokens} new tokens, {dtype}, "
          f"threads {torch.get_num_threads()}, malloc {args.malloc}, kernels {used}, "
          f"device {next(ours.parameters()).device}; max |logit diff| megatron vs HF = {diff:.2e}")
    prompts = [p.prompt for p in load_problems("echolab_test", limit=args.batch)]
    prompts = (prompts * (args.batch // max(1, len(prompts)) + 1))[: args.batch]
    time_ours(ours, tok, prompts[:2], 2, 0)  # warm-up (allocator, thread pools)
    time_hf(hf, tok, prompts[:2], 2)
    runs: dict[str, list[tuple[float, int]]] = {"hf": [], "ours": []}
    for r in range(args.repeats):
        runs["hf"].append(time_hf(hf, tok, prompts, args.new_tokens))
        runs["ours"].append(time_ours(ours, tok, prompts, args.new_tokens, r))
    tps = {k: statistics.median(n / t for t, n in v) for k, v in runs.items()}
    n_hf, n_ours = runs["hf"][0][1], runs["ours"][0][1]
    print(f"baseline transformers generate: {tps['hf']:10.1f} tokens/s (median of {args.repeats}; {n_hf} tokens a run)")
    print(f"echo-nemo rollout:              {tps['ours']:10.1f} tokens/s "
          f"(median of {args.repeats}; {n_ours} tokens in the first run)")
    print(f"ratio echo-nemo / transformers: {tps['ours'] / tps['hf']:.2f}x")
    if torch.cuda.is_available():
        print(f"policy update (fwd+bwd):        {time_update(ours, tok, prompts, args.new_tokens, args.micro_batch):10.1f} tokens/s")


if __name__ == "__main__":
    main()
