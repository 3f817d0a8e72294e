"""One GRPO step: echo-nemo's RL loop vs TRL's GRPOTrainer, same model, prompts and reward.

The model is a checkpoint (`--checkpoint`, e.g. the quickstart's) or a freshly initialised
one of `--scale`, exported with echo-nemo's own exporter (echo_nemo.export.hf): echo-nemo
trains the checkpoint, TRL the export of it, both in fp32 on CPU with `--threads` torch
threads. Both run GRPO with the same settings: `--prompts` echo-lab prompts a step (the
same ones every step on both sides), `--group` samples each at temperature 1, at most
`--new-tokens` new tokens, micro-batches of `--micro-batch` sequences (one optimizer step
a rollout: no old-log-prob pass, no reference model), AdamW (lr 1e-6, betas 0.9/0.95,
no weight decay, grad clip 1.0, constant lr), and echo-nemo's reward: `score()` in the
process on both sides (TRL calls it through echo_nemo.reward.adapters.trl_reward).

Each side runs in a process of its own, back to back (TRL first, then echo-nemo, for each
of `--repeats` rounds, so load from other work hits both alike), for `--steps` steps; the
figures are the last step's (the earlier ones warm up thread pools, the sandbox, caches).
Per step: generation (sampling and decoding), scoring (the reward function), update
(everything after scoring: log-probs, advantages, forward/backward, optimizer step) and
the step's total, with the mean completion length (both sides stop at EOS, so lengths
differ a little). Figure: echo-nemo steps/s; baseline: TRL's steps/s in the same run;
ratio = echo-nemo / TRL (the median over rounds). Needs trl (the `interop` extra).

Run: python benchmarks/bench_rl_step.py [--scale tiny] [--prompts 16] [--group 8] [--new-tokens 128]
     python benchmarks/bench_rl_step.py --scale 150m --prompts 4 --group 8 --new-tokens 128
     python benchmarks/bench_rl_step.py --checkpoint runs/quickstart/rl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from echo_nemo import cpu
from echo_nemo.cpu import malloc

PHASES = ("generate", "score", "update", "step")
LR = 1e-6
BETAS = (0.9, 0.95)


def _problems(n: int) -> list:
    from echo_nemo.data.sources import load_problems

    return load_problems("echolab_test", limit=n)


# ----------------------------------------------------------------------------- the model
def prepare(args: argparse.Namespace, work: Path) -> None:
    """`work/ckpt` (a fresh model of --scale, unless --checkpoint) and its export `work/hf`."""
    from echo_nemo import distributed as D
    from echo_nemo.export.hf import export_hf

    ckpt = args.checkpoint
    if ckpt is None:
        from echo_nemo.checkpoint import save_checkpoint
        from echo_nemo.model.build import ModelConfig, build_gpt
        from echo_nemo.tokenizer import load_tokenizer

        D.init_distributed(tp=1, seed=0)
        tok = load_tokenizer()
        cfg = ModelConfig(scale=args.scale, vocab_size=tok.vocab_size)
        torch.manual_seed(0)
        model = build_gpt(cfg, tok.vocab_size, params_dtype=torch.float32)
        tok.save(work / "ckpt" / "tokenizer")
        save_checkpoint(work / "ckpt", 0, model, None, model_config=cfg, tokenizer=work / "ckpt" / "tokenizer")
        ckpt = work / "ckpt"
    export_hf(ckpt, work / "hf")
    (work / "ckpt.txt").write_text(str(ckpt))


# ----------------------------------------------------------------------------- echo-nemo
def run_ours(args: argparse.Namespace, work: Path) -> list[dict]:
    """`--steps` GRPO steps of `echo-nemo rl`'s loop; each step's phase times from metrics.jsonl."""
    from echo_nemo.rl.config import RLConfig
    from echo_nemo.rl.run import run_rl

    cfg = RLConfig(algorithm="grpo", run_dir=str(work / "ours"), seed=0, steps=args.steps, num_checkpoints=1)
    cfg.model.init = (work / "ckpt.txt").read_text()
    cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt = args.prompts, args.group
    cfg.rollout.max_new_tokens = args.new_tokens
    cfg.rollout.max_prompt_tokens = 256
    cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay = LR, list(BETAS), 0.0
    cfg.optim.warmup_frac, cfg.optim.min_lr_ratio, cfg.optim.grad_clip = 0.0, 1.0, 1.0
    cfg.optim.micro_batch_size = args.micro_batch
    cfg.checkpoint.every = 0
    cfg.reward.in_process = True
    run_rl(cfg, problems=_problems(args.prompts), eval_problems=[])
    rows = [json.loads(line) for line in (work / "ours" / "metrics.jsonl").read_text().splitlines()]
    out = []
    for row in rows:
        update = sum(row.get(f"time/{k}_s", 0.0) for k in ("logprobs", "advantages", "update"))
        phases = {"generate": row["time/generate_s"], "score": row["time/score_s"], "update": update}
        out.append({**phases, "step": sum(phases.values()), "length": row["response_length/mean"],
                    "reward": row["reward/mean"]})
    return out


# ----------------------------------------------------------------------------- TRL
def run_trl(args: argparse.Namespace, work: Path) -> list[dict]:
    """`--steps` steps of TRL's GRPOTrainer on the export; generation and scoring timed
    around the trainer's own `_generate` and `_calculate_rewards`, the step by callbacks."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from echo_nemo.reward.adapters import trl_reward

    rows = [{"prompt": p.prompt, "answer": p.answer} for p in _problems(args.prompts)]
    n = args.prompts * args.group
    conf = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, max_steps=args.steps,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=n // args.micro_batch,
        num_generations=args.group, max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", optim="adamw_torch", logging_steps=1, report_to="none", save_strategy="no",
        seed=0, disable_tqdm=True, dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32},
    )
    trainer = GRPOTrainer(model=str(work / "hf"), reward_funcs=trl_reward, args=conf,
                          train_dataset=Dataset.from_list(rows))
    steps: list[dict] = []
    current: dict = {}

    def timed(phase: str, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                current[phase] = current.get(phase, 0.0) + time.perf_counter() - t0
        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("score", trainer._calculate_rewards)

    class Steps(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            current.clear()
            current["t0"] = time.perf_counter()

        def on_step_end(self, *a, **kw):
            total = time.perf_counter() - current.pop("t0")
            gen, score = current.get("generate", 0.0), current.get("score", 0.0)
            steps.append({"generate": gen, "score": score, "update": total - gen - score, "step": total})

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and steps:
                steps[-1]["length"] = logs["completions/mean_length"]
                steps[-1]["reward"] = logs.get("reward", 0.0)

    trainer.add_callback(Steps())
    trainer.train()
    return steps


# ----------------------------------------------------------------------------- driver
def side(args: argparse.Namespace) -> None:
    """One side in this process; its per-step figures as JSON to --result."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.side == "prepare":
        prepare(args, work)
        return
    steps = run_ours(args, work) if args.side == "ours" else run_trl(args, work)
    Path(args.result).write_text(json.dumps(steps))


def run_side(name: str, args: argparse.Namespace, work: Path, tag: str) -> list[dict]:
    result = work / f"{tag}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--side", name, "--work", str(work), "--result", str(result)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("side", "work", "result", "repeats") and v is not None]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{name} side failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(result.read_text()) if name != "prepare" else []


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    med = {k: {p: statistics.median(r[p] for r in v) for p in (*PHASES, "length")} for k, v in runs.items()}
    print(f"{'':28s}{'generate':>10s}{'score':>10s}{'update':>10s}{'step':>10s}{'steps/s':>10s}{'new tok':>9s}")
    for key, label in (("trl", "baseline TRL GRPOTrainer"), ("ours", "echo-nemo rl (grpo)")):
        m = med[key]
        print(f"{label:28s}" + "".join(f"{m[p]:9.2f}s" for p in PHASES) + f"{1 / m['step']:10.3f}{m['length']:9.1f}")
    ratios = [t["step"] / o["step"] for t, o in zip(runs["trl"], runs["ours"])]
    for p in ("generate", "score", "update"):
        if med["ours"][p] > 0:
            print(f"  {p} ratio TRL / echo-nemo: {med['trl'][p] / med['ours'][p]:.2f}x")
    print(f"ratio echo-nemo / TRL steps/s: {statistics.median(ratios):.2f}x "
          f"(median of {len(ratios)} round(s): {', '.join(f'{r:.2f}' for r in ratios)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint or run dir (default: a fresh --scale model)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2, help="steps per side; the last one is reported")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (TRL, echo-nemo)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", choices=["prepare", "ours", "trl"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    malloc.add_option(ap)
    args = ap.parse_args()
    cpu.use_kernels()  # as every echo-nemo command does at start-up (echo_nemo.cli)
    if args.malloc == "echo-nemo":
        malloc.keep_freed_memory()  # both sides: what every echo-nemo command applies
    if args.side:
        side(args)
        return
    if (args.prompts * args.group) % args.micro_batch:
        ap.error("--prompts x --group must be a multiple of --micro-batch")
    print(f"GRPO step on CPU, fp32, threads {args.threads}, malloc {args.malloc}: "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'fresh ' + args.scale + ' model'}, "
          f"{args.prompts} prompts x {args.group} samples, <= {args.new_tokens} new tokens, "
          f"micro-batch {args.micro_batch}, {args.steps} steps a side (last one reported)")
    with tempfile.TemporaryDirectory(prefix="bench_rl_step_") as tmp:
        work = Path(tmp)
        run_side("prepare", args, work, "prepare")
        runs: dict[str, list[dict]] = {"trl": [], "ours": []}
        for r in range(args.repeats):
            for name in ("trl", "ours"):
                runs[name].append(run_side(name, args, work, f"{name}{r}")[-1])
                if name == "ours":
                    shutil.rmtree(work / "ours")  # the next round starts a fresh run, not a resume
    report(runs, args)


if __name__ == "__main__":
    main()
