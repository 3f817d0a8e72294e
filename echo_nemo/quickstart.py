"""`echo-nemo quickstart`: the echo chamber on a CPU in minutes, end to end.

    data build (three-format echo-lab mixture) -> pretrain the tiny model -> eval
    -> RL (GRPO) -> eval -> report -> summary

Each stage is the real `echo-nemo` command run as a child process (so each gets a
clean process group and its own progress bar), writing its own run dir under --out:
data/, pretrain/, eval_before/, rl/, eval_after/, report/, and summary.json with the
format shares and accuracy before and after RL. Budgets:

- full: the effect: 1000 pretraining steps, 50 GRPO steps (16 prompts x 8 samples; the
  held-out set evaluated greedily at steps 0, 10, ..., 50, for the report's curves) and two
  evaluations; about 9 min on 2 cores that pretrain at ~15,000 tokens/s, 10-11 at
  ~10,000-12,500, up to 20 on a slow machine at ~6,000 (docs/performance.md).
- smoke: the same pipeline at plumbing size for CI (under a minute); it shows no effect.

Running again with the same --out continues: the data build skips an up-to-date
corpus and pretraining/RL resume from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from echo_nemo.config import RECIPES_DIR
from echo_nemo.errors import UserError


@dataclass
class QuickstartBudget:
    """One size of the quickstart: each stage's recipe and the overrides that size it."""

    data_recipe: str
    data_overrides: list[str]
    pretrain_recipe: str
    rl_recipe: str
    eval_recipe: str
    eval_overrides: list[str] = field(default_factory=list)
    pretrain_overrides: list[str] = field(default_factory=list)
    rl_overrides: list[str] = field(default_factory=list)


BUDGETS: dict[str, QuickstartBudget] = {
    "full": QuickstartBudget(
        data_recipe="data/echo_tg_omi1_omi2.yaml",
        data_overrides=[],
        pretrain_recipe="pretrain/quickstart_full.yaml",
        rl_recipe="rl/quickstart_full.yaml",
        eval_recipe="eval/echolab_tiny_cpu.yaml",
    ),
    "smoke": QuickstartBudget(
        data_recipe="data/echo_tg_omi1_omi2.yaml",
        data_overrides=["echolab.num_problems=400", "echolab.num_background=0", "seq_length=128",
                        "sequences_per_shard=200", "num_workers=1"],
        pretrain_recipe="pretrain/quickstart_smoke.yaml",
        rl_recipe="rl/quickstart_smoke.yaml",
        eval_recipe="eval/echolab_tiny_cpu.yaml",
        eval_overrides=["limit=12", "sampling.n=4", "ks=[1,2,4]", "max_new_tokens=48", "batch_size=48"],
    ),
}

# Thresholds of the claim the full budget is tuned to show (issue: "the effect").
BEFORE_MAX_SHARE = 0.60
AFTER_MIN_SHARE = 0.90


def _stage(console, index: int, total: int, name: str, argv: list[str], log: Path) -> float:
    """Run `echo-nemo ARGV` as a child; its output goes to the terminal and to `log`."""
    console.rule(f"[bold][{index}/{total}] {name}")
    console.print(f"[dim]$ echo-nemo {' '.join(argv)}[/dim]")
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "echo_nemo.cli", *argv]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=False)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            f.write(chunk.decode(errors="replace"))
        rc = proc.wait()
    took = time.perf_counter() - t0
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:]).strip()
        raise UserError(f"quickstart stage {name!r} failed (exit {rc}); full log in {str(log)!r}:\n{tail}")
    console.print(f"[green]done[/green] {name} in {took:.0f} s")
    return took


def _side(results: dict[str, Any], bench: str = "echolab") -> dict[str, Any]:
    b = results["benchmarks"][bench]
    return {
        "pass@1_greedy": b.get("pass@1"),
        "sample_acc": b.get("sample_acc"),
        f"maj@{b.get('k')}": b.get("maj_at_k"),
        "formats_sampled": {f: s["share"] for f, s in b["formats"].items()},
        "format_acc_sampled": {f: s["acc"] for f, s in b["formats"].items()},
        "formats_greedy": {f: s["share"] for f, s in b.get("greedy_formats", b["formats"]).items()},
        "problems": b["problems"],
        "samples_per_problem": b.get("n", 0),
        "temperature": results.get("sampling", {}).get("temperature"),
    }


