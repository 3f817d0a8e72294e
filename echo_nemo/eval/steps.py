"""Evaluate a run's checkpoints over training: pass@1, pass@k and maj@k against the step.

    echo-nemo eval --checkpoint RUN_DIR --all-steps --out OUT     # every kept checkpoint, and step 0
    echo-nemo eval --checkpoint RUN_DIR --steps 0,10,35 --out OUT # just these steps

Which checkpoints (`plan_steps`):
- the run's kept checkpoints: those whose meta.json says `keep` (an RL run's log-spaced
  study checkpoints, its last step among them; a pretraining run's keep/log-spaced
  steps). Resume checkpoints (every `checkpoint.every` steps, pruned as the run goes on)
  are left out, so the set does not depend on when the eval runs; `--steps` may still
  name one that exists. A run that marked none as kept has all its checkpoints evaluated.
- step 0: the model the run started from, when its config.yaml names one (`model.init`
  of an RL run): the "before RL" point of every pass@k-over-steps curve. Its results
  file keeps the init checkpoint's own step as `checkpoint_step`.

OUT holds (the run directory contract, one row per checkpoint):
- `steps/step_<N>.json`: what `results.json` holds for one checkpoint (label, checkpoint,
  step, sampling, max_new_tokens, benchmarks, time_s), plus `checkpoint_step` and the
  `settings` it was evaluated with;
- `samples/step_<N>.jsonl` (save_samples): every generation of that step;
- `metrics.jsonl`: one row per step, `step` plus `results_to_metrics` keys and
  `time/eval_s`, rebuilt from steps/ (sorted by step) after every step;
- `config.yaml`.

`reuse` (EvalConfig): single-checkpoint eval dirs (`echo-nemo eval --checkpoint CKPT`). A
step whose checkpoint one of them evaluated with the same settings, batch size (it seeds the
samples) and TP takes that eval's results and samples instead of generating them again:
the same numbers, as the eval is deterministic (tested). A study passes its final evals of
the run and of its pretraining: the last step and step 0 of every curve.

Resumable: a step whose results file exists is skipped (said on stderr), so an
interrupted eval picks up where it stopped; a results file made with other settings
(benchmarks, limit, tokens, sampling) is an error rather than a silent mix. The model
is built once and each checkpoint is loaded into it (rebuilt only if the architecture
changes). At TP>1 every rank evaluates, rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from echo_nemo import checkpoint as C
from echo_nemo import distributed as D
from echo_nemo.config import load_saved_config, save_config
from echo_nemo.errors import UserError
from echo_nemo.eval.config import EvalConfig
from echo_nemo.eval.run import (
    _write_json,
    _write_lines,
    evaluate_benchmarks,
    load_benchmark,
    results_to_metrics,
)
from echo_nemo.tokenizer import load_tokenizer

STEP_FILE = "step_{}.json"


def init_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint the run started from (`model.init` in its config.yaml), or None.

    A recorded init that cannot be found is an error: step 0 of the curve would be missing."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        init = OmegaConf.select(OmegaConf.load(cfg_path), "model.init", default=None)
    except Exception as e:  # a hand-edited, broken config.yaml
        raise UserError(f"{cfg_path}: not readable as YAML ({e})") from None
    if not init:
        return None
    try:
        return C.resolve_checkpoint(init)
    except UserError as e:
        raise UserError(f"run {str(run_dir)!r} started from model.init={init!r} (step 0), which cannot be "
                        f"loaded from here: {e}. Run from the folder the run was started in, or pass --steps "
                        f"without 0") from None


def available_steps(run_dir: Path) -> tuple[dict[int, Path], list[int]]:
    """({step: checkpoint} of every complete checkpoint, step 0 = model.init included;
    the steps evaluated by default: kept ones, or all when none is kept, and 0)."""
    found = dict(C.complete_checkpoints(run_dir))
    init = init_checkpoint(run_dir)
    if init is not None and 0 not in found:
        found[0] = init
    kept = [s for s, p in found.items() if s != 0 and C.is_kept(p)]
    default = kept or [s for s in found if s != 0]
    if init is not None:
        default.append(0)
    return found, sorted(default)


def plan_steps(run_dir: str | Path, steps: list[int] | None = None) -> list[tuple[int, Path]]:
    """(step, checkpoint dir) to evaluate, by step: `steps`, or the default set (module doc)."""
    run_dir = Path(run_dir)
    if run_dir.name == "checkpoints" and not (run_dir / "config.yaml").exists():
        run_dir = run_dir.parent
    if (run_dir / C.META).is_file():
        raise UserError(f"{str(run_dir)!r} is one checkpoint; evaluating over steps needs its run dir "
                        f"(the folder holding checkpoints/step_<N>/)")
    if not run_dir.is_dir():
        raise UserError(f"run dir not found: {str(run_dir)!r} (expected a folder with checkpoints/step_<N>/)")
    found, default = available_steps(run_dir)
    if not [s for s in found if s != 0]:
        raise UserError(f"run dir {str(run_dir)!r} has no complete checkpoint (expected "
                        f"checkpoints/step_<N>/{C.META})")
    want = sorted(set(steps)) if steps else default
    unknown = [s for s in want if s not in found]
    if unknown:
        raise UserError(f"run dir {str(run_dir)!r} has no checkpoint at step(s) {unknown}; it has steps "
                        f"{', '.join(map(str, sorted(found)))}"
                        + ("" if 0 in found else " (no step 0: its config.yaml names no model.init)"))
    return [(s, found[s]) for s in want]


def settings(cfg: EvalConfig) -> dict[str, Any]:
    """What decides a step's numbers besides the checkpoint (a stored file must match)."""
    return {"benchmarks": list(cfg.benchmarks), "data_paths": dict(cfg.data_paths), "limit": cfg.limit,
            "max_new_tokens": cfg.max_new_tokens, "max_prompt_tokens": cfg.max_prompt_tokens,
            "greedy": cfg.greedy, "sampling": dataclasses.asdict(cfg.sampling), "ks": list(cfg.ks), "seed": cfg.seed}


