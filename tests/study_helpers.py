"""A small study recipe (real recipes of the repo) and RL-format metric files for its runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from echo_nemo.metrics import MetricsLogger

REPO = Path(__file__).resolve().parents[1]

STUDY = f"""
name: mini
seeds: 3
pretrain:
  base: {{data: {REPO}/recipes/data/echo_tg_omi1_omi2.yaml, recipe: {REPO}/recipes/pretrain/quickstart_smoke.yaml}}
  text4x: {{data: {REPO}/recipes/data/echo_tg_omi1_4xomi2.yaml, recipe: {REPO}/recipes/pretrain/quickstart_smoke.yaml}}
findings:
  f1:
    title: collapse
    claim: one format takes over
    factor: seed
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [eval_every=1]
    levels: {{grpo: {{}}}}
    verdict: collapse
  f3:
    title: mixture
    claim: the mixture decides
    factor: text repeats
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    levels: {{1x: {{}}, 4x: {{pretrain: text4x}}}}
    verdict: mixture
  f4:
    title: KL
    claim: KL keeps minority formats
    factor: kl.coef
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [eval_every=1]
    levels: {{"0": {{rl: [kl.coef=0.0]}}, "0.1": {{rl: [kl.coef=0.1]}}, "1.0": {{rl: [kl.coef=1.0]}}}}
    evals: [{{recipe: {REPO}/recipes/eval/echolab_tiny_cpu.yaml, over_steps: true, label: steps}}]
    verdict: kl
  f5:
    title: transfer
    claim: easy to hard
    factor: rl data
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [data.eval_limit=4]
    levels: {{easy: {{}}}}
    evals: [{{recipe: {REPO}/recipes/eval/echolab_tiny_cpu.yaml, before: true, label: hard}}]
    verdict: transfer
  f6:
    title: algorithms
    claim: GRPO like PPO
    factor: algorithm
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [eval_every=1]
    levels: {{grpo: {{}}, ppo: {{rl: [algorithm=ppo]}}}}
    verdict: algorithms
budgets:
  full: {{}}
  smoke: {{rl: [steps=2], max_levels: 2, data: [echolab.num_problems=40, echolab.num_background=0, seq_length=128,
                                                  sequences_per_shard=100, num_workers=1]}}
"""


def write_study(tmp_path: Path, text: str = STUDY) -> Path:
    path = tmp_path / "recipes" / "study" / "mini.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_rl_run(run_dir: Path, winner: str, speed: float, seed: int, steps: int = 20) -> None:
    """RL rows: `winner` rises from 1/3 towards 1 - floor at rate `speed` (floor: the
    minority share kept, larger when slower), seeds start up to 0.1 x seed lower; greedy accuracy
    every 5 steps rises most while the winner takes over."""
    others = [f for f in ("tinygsm", "llm_code", "text") if f != winner]
    floor = 0.02 / speed
    with MetricsLogger(run_dir, tensorboard=False) as log:
        for step in range(1, steps + 1):
            w = 1 / 3 + (1 - floor - 1 / 3) * (1 - math.exp(-speed * step)) - 0.1 * seed * math.exp(-step / 8)
            row = {"reward/mean": w, f"format/{winner}/share": w, "format/other/share": 0.0,
                   f"format/{winner}/acc": 0.8 + 0.01 * seed}
            for f in others:
                row[f"format/{f}/share"] = (1 - w) / 2
                row[f"format/{f}/acc"] = 0.4
            if step % 5 == 0:
                row["acc/echolab/pass@1"] = 0.3 + 0.5 * w
            log.log(step, row)


def write_eval_over_steps(run_dir: Path, drop: float) -> None:
    """Eval-over-steps rows: pass@8 peaks at step 10 and falls `drop` by step 20."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": 0, "acc/echolab/pass@1": 0.3, "acc/echolab/pass@8": 0.8, "acc/echolab/maj@8": 0.4},
            {"step": 10, "acc/echolab/pass@1": 0.5, "acc/echolab/pass@8": 0.9, "acc/echolab/maj@8": 0.6},
            {"step": 20, "acc/echolab/pass@1": 0.6, "acc/echolab/pass@8": 0.9 - drop, "acc/echolab/maj@8": 0.7}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_eval_results(run_dir: Path, pass1: float, bench: str = "echolab") -> None:
    """An eval run's results.json (the fields the study report reads)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"benchmarks": {bench: {"pass@1": pass1, "problems": 10}}}))
