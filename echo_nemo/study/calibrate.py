"""Calibration: each format's greedy accuracy on a base model, each format forced by its opening.

Before a finding compares formats under RL, the formats must be able to compete: the fair
study needs the two strongest within a few points on the base (pretrained) model. For
every format f the prompt is the problem's prompt followed by f's opening (the words its
pretraining documents start with), the model continues greedily, and the completion
scored is opening + continuation (reward.score: the same reward RL uses):

    acc(f)       = mean over problems of reward(opening_f + greedy continuation)
    in_format(f) = share of those completions that parse as format f (reward.formats)
    gap_top2     = acc(first) - acc(second), the two most accurate formats
    sampled(f)   = with samples = n > 0: mean reward of n continuations per problem at
                   `temperature` (what RL's rollouts see; noise in a corpus that greedy
                   decoding averages away shows here)

The report (`Calibration.table`) lists every format's forced accuracy; `context()` gives
the `calibration/*` quantities that pre-registered preconditions name (e.g.
`calibration/gap_top2 <= 0.05`: "formats within 5 points"; `calibration/acc_min >= 0.10`).
A format whose corpus has no fixed opening (the default `text` format begins with its
first step) is forced by `TEXT_OPENING`, the fair corpus's text opening: on a model
pretrained on the default corpus, `in_format` shows how far that forcing took.

Run: `echo-nemo calibrate CHECKPOINT [k=v ...] [--out DIR]` (or `python -m
echo_nemo.study.calibrate`, the same) writes calibration.json, calibration.md and
samples.jsonl into DIR (default: CHECKPOINT/calibration).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from echo_nemo.data.echolab_fair import TEXT_OPENING
from echo_nemo.data.sources import BENCHMARKS, load_problems
from echo_nemo.errors import UserError
from echo_nemo.reward import score
from echo_nemo.reward.formats import FORMATS

# Each ends before the newline its documents continue with: the model writes it, so that
# the token at the seam is the one pretraining saw (a BPE merges a newline with the indent).
OPENINGS = {
    "tinygsm": "def simple_math_problem() -> int:",
    "llm_code": "Let's solve this problem using Python code.",
    "text": TEXT_OPENING,
}


@dataclass
class CalibrateConfig:
    benchmark: str = "echolab"  # a benchmark of data.sources.BENCHMARKS
    limit: int | None = 200  # first N problems
    max_new_tokens: int = 256
    max_prompt_tokens: int | None = None
    batch_size: int = 64
    samples: int = 0  # > 0: also that many sampled continuations per problem (sampled accuracy)
    temperature: float = 0.7
    seed: int = 0
    openings: dict[str, str] = field(default_factory=lambda: dict(OPENINGS))  # format -> forced opening

    def validate(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise UserError(f"calibrate: benchmark {self.benchmark!r} is not one of {', '.join(BENCHMARKS)}")
        bad = [f for f in self.openings if f not in FORMATS[:-1]]
        if bad or not self.openings:
            raise UserError(f"calibrate: openings must name solution formats ({', '.join(FORMATS[:-1])}), got "
                            f"{list(self.openings)}")
        if (self.limit is not None and self.limit < 1) or self.max_new_tokens < 1 or self.batch_size < 1:
            raise UserError("calibrate: limit, max_new_tokens and batch_size must be >= 1")
        if self.samples < 0 or (self.samples > 0 and self.temperature <= 0):
            raise UserError("calibrate: samples must be >= 0 and temperature > 0")


@dataclass(frozen=True)
class FormatRow:
    format: str
    opening: str
    problems: int
    accuracy: float  # mean reward of opening + greedy continuation
    in_format: float  # share of those completions that parse as this format
    sampled_accuracy: float | None = None  # mean reward of the sampled continuations


@dataclass(frozen=True)
class Calibration:
    rows: dict[str, FormatRow]

    def ranked(self) -> list[FormatRow]:
        """Rows by accuracy, highest first (ties: the order of `rows`)."""
        return sorted(self.rows.values(), key=lambda r: -r.accuracy)

    @property
    def gap_top2(self) -> float:
        """acc(first) - acc(second); 0 with one format."""
        r = self.ranked()
        return r[0].accuracy - r[1].accuracy if len(r) > 1 else 0.0

    def context(self) -> dict[str, float]:
        """The `calibration/*` quantities preconditions name."""
        out = {"calibration/gap_top2": self.gap_top2,
               "calibration/acc_min": min(r.accuracy for r in self.rows.values()),
               "calibration/acc_max": max(r.accuracy for r in self.rows.values())}
        for f, r in self.rows.items():
            out[f"calibration/acc/{f}"] = r.accuracy
            out[f"calibration/in_format/{f}"] = r.in_format
            if r.sampled_accuracy is not None:
                out[f"calibration/sampled_acc/{f}"] = r.sampled_accuracy
        return out

    def table(self) -> str:
        """Markdown: every format's forced greedy accuracy, then the gap of the top two."""
        lines = ["| format | forced opening | problems | greedy accuracy | in format | sampled accuracy |",
                 "|---|---|---|---|---|---|"]
        for r in self.ranked():
            opening = r.opening.replace("\n", "\\n").replace("|", "\\|")
            sampled = "-" if r.sampled_accuracy is None else f"{r.sampled_accuracy:.3f}"
            lines.append(f"| {r.format} | `{opening}` | {r.problems} | {r.accuracy:.3f} | {r.in_format:.2f} | {sampled} |")
        top = self.ranked()[:2]
        lines.append("")
        lines.append(f"gap of the two most accurate formats ({' - '.join(r.format for r in top)}): "
                     f"{self.gap_top2 * 100:.1f} points")
        return "\n".join(lines)


