"""Evaluate a checkpoint on benchmarks: greedy pass@1, sampled pass@k / maj@k, formats.

    generate (greedy, then n samples per problem) -> score (reward.score) -> metrics

`evaluate_problems` works on a model already in memory (the quickstart and RL call it);
`run_eval` loads a checkpoint, evaluates every benchmark and writes the run dir:
config.yaml, results.json, metrics.jsonl (one row at the checkpoint's step),
samples.jsonl and a table on the terminal. At TP>1 every rank generates (the model is
sharded); rank 0 scores and writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from echo_nemo import distributed as D
from echo_nemo.checkpoint import load_model_for_inference, read_meta, resolve_checkpoint
from echo_nemo.config import save_config
from echo_nemo.data.sources import BENCHMARKS, load_problems
from echo_nemo.errors import UserError
from echo_nemo.eval import metrics as M
from echo_nemo.eval.config import EvalConfig
from echo_nemo.metrics import MetricsLogger, read_metrics
from echo_nemo.model.generate import generate
from echo_nemo.reward import score
from echo_nemo.reward.format_stats import format_stats
from echo_nemo.reward.formats import FORMATS


def _generate_all(model, tokenizer, prompts: list[str], *, desc: str, batch_size: int, seed: int,
                  show_progress: bool, **kw: Any) -> list[str]:
    """Completions for all prompts, in batches under a progress bar counting prompts
    (problems, or samples for the sampled pass) with their rate and the ETA."""
    out: list[str] = []
    unit = "problem" if kw.get("greedy") else "sample"
    with tqdm(total=len(prompts), desc=desc, unit=unit, disable=not show_progress, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            # the seed moves with the batch so every batch draws fresh samples
            out.extend(generate(model, tokenizer, chunk, seed=seed + start, batch_size=len(chunk), **kw).completions)
            bar.update(len(chunk))
    return out


def evaluate_problems(model, tokenizer, problems: list, cfg: EvalConfig, *, name: str = "bench",
                      show_progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results for one benchmark, per-sample records). Problems: objects with .prompt and .answer.

    results: problems, pass@1 (greedy accuracy), greedy_formats, and with sampling.n > 0:
    sample_acc (mean c/n), pass_at_k {k: mean_i pass_at_k(n, c_i, k)} for k in cfg.ks <= n,
    maj_at_k (k = n), formats (share/acc per format over all n x problems samples).
    """
    results: dict[str, Any] = {"problems": len(problems)}
    records: list[dict[str, Any]] = []
    prompts = [p.prompt for p in problems]
    truths = [p.answer for p in problems]
    gen_kw = dict(max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens)
    if cfg.greedy:
        comps = _generate_all(model, tokenizer, prompts, desc=f"{name} greedy", batch_size=cfg.batch_size,
                              seed=cfg.seed, show_progress=show_progress, greedy=True, **gen_kw)
        scores = score(comps, truths)
        correct = [s.reward > 0.5 for s in scores]
        results["pass@1"] = sum(correct) / len(correct) if correct else 0.0
        results["greedy_formats"] = format_stats([s.format for s in scores], correct)
        records += [{"problem": p.id, "mode": "greedy", "completion": c, "format": s.format, "answer": s.answer,
                     "reward": s.reward} for p, c, s in zip(problems, comps, scores)]
    n = cfg.sampling.n
    if n > 0:
        rep_prompts = [pr for pr in prompts for _ in range(n)]  # problem i owns samples [i*n, (i+1)*n)
        comps = _generate_all(
            model, tokenizer, rep_prompts, desc=f"{name} sampled ({len(problems)} problems x {n})", batch_size=cfg.batch_size,
            seed=cfg.seed + 1_000_003, show_progress=show_progress, **cfg.sampling.generate_kwargs(), **gen_kw)
        scores = score(comps, [t for t in truths for _ in range(n)])
        correct = [s.reward > 0.5 for s in scores]
        per_problem = [correct[i * n : (i + 1) * n] for i in range(len(problems))]
        answers = [[s.answer for s in scores[i * n : (i + 1) * n]] for i in range(len(problems))]
        ks = sorted({k for k in cfg.ks if k <= n} | {1, n})
        results["n"] = n
        results["sample_acc"] = sum(sum(c) / n for c in per_problem) / max(1, len(problems))
        results["pass_at_k"] = {
            str(k): sum(M.pass_at_k(n, sum(c), k) for c in per_problem) / max(1, len(problems)) for k in ks
        }
        results["k"] = n
        results["maj_at_k"] = sum(M.maj_at_k(a, c, n) for a, c in zip(answers, per_problem)) / max(1, len(problems))
        results["formats"] = format_stats([s.format for s in scores], correct)
        records += [{"problem": problems[i // n].id, "mode": "sample", "completion": c, "format": s.format,
                     "answer": s.answer, "reward": s.reward} for i, (c, s) in enumerate(zip(comps, scores))]
    else:
        results["formats"] = results["greedy_formats"]
    return results, records


def results_to_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Flat metric names: acc/<b>/pass@1, acc/<b>/pass@<k>, acc/<b>/maj@<k>, format/<name>/share|acc.

    format/* are over the sampled generations of all benchmarks together (weighted by
    their count); per-benchmark shares are in results.json.
    """
    out: dict[str, float] = {}
    counts = {f: 0 for f in FORMATS}
    hits = {f: 0.0 for f in FORMATS}
    for bench, r in results.items():
        if "pass@1" in r:
            out[f"acc/{bench}/pass@1"] = r["pass@1"]
        for k, v in r.get("pass_at_k", {}).items():
            if k != "1" or "pass@1" not in r:
                out[f"acc/{bench}/pass@{k}"] = v
        if "maj_at_k" in r:
            out[f"acc/{bench}/maj@{r['k']}"] = r["maj_at_k"]
        for f, s in r["formats"].items():
            counts[f] += s["count"]
            hits[f] += (s["acc"] or 0.0) * s["count"]
    total = sum(counts.values())
    for f in FORMATS:
        out[f"format/{f}/share"] = counts[f] / total if total else 0.0
        if counts[f]:
            out[f"format/{f}/acc"] = hits[f] / counts[f]
    return out


def load_benchmark(bench: str, cfg: EvalConfig) -> list:
    problems = load_problems(BENCHMARKS[bench], path=cfg.data_paths.get(bench), limit=cfg.limit)
    if not problems:
        raise UserError(f"benchmark {bench!r} has no problems (source {cfg.data_paths.get(bench) or BENCHMARKS[bench]!r})")
    return problems


def print_table(results: dict[str, dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for col in ("benchmark", "problems", "pass@1 (greedy)", "pass@k", "maj@k", "sampled acc", "formats (sampled)"):
        table.add_column(col, overflow="fold")
    for bench, r in results.items():
        pk = r.get("pass_at_k", {})
        kmax = max((int(k) for k in pk), default=None)
        shares = " ".join(f"{f}:{s['share']:.0%}" for f, s in r["formats"].items() if s["count"])
        table.add_row(
            bench, str(r["problems"]), f"{r['pass@1']:.3f}" if "pass@1" in r else "-",
            f"@{kmax} {pk[str(kmax)]:.3f}" if kmax else "-",
            f"@{r['k']} {r['maj_at_k']:.3f}" if "maj_at_k" in r else "-",
            f"{r['sample_acc']:.3f}" if "sample_acc" in r else "-", shares)
    Console(stderr=False).print(table)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _drop_rows_at_step(run_dir: Path, step: int) -> None:
    path = run_dir / "metrics.jsonl"
    rows = read_metrics(run_dir)
    if any(r.get("step") == step for r in rows):
        _write_lines(path, [r for r in rows if r.get("step") != step])


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def evaluate_benchmarks(model, tokenizer, problems: dict[str, list], cfg: EvalConfig, *, show_progress: bool = True,
                        ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], float]:
    """(results per benchmark, per-sample records tagged with their benchmark, seconds) of one model."""
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    for bench, probs in problems.items():
        results[bench], records = evaluate_problems(model, tokenizer, probs, cfg, name=bench, show_progress=show_progress)
        samples += [{"benchmark": bench, **r} for r in records]
    return results, samples, time.perf_counter() - t0


def run_eval(cfg: EvalConfig, show_progress: bool = True) -> dict[str, Any]:
    """Load the checkpoint, evaluate every benchmark, write the run dir; returns results.json's dict."""
    cfg.validate()
    if not cfg.checkpoint:
        raise UserError("eval: `checkpoint` is required (--checkpoint: a checkpoint dir or a run dir)")
    ckpt = resolve_checkpoint(cfg.checkpoint)
    step = int(read_meta(ckpt).get("step", 0))
    problems = {b: load_benchmark(b, cfg) for b in cfg.benchmarks}  # bad data fails before the model loads
    model, tokenizer, _ = load_model_for_inference(ckpt, tp=cfg.parallel.tp)
    main = D.is_main()
    run_dir = Path(cfg.run_dir)
    if main:
        save_config(cfg, run_dir)
    results, samples, elapsed = evaluate_benchmarks(model, tokenizer, problems, cfg, show_progress=show_progress and main)
    out = {"label": cfg.label or run_dir.name, "checkpoint": str(ckpt), "step": step,
           "sampling": dataclasses.asdict(cfg.sampling), "max_new_tokens": cfg.max_new_tokens,
           "benchmarks": results, "time_s": elapsed}
    if main:
        _write_json(run_dir / "results.json", out)
        if cfg.save_samples:
            _write_lines(run_dir / "samples.jsonl", samples)
        _drop_rows_at_step(run_dir, step)  # re-evaluating a checkpoint replaces its row
        with MetricsLogger(run_dir) as log:
            log.log(step, {**results_to_metrics(results), "time/eval_s": elapsed})
        (run_dir / "report").mkdir(exist_ok=True)
    return out