def summarize(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Before/after figures and the three checks of the claimed effect (pure).

    Shares are of the sampled generations (the eval's temperature, 0.7 by default),
    counting unclassifiable output (`other`) in the denominator;
    greedy shares are reported beside them. Accuracy is greedy pass@1 on the echo-lab
    test problems.
    """
    # the reward package loads its scorer (sympy, the sandbox): not for `echo-nemo --help`
    from echo_nemo.reward.format_stats import dominant_format

    b, a = _side(before), _side(after)
    # `other` (unclassifiable output) is not a solution format: it never "wins"
    b_fmt, b_share = dominant_format({f: v for f, v in b["formats_sampled"].items() if f != "other"})
    a_fmt, a_share = dominant_format({f: v for f, v in a["formats_sampled"].items() if f != "other"})
    return {
        "before": {**b, "dominant_format": b_fmt, "dominant_share": b_share},
        "after": {**a, "dominant_format": a_fmt, "dominant_share": a_share},
        "checks": {
            f"before: no format above {BEFORE_MAX_SHARE:.0%}": b_share <= BEFORE_MAX_SHARE,
            f"after: one format at or above {AFTER_MIN_SHARE:.0%}": a_share >= AFTER_MIN_SHARE,
            "accuracy rises": (a["pass@1_greedy"] or 0) > (b["pass@1_greedy"] or 0),
        },
    }


def print_summary(console, summary: dict[str, Any]) -> None:
    from echo_nemo.reward.formats import FORMATS  # as in summarize: the reward package is heavy

    table = Table(title="echo chamber: echo-lab test set before / after RL")
    table.add_column("")
    table.add_column("before RL", justify="right")
    table.add_column("after RL", justify="right")
    b, a = summary["before"], summary["after"]
    for f in FORMATS:
        table.add_row(f"share {f} (sampled)", f"{b['formats_sampled'][f]:.1%}", f"{a['formats_sampled'][f]:.1%}")
    for f in FORMATS[:3]:
        table.add_row(f"share {f} (greedy)", f"{b['formats_greedy'][f]:.1%}", f"{a['formats_greedy'][f]:.1%}")
    table.add_row("accuracy, greedy pass@1", f"{b['pass@1_greedy']:.1%}", f"{a['pass@1_greedy']:.1%}")
    if b.get("sample_acc") is not None:
        table.add_row("accuracy, sampled", f"{b['sample_acc']:.1%}", f"{a['sample_acc']:.1%}")
    console.print(table)
    for check, ok in summary["checks"].items():
        console.print(f"  {'[green]yes[/green]' if ok else '[red]no[/red] '}  {check}")
    console.print(f"report: {summary['report']}")
    console.print(f"summary: {summary['summary_path']}  (total {summary['total_s'] / 60:.1f} min)")


STAGE_KINDS = ("data", "pretrain", "eval", "rl")


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
    """`["rl:optim.lr=1e-4", "eval:limit=100"]` -> {"rl": ["optim.lr=1e-4"], "eval": ["limit=100"], ...}."""
    out: dict[str, list[str]] = {k: [] for k in STAGE_KINDS}
    for item in items:
        stage, sep, kv = item.partition(":")
        if not sep or stage not in out or "=" not in kv:
            raise UserError(
                f"--set {item!r}: expected STAGE:key=value with STAGE one of {', '.join(STAGE_KINDS)} "
                "(e.g. rl:optim.lr=1e-4)"
            )
        out[stage].append(kv)
    return out


def run_quickstart(out: Path, budget: str, seed: int, overrides: list[str] | None = None,
                   pretrained: str | None = None) -> dict[str, Any]:
    """Run every stage into `out`; returns (and writes) summary.json's content.

    `overrides` ("STAGE:key=value") tune a stage's recipe; `pretrained` (a pretrain run
    dir) skips the data and pretraining stages and starts from that model.
    """
    # matplotlib loads for the report stage, not for `echo-nemo --help`
    from echo_nemo.report.html import build_report

    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)}")
    extra = parse_overrides(overrides or [])
    if pretrained is not None and not Path(pretrained, "checkpoints").is_dir():
        raise UserError(f"--pretrained {pretrained!r}: expected a pretrain run dir with checkpoints/")
    console = Console()
    out = out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    d = {name: out / name for name in ("data", "pretrain", "eval_before", "rl", "eval_after", "report")}
    if pretrained is not None:
        d["pretrain"] = Path(pretrained).resolve()
    stages = stage_commands(BUDGETS[budget], d, seed, extra, skip_pretraining=pretrained is not None)
    console.print(f"[bold]echo-nemo quickstart[/bold]: budget={budget} seed={seed} out={out}")
    t_start = time.perf_counter()
    times: dict[str, float] = {}
    for i, (name, argv) in enumerate(stages, 1):
        times[name] = _stage(console, i, len(stages) + 1, name, argv, out / "logs" / f"{name}.log")
    console.rule(f"[bold][{len(stages) + 1}/{len(stages) + 1}] report")
    t0 = time.perf_counter()
    index = build_report([d["eval_before"], d["rl"], d["eval_after"]], d["report"],
                         title=f"echo-nemo quickstart ({budget}, seed {seed})")
    times["report"] = time.perf_counter() - t0

    before = json.loads((d["eval_before"] / "results.json").read_text())
    after = json.loads((d["eval_after"] / "results.json").read_text())
    summary = {
        "budget": budget, "seed": seed, "out": str(out), "overrides": list(overrides or []),
        "pretrained": pretrained,
        **summarize(before, after),
        "report": str(index),
        "run_dirs": {k: str(v) for k, v in d.items()},
        "times_s": times,
        "total_s": time.perf_counter() - t_start,
        "summary_path": str(out / "summary.json"),
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    print_summary(console, summary)
    return summary


def stage_commands(b: QuickstartBudget, d: dict[str, Path], seed: int, extra: dict[str, list[str]],
                   skip_pretraining: bool = False) -> list[tuple[str, list[str]]]:
    """(stage name, `echo-nemo` argv) of each stage in order, writing into the run dirs `d`."""
    eval_common = [str(RECIPES_DIR / b.eval_recipe), f"seed={seed}", *b.eval_overrides, *extra["eval"]]
    stages: list[tuple[str, list[str]]] = [
        ("data", ["data", "build", "--out", str(d["data"]), str(RECIPES_DIR / b.data_recipe),
                  f"seed={seed}", *b.data_overrides, *extra["data"]]),
        ("pretrain", ["pretrain", str(RECIPES_DIR / b.pretrain_recipe), f"run_dir={d['pretrain']}",
                      f"data.shards={d['data']}", f"train.seed={seed}", *b.pretrain_overrides,
                      *extra["pretrain"]]),
        ("eval_before", ["eval", *eval_common, f"checkpoint={d['pretrain']}", f"run_dir={d['eval_before']}",
                         "label=before RL"]),
        ("rl", ["rl", str(RECIPES_DIR / b.rl_recipe), f"run_dir={d['rl']}", f"model.init={d['pretrain']}",
                f"seed={seed}", *b.rl_overrides, *extra["rl"]]),
        ("eval_after", ["eval", *eval_common, f"checkpoint={d['rl']}", f"run_dir={d['eval_after']}",
                        "label=after RL"]),
    ]
    if skip_pretraining:
        stages = [st for st in stages if st[0] not in ("data", "pretrain")]
    return stages


def _run(args: argparse.Namespace) -> int:
    run_quickstart(Path(args.out), args.budget, args.seed, overrides=args.set, pretrained=args.pretrained)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="the echo chamber on CPU in minutes: data -> pretrain -> eval -> RL -> eval -> report",
        description="Build a three-format echo-lab mixture, pretrain the tiny model, evaluate, RL fine-tune "
        "(GRPO), evaluate again and write a report. Prints the format shares and accuracy before and after "
        "RL. --budget full (9-20 min on 2 CPU cores, by machine speed) shows the effect; "
        "smoke (under a minute) checks the plumbing.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="full (the effect) or smoke (CI)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage (data order, init, sampling)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                   help="override a stage's recipe, e.g. --set rl:optim.lr=1e-4 --set pretrain:train.steps=800 "
                   "(stages: data, pretrain, eval, rl; repeatable)")
    p.add_argument("--pretrained", default=None, metavar="RUN_DIR",
                   help="start from this pretrain run dir (skips the data and pretraining stages)")
    p.set_defaults(func=_run)