def score_forced(completions: dict[str, list[str]], truths: list[str], openings: dict[str, str],
                 sampled: dict[str, list[str]] | None = None) -> tuple[Calibration, list[dict[str, Any]]]:
    """(calibration, per-sample records) from each format's full greedy completions (opening
    included) and, optionally, its sampled ones (n per problem, problem i's at [i*n, (i+1)*n)),
    scored by the RL reward (reward.score)."""
    rows, records = {}, []
    for fmt, comps in completions.items():
        scores = score(comps, truths)
        n = len(comps)
        extra = (sampled or {}).get(fmt)
        sampled_acc = None
        if extra:
            per = len(extra) // len(truths)
            s_scores = score(extra, [t for t in truths for _ in range(per)])
            sampled_acc = sum(s.reward for s in s_scores) / len(s_scores)
            records += [{"forced": fmt, "mode": "sample", "completion": c, **s.to_dict()}
                        for c, s in zip(extra, s_scores)]
        rows[fmt] = FormatRow(fmt, openings[fmt], n, sum(s.reward for s in scores) / n,
                              sum(s.format == fmt for s in scores) / n, sampled_acc)
        records += [{"forced": fmt, "mode": "greedy", "completion": c, **s.to_dict()} for c, s in zip(comps, scores)]
    return Calibration(rows), records


def generate_forced(model, tokenizer, prompts: list[str], cfg: CalibrateConfig, samples: int = 0,
                    bar: tqdm | None = None) -> dict[str, list[str]]:
    """Each format's completions: opening + the continuation of prompt + opening; greedy
    (samples = 0), else `samples` draws per problem at cfg.temperature, problem-major.
    `bar` counts the completions as they are made."""
    from echo_nemo.model.generate import generate  # torch: imported when a model is in hand

    out: dict[str, list[str]] = {}
    for fmt, opening in cfg.openings.items():
        forced = [p + opening for p in prompts for _ in range(max(1, samples))]
        comps: list[str] = []
        for start in range(0, len(forced), cfg.batch_size):
            chunk = forced[start : start + cfg.batch_size]
            kw = dict(temperature=cfg.temperature, seed=cfg.seed + start) if samples else dict(greedy=True)
            roll = generate(model, tokenizer, chunk, max_new_tokens=cfg.max_new_tokens, batch_size=len(chunk),
                            max_prompt_tokens=cfg.max_prompt_tokens, **kw)
            comps += [opening + c for c in roll.completions]
            if bar is not None:
                bar.update(len(chunk))
        out[fmt] = comps
    return out


def calibrate_model(model, tokenizer, problems: list, cfg: CalibrateConfig) -> tuple[Calibration, list[dict[str, Any]]]:
    """The calibration of a model in memory on `problems` (objects with .prompt and .answer)."""
    prompts = [p.prompt for p in problems]
    total = len(prompts) * len(cfg.openings) * (1 + cfg.samples)
    with tqdm(total=total, desc="calibrate", unit="completion", mininterval=1) as bar:
        comps = generate_forced(model, tokenizer, prompts, cfg, bar=bar)
        sampled = generate_forced(model, tokenizer, prompts, cfg, cfg.samples, bar) if cfg.samples else None
    return score_forced(comps, [p.answer for p in problems], cfg.openings, sampled)


def run_calibration(checkpoint: str, cfg: CalibrateConfig, out: str | os.PathLike | None = None) -> Calibration:
    """Load the checkpoint, calibrate it on the benchmark, write calibration.json / .md and
    samples.jsonl into `out` (default: <checkpoint>/calibration)."""
    # torch and megatron: imported when a checkpoint is loaded
    from echo_nemo.checkpoint import load_model_for_inference, resolve_checkpoint

    cfg.validate()
    ckpt = resolve_checkpoint(checkpoint)
    problems = load_problems(BENCHMARKS[cfg.benchmark], limit=cfg.limit)
    model, tokenizer, _ = load_model_for_inference(ckpt)
    cal, records = calibrate_model(model, tokenizer, problems, cfg)
    out_dir = Path(out) if out else Path(checkpoint) / "calibration"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(ckpt), "benchmark": cfg.benchmark, "config": asdict(cfg),
              "formats": {f: asdict(r) for f, r in cal.rows.items()}, "context": cal.context()}
    (out_dir / "calibration.json").write_text(json.dumps(report, indent=1))
    (out_dir / "calibration.md").write_text(f"# Calibration of {ckpt}\n\n{cal.table()}\n")
    (out_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return cal


def main(argv: list[str] | None = None) -> int:
    """`python -m echo_nemo.study.calibrate`: the `echo-nemo calibrate` command (exit 2 on bad input)."""
    from echo_nemo.cli import main as cli_main  # the CLI's error handling and CPU set-up

    return cli_main(["calibrate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