def read_step_results(out: Path) -> dict[int, dict[str, Any]]:
    """{step: results} of every steps/step_<N>.json in OUT."""
    found: dict[int, dict[str, Any]] = {}
    for p in sorted((out / "steps").glob("step_*.json")):
        try:
            res = json.loads(p.read_text())
            found[int(res["step"])] = res
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{p}: unreadable results file ({e!r}); delete it to evaluate that step again") from None
    return found


def _check_settings(out: Path, stored: dict[int, dict[str, Any]], want: dict[str, Any]) -> None:
    for step, res in sorted(stored.items()):
        have = res.get("settings", {})
        diff = sorted(k for k in want if have.get(k) != want[k])
        if diff:
            k = diff[0]
            raise UserError(
                f"{out / 'steps' / STEP_FILE.format(step)} was evaluated with other settings ({k}: "
                f"{have.get(k)!r}, now {want[k]!r}); use another --out, or delete the folder to redo it")


def metrics_rows(stored: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One metrics.jsonl row per step, sorted by step."""
    return [{"step": step, **results_to_metrics(res["benchmarks"]), "time/eval_s": res["time_s"]}
            for step, res in sorted(stored.items())]


def reusable(cfg: EvalConfig, want: dict[str, Any]) -> dict[Path, tuple[dict[str, Any], Path]]:
    """{checkpoint: (results, eval dir)} of the `cfg.reuse` evals made as this one would make
    them; any other (missing, unreadable, other settings, no samples when samples are kept)
    is left out and its checkpoint evaluated here."""
    found: dict[Path, tuple[dict[str, Any], Path]] = {}
    for d in map(Path, cfg.reuse):
        try:
            res = json.loads((d / "results.json").read_text())
            other = load_saved_config(EvalConfig, d)
        except (OSError, json.JSONDecodeError, UserError):
            continue
        same = (settings(other) == want and other.batch_size == cfg.batch_size
                and other.parallel.tp == cfg.parallel.tp and not other.over_steps)
        if same and (not cfg.save_samples or (d / "samples.jsonl").is_file()):
            found[Path(res["checkpoint"]).resolve()] = (res, d)
    return found


class _Loader:
    """One model object for all checkpoints: built for the first, then loaded into."""

    def __init__(self, tp: int):
        self.tp, self.model, self.model_config, self.tok_path, self.tokenizer = tp, None, None, None, None

    def load(self, ckpt: Path):
        meta = C.read_meta(ckpt)
        mcfg = C.model_config_from_meta(meta)
        if self.model is None or mcfg != self.model_config:
            self.model, self.tokenizer, self.model_config = C.load_model_for_inference(ckpt, tp=self.tp)
            self.tok_path = C.tokenizer_path_from_meta(ckpt, meta)
        else:
            C.load_checkpoint(ckpt, self.model, None, load_rank_extra=False)
            self.model.eval()
            tok_path = C.tokenizer_path_from_meta(ckpt, meta)
            if tok_path != self.tok_path:
                self.tokenizer, self.tok_path = load_tokenizer(tok_path), tok_path
        return self.model, self.tokenizer, int(meta.get("step", 0))


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _note(line: str) -> None:
    if D.is_main():
        tqdm.write(f"[eval] {line}", file=sys.stderr)


def run_eval_steps(cfg: EvalConfig, show_progress: bool = True) -> dict[int, dict[str, Any]]:
    """Evaluate the planned checkpoints of the run dir `cfg.checkpoint` into `cfg.run_dir`;
    returns {step: results} of every step OUT holds (evaluated now or before)."""
    cfg.validate()
    if not cfg.checkpoint:
        raise UserError("eval: `checkpoint` is required (--checkpoint RUN_DIR with --all-steps / --steps)")
    run_dir, out = Path(cfg.checkpoint), Path(cfg.run_dir)
    plan = plan_steps(run_dir, cfg.steps)
    if not torch.distributed.is_initialized():  # ranks are known before anyone writes or skips
        D.init_distributed(tp=cfg.parallel.tp)
    want = settings(cfg)
    stored = read_step_results(out)
    _check_settings(out, stored, want)
    todo = [(s, p) for s, p in plan if s not in stored]
    for s, _ in plan:
        if s in stored:
            _note(f"step {s}: {out / 'steps' / STEP_FILE.format(s)} exists, skipped")
    problems = {b: load_benchmark(b, cfg) for b in cfg.benchmarks}  # bad data fails before any model loads
    main = D.is_main()
    if main:
        save_config(cfg, out)
        (out / "steps").mkdir(parents=True, exist_ok=True)
        if cfg.save_samples:
            (out / "samples").mkdir(exist_ok=True)
    loader = _Loader(cfg.parallel.tp)
    reuse = reusable(cfg, want)
    bar = tqdm(todo, desc=f"eval over steps ({run_dir.name})", unit="ckpt", disable=not (show_progress and main))
    for step, ckpt in bar:
        bar.set_postfix_str(f"step {step}")
        res = {"label": cfg.label or f"{run_dir.name} step {step}", "checkpoint": str(ckpt), "step": step,
               "sampling": dataclasses.asdict(cfg.sampling), "max_new_tokens": cfg.max_new_tokens, "settings": want}
        found = reuse.get(Path(ckpt).resolve())
        if found is not None:
            src, src_dir = found
            _note(f"step {step}: results of {src_dir} (the same checkpoint and settings)")
            res.update(checkpoint_step=src["step"], benchmarks=src["benchmarks"], time_s=src["time_s"],
                       reused_from=str(src_dir))
            samples = _read_lines(src_dir / "samples.jsonl") if cfg.save_samples else []
        else:
            model, tokenizer, ckpt_step = loader.load(ckpt)
            results, samples, elapsed = evaluate_benchmarks(model, tokenizer, problems, cfg,
                                                            show_progress=show_progress and main)
            res.update(checkpoint_step=ckpt_step, benchmarks=results, time_s=elapsed)
        stored[step] = res
        if main:  # samples first: a step counts as done once its results file exists
            if cfg.save_samples:
                _write_lines(out / "samples" / f"step_{step}.jsonl", samples)
            _write_json(out / "steps" / STEP_FILE.format(step), res)
            _write_lines(out / "metrics.jsonl", metrics_rows(stored))
    bar.close()
    if main:
        _write_lines(out / "metrics.jsonl", metrics_rows(stored))
        (out / "report").mkdir(exist_ok=True)
    D.barrier()
    return stored
