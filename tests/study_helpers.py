"""A small study recipe (real recipes of the repo) and RL-format metric files for its runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from echo_nemo.metrics import MetricsLogger

REPO = Path(__file__).resolve().parents[1]

STUDY = f"""
name: mini
pretrain_seeds: [0, 1]
seeds: 3
tuning: RL hyperparameters tuned on pretraining seed 100
expectations: EXPECTATIONS
calibration: [limit=4]
final_eval: {{recipe: {REPO}/recipes/eval/echolab_tiny_cpu.yaml, overrides: [limit=10]}}
pretrain:
  base: {{data: {REPO}/recipes/data/echo_tg_omi1_omi2.yaml, recipe: {REPO}/recipes/pretrain/quickstart_smoke.yaml}}
  # twice base's steps: its mixture holds twice base's tokens (test_study_report's manifests),
  # so both see the same code tokens
  text4x: {{data: {REPO}/recipes/data/echo_tg_omi1_4xomi2.yaml, recipe: {REPO}/recipes/pretrain/quickstart_smoke.yaml,
           overrides: [train.steps=80]}}
findings:
  f1:
    title: collapse
    claim: one format takes over
    factor: seed
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [eval_every=1]
    levels: {{grpo: {{}}}}
  f3:
    title: mixture
    claim: the mixture decides
    factor: text repeats
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    levels: {{1x: {{}}, 4x: {{pretrain: text4x}}}}
  f4:
    title: KL
    claim: KL keeps minority formats
    factor: kl.coef
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [eval_every=1]
    levels: {{"0": {{rl: [kl.coef=0.0]}}, "0.1": {{rl: [kl.coef=0.1]}}, "1.0": {{rl: [kl.coef=1.0]}}}}
    evals: [{{recipe: {REPO}/recipes/eval/echolab_tiny_cpu.yaml, over_steps: true, label: steps}}]
  f5:
    title: transfer
    claim: easy to hard
    factor: rl data
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [data.eval_limit=4]
    levels: {{easy: {{}}}}
    evals: [{{recipe: {REPO}/recipes/eval/echolab_tiny_cpu.yaml, before: true, label: hard}}]
  f6:
    title: algorithms
    claim: GRPO like PPO
    factor: algorithm
    rl_recipe: {REPO}/recipes/rl/quickstart_smoke.yaml
    rl: [eval_every=1]
    levels: {{grpo: {{}}, ppo: {{rl: [algorithm=ppo]}}}}
budgets:
  full: {{}}
  smoke: {{rl: [steps=2], max_levels: 2, pretrain_seeds: [0], calibration: [max_new_tokens=8], data: [echolab.num_problems=40, echolab.num_background=0, seq_length=128,
                                                  sequences_per_shard=100, num_workers=1]}}
"""


# the mini study's pre-registered expectations (one per finding kind of quantity)
EXPECTATIONS = """
expectations:
  f1_collapse:
    finding: f1
    claim: one format takes over
    expectation: the final top format holds more than half the greedy generations
    quantity: top_share_final
    null_value: 0.5
    preconditions:
      - {quantity: design/same_final_eval, op: ">=", value: 1, text: one eval of every final model}
  f1_epoch:
    finding: f1
    expectation: the collapse comes within the first epoch
    quantity: collapse_epoch
    direction: -1
    null_value: 1.0
    preconditions:
      - {quantity: design/rl_epochs, op: ">=", value: 1.0, text: RL runs at least one epoch}
  f3_text:
    finding: f3
    expectation: the text share rises more under RL at 4x text than at 1x
    quantity: text_share_change
    contrast: [1x, 4x]
    effect: 0.1
    preconditions:
      - {quantity: calibration/gap_top2, op: "<=", value: 0.05, text: two strongest formats within 5 points}
      - {quantity: design/code_tokens_ratio_min, op: ">=", value: 0.5, text: code tokens kept}
  f4_passk:
    finding: f4
    expectation: pass@k falls less late at KL 1 than at KL 0
    quantity: passk_late_drop
    eval: steps
    contrast: ["0", "1.0"]
    direction: -1
    preconditions:
      - {quantity: design/checkpoints, op: ">=", value: 2, text: two or more checkpoints}
  f5_transfer:
    finding: f5
    expectation: hard accuracy rises under RL
    quantity: hard_acc_change
    eval: hard
    preconditions:
      - {quantity: acc_before/hard, op: ">=", value: 0.10, text: at least 10% before RL}
  f6_acc:
    finding: f6
    expectation: PPO ends more accurate than GRPO
    quantity: acc_final
    contrast: [grpo, ppo]
    effect: 0.05
    preconditions:
      - {quantity: acc_before/min, op: ">=", value: 0.10, text: every level at least 10% before RL}
"""


def write_study(tmp_path: Path, text: str = STUDY, expectations: str = EXPECTATIONS) -> Path:
    """The study recipe (and its expectations file) under tmp_path/recipes/study."""
    path = tmp_path / "recipes" / "study" / "mini.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    exp = path.parent / "_mini_expectations.yaml"
    exp.write_text(expectations)
    path.write_text(text.replace("EXPECTATIONS", str(exp)))
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
            if step % 5 == 0:  # the held-out greedy eval: accuracy and the greedy shares
                row["acc/echolab/pass@1"] = 0.3 + 0.5 * w
                row.update({f"eval/{k}": v for k, v in row.items() if k.endswith("/share")})
            log.log(step, row)


def write_eval_over_steps(run_dir: Path, drop: float) -> None:
    """Eval-over-steps rows: pass@8 peaks at step 10 and falls `drop` by step 20."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": 0, "acc/echolab/pass@1": 0.3, "acc/echolab/pass@8": 0.8, "acc/echolab/maj@8": 0.4},
            {"step": 10, "acc/echolab/pass@1": 0.5, "acc/echolab/pass@8": 0.9, "acc/echolab/maj@8": 0.6},
            {"step": 20, "acc/echolab/pass@1": 0.6, "acc/echolab/pass@8": 0.9 - drop, "acc/echolab/maj@8": 0.7}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_eval_results(run_dir: Path, pass1: float, bench: str = "echolab",
                       shares: dict[str, float] | None = None) -> None:
    """An eval run's results.json (the fields the study report reads): pass@1 and the greedy
    format shares (default: the three formats alike)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shares = shares or {"tinygsm": 0.3, "llm_code": 0.3, "text": 0.3}
    stats = {f: {"share": shares.get(f, 0.0), "count": 0, "acc": None} for f in ("tinygsm", "llm_code", "text")}
    stats["other"] = {"share": round(1 - sum(shares.values()), 6), "count": 0, "acc": None}
    (run_dir / "results.json").write_text(json.dumps(
        {"benchmarks": {bench: {"pass@1": pass1, "problems": 10, "greedy_formats": stats, "formats": stats}}}))


def mark_done(run_dir: Path, wall_s: float) -> None:
    """The sweep's done marker with the run's wall time (as PointJob writes it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".sweep_done").write_text(json.dumps({"finished": 0, "wall_s": wall_s, "argv": [], "run_dir": ""}))
