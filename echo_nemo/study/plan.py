"""Expand a study recipe into runs: data builds, pretrainings, RL runs, evals (pure, writes nothing).

Every run is one `echo-nemo` command line with its own run dir under the study folder
(`out_dir/name/budget`):

    data/<data recipe>                  one per distinct data build (recipe + overrides)
    pretrain/<pretraining>/seed-<p>     each pretraining a planned level uses, once per
                                        pretraining seed (train.seed=p)
    calibrate/<pretraining>/seed-<p>    each format's forced greedy accuracy on it (study.calibrate)
    rl/<finding>/<level>/pretrain-<p>/seed-<s>
                                        factor level x pretraining seed x RL seed, model.init =
                                        its pretraining's run dir of seed p, seed=s
    eval/<finding>/<level>/pretrain-<p>/seed-<s>/<label>
                                        the study's final eval (label `final`) and each of the
                                        finding's own evals of that RL run
    eval/pretrain/<pretraining>/seed-<p>/<label>
                                        the final eval and the evals marked `before: true`, of
                                        the pretrained model

Runs are shared, never repeated: two findings that ask for the same RL run (same recipe,
pretraining, overrides and seeds; e.g. the GRPO levels of the scale and algorithm
findings) get one run, planned under the first finding's name; likewise data builds,
pretrainings, calibrations and evals.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_nemo.config import REPO_ROOT, load_recipe, to_yaml
from echo_nemo.errors import UserError
from echo_nemo.launch.config import resolve_path
from echo_nemo.launch.grid import label_of
from echo_nemo.launch.submit import changed_since_done
from echo_nemo.study.config import FINAL, STAGES, Budget, EvalSpec, StudyConfig
from echo_nemo.study.context import check_expectations
from echo_nemo.study.runconf import run_config, run_overrides


@dataclass
class StudyRun:
    stage: str  # data | pretrain | calibrate | rl | eval
    key: str  # path of its run dir relative to the study folder
    argv: list[str]  # `echo-nemo ARGV`
    run_dir: Path
    after: list[str] = field(default_factory=list)  # keys of the runs it needs
    cost: float = 1.0  # expected length in units of the budget's minutes for its stage
    reuses: list[str] = field(default_factory=list)  # same-stage runs whose results it takes when done

    def command(self) -> str:
        return "echo-nemo " + shlex.join(_short(a) for a in self.argv)


@dataclass
class Member:
    """One RL run of a finding's level (and its evals), as the report reads it."""

    level: str
    seed: int  # the RL seed
    rl: str  # run key
    evals: dict[str, str] = field(default_factory=dict)  # label -> run key (after RL)
    before: dict[str, str] = field(default_factory=dict)  # label -> run key (the pretrained model)
    pretrain_seed: int = 0
    pretrain: str = ""  # the pretraining's run key
    calibration: str = ""  # the calibrate run's key (of that pretraining)


@dataclass
class StudyPlan:
    cfg: StudyConfig
    budget: str
    study_dir: Path
    runs: list[StudyRun]  # the runs the selected findings need, in stage order
    members: dict[str, list[Member]]  # selected finding id -> its RL runs
    all_runs: list[StudyRun]  # every finding's (names do not depend on --only)
    all_members: dict[str, list[Member]]

    def by_stage(self, stage: str) -> list[StudyRun]:
        return [r for r in self.runs if r.stage == stage]

    def to_dict(self) -> dict[str, Any]:
        """plan.json: every finding and run (so a report can gather findings run with separate
        `--only` calls), and which findings this call selected."""
        findings = {}
        for fid, members in self.all_members.items():
            f = self.cfg.findings[fid]
            findings[fid] = {
                "title": f.title, "claim": f.claim, "factor": f.factor,
                "benchmark": f.benchmark, "shares": f.shares, "notes": f.notes,
                "levels": list(dict.fromkeys(m.level for m in members)),
                "members": [vars(m) for m in members],
            }
        return {
            "name": self.cfg.name, "budget": self.budget, "study_dir": str(self.study_dir),
            "seeds": self.cfg.seeds, "pretrain_seeds": list(self.cfg.pretrain_seeds), "tuning": self.cfg.tuning,
            "expectations": EXPECTATIONS_FILE if self.cfg.expectations else None,
            "final_eval": FINAL if self.cfg.final_eval else None, "selected": list(self.members),
            "runs": [{"stage": r.stage, "key": r.key, "argv": r.argv, "run_dir": str(r.run_dir), "after": r.after}
                     for r in self.all_runs],
            "findings": findings,
        }


EXPECTATIONS_FILE = "expectations.yaml"  # the study's expectations, copied into its folder


def _short(arg: str) -> str:
    """Paths inside the repository printed relative to it (dry-run readability)."""
    root = str(REPO_ROOT) + os.sep
    if root in arg:
        return arg.replace(root, "")
    return arg


def _recipe(path: str, what: str) -> str:
    p = resolve_path(path)
    if not p.is_file():
        raise UserError(f"study: {what} recipe {path!r} not found (looked for {p})")
    return str(p.resolve())


def load_study(recipe: str | os.PathLike, overrides: list[str] | None = None, only: list[str] | None = None,
               seeds: int | None = None, budget: str | None = None) -> StudyConfig:
    """The study recipe with `--budget` (its seeds), `--seeds` and `--only` applied (validated);
    its expectations are loaded and checked against the findings (study.context)."""
    cfg = load_recipe(StudyConfig, recipe, overrides)
    if budget is not None:
        if budget not in cfg.budgets:
            raise UserError(f"--budget {budget!r}: study {cfg.name!r} has budgets {', '.join(cfg.budgets)}")
        cfg.budget = budget
    chosen = cfg.budgets[cfg.budget]
    if chosen.pretrain_seeds is not None:
        cfg.pretrain_seeds = list(chosen.pretrain_seeds)
    if chosen.seeds is not None:
        cfg.seeds = chosen.seeds
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {seeds}")
        cfg.seeds = seeds
    if only:
        cfg.only = list(only)
    unknown = [f for f in cfg.only if f not in cfg.findings]
    if unknown:
        raise UserError(f"--only {','.join(unknown)}: study {cfg.name!r} has findings {', '.join(cfg.findings)}")
    check_expectations(cfg)
    return cfg


def plan_study(cfg: StudyConfig, out_dir: str | os.PathLike | None = None, validate: bool = True) -> StudyPlan:
    """Every run of the selected findings (`cfg.only`, empty: all) in stage order (config.STAGES)."""
    study_dir = (resolve_path(str(out_dir) if out_dir else cfg.out_dir, Path.cwd()) / cfg.name / cfg.budget).resolve()
    planner = _Planner(cfg, study_dir)
    members = {fid: planner.finding(fid) for fid in cfg.findings}
    ordered = [r for stage in STAGES for r in planner.runs.values() if r.stage == stage]
    # every finding is planned so that a run's name never depends on --only; then only the
    # runs the selected findings need (and what those need) are kept
    selected = {fid: m for fid, m in members.items() if not cfg.only or fid in cfg.only}
    need = {k for ms in selected.values() for m in ms
            for k in (m.rl, *m.evals.values(), *m.before.values(), *filter(None, [m.calibration]))}
    for r in reversed(ordered):  # stage order: whatever a run needs comes earlier
        if r.key in need:
            need.update(r.after)
    plan = StudyPlan(cfg, cfg.budget, study_dir, [r for r in ordered if r.key in need], selected, ordered, members)
    if validate:
        validate_runs(plan)
    return plan


class _Planner:
    """Turns a study's findings into runs, each planned once: a run with the same stage and
    content (recipe, overrides, inputs) as an earlier one is that run (shared pretrainings)."""

    def __init__(self, cfg: StudyConfig, study_dir: Path) -> None:
        self.cfg = cfg
        self.budget: Budget = cfg.budgets[cfg.budget]
        self.study_dir = study_dir
        self.runs: dict[str, StudyRun] = {}
        self.by_signature: dict[str, str] = {}

    def add(self, stage: str, key: str, signature: Any, argv_of, after: list[str], cost: float = 1.0,
            reuses: list[str] | None = None) -> str:
        """The key of the run with this content: an earlier one, or a new run named `key`."""
        sig = json.dumps([stage, signature])
        if sig in self.by_signature:
            return self.by_signature[sig]
        if key in self.runs:  # same name, different content (e.g. one data recipe, two overrides)
            key = f"{key}-{zlib.crc32(sig.encode()) % 16**6:06x}"
        run_dir = self.study_dir / key
        self.runs[key] = StudyRun(stage, key, argv_of(run_dir), run_dir, after, cost, list(reuses or []))
        self.by_signature[sig] = key
        return key

    def pretraining(self, name: str, seed: int) -> str:
        """The data build and the pretraining of `cfg.pretrain[name]` with train.seed=`seed`;
        the pretraining's key (the data build is shared by the seeds)."""
        p, budget = self.cfg.pretrain[name], self.budget
        data_recipe = _recipe(p.data, f"pretrain.{name}.data")
        data_over = [*p.data_overrides, *budget.data]
        # a pretraining's own data overrides name the build, so that the name does not depend
        # on which findings run together (--only): one corpus never reuses another's
        build = "__".join([Path(data_recipe).stem, *map(label_of, p.data_overrides)])
        data_key = self.add("data", f"data/{build}", [data_recipe, data_over],
                            lambda d: ["data", "build", data_recipe, *data_over, "--out", str(d)], [])
        pre_recipe = _recipe(p.recipe, f"pretrain.{name}")
        over = [*p.overrides, *budget.pretrain, f"train.seed={seed}", f"data.shards={self.runs[data_key].run_dir}"]
        return self.add("pretrain", f"pretrain/{name}/seed-{seed}", [pre_recipe, over],
                        lambda d: ["pretrain", pre_recipe, *over, f"run_dir={d}"], [data_key], p.cost)

    def calibration(self, name: str, seed: int, pre_key: str) -> str:
        """The calibrate run of a pretrained model (each format's forced greedy accuracy)."""
        over = [*self.cfg.calibration, *self.budget.calibration]
        target = str(self.runs[pre_key].run_dir)
        return self.add("calibrate", f"calibrate/{name}/seed-{seed}", [target, over],
                        lambda d: ["calibrate", target, *over, "--out", str(d)], [pre_key])

    def evaluation(self, key: str, spec: EvalSpec, label: str, target: str, reuse: list[str] = ()) -> str:
        """The key of the eval `spec` (run-dir name and label `label`) of the run `target`. An
        eval over steps takes the results of the evals `reuse` where they measured one of its
        checkpoints with its settings (echo_nemo.eval.steps), and launches after them."""
        recipe = _recipe(spec.recipe, f"eval {label}")
        over = [*spec.overrides, *self.budget.eval]
        target_dir = str(self.runs[target].run_dir)
        reuse = list(reuse) if spec.over_steps else []
        steps = ["--all-steps"] if spec.over_steps else []
        if reuse:
            over.append("reuse=" + json.dumps([str(self.runs[k].run_dir) for k in reuse]))
        return self.add("eval", key, [recipe, over, target_dir, spec.over_steps],
                        lambda d: ["eval", recipe, *over, "--checkpoint", target_dir, *steps, "--out", str(d),
                                   "--label", label], [target], reuses=reuse)

    def evals_of(self, fid: str) -> list[tuple[str, EvalSpec]]:
        """(label, spec) of every eval of the finding's runs: the study's final eval first."""
        f = self.cfg.findings[fid]
        out = [(FINAL, self.cfg.final_eval)] if self.cfg.final_eval else []
        return out + [(spec.label or f"eval{i}", spec) for i, spec in enumerate(f.evals)]

    def finding(self, fid: str) -> list[Member]:
        """Per level (up to the budget's max_levels) and pretraining seed: its pretraining,
        calibration and evals before RL, and per RL seed the RL run and its evals."""
        f = self.cfg.findings[fid]
        levels = list(f.levels.items())
        if self.budget.max_levels > 0:
            levels = levels[: self.budget.max_levels]
        evals = self.evals_of(fid)
        members: list[Member] = []
        for label, level in levels:
            pre_name = level.pretrain or f.pretrain
            rl_recipe = _recipe(level.rl_recipe or f.rl_recipe, f"finding {fid} RL")
            for pseed in self.cfg.pretrain_seeds:
                pre_key = self.pretraining(pre_name, pseed)
                cal_key = self.calibration(pre_name, pseed, pre_key)
                before = {lbl: self.evaluation(f"eval/pretrain/{pre_name}/seed-{pseed}/{lbl}", spec, lbl, pre_key)
                          for lbl, spec in evals if lbl == FINAL or spec.before}
                for seed in range(self.cfg.seeds):
                    over = [*f.rl, *level.rl, *self.budget.rl, f"model.init={self.runs[pre_key].run_dir}",
                            f"seed={seed}"]
                    name = f"rl/{fid}/{label}/pretrain-{pseed}/seed-{seed}"
                    rl_key = self.add("rl", name, [rl_recipe, over],
                                      lambda d, r=rl_recipe, o=over: ["rl", r, *o, f"run_dir={d}"], [pre_key],
                                      level.cost)
                    m = Member(label, seed, rl_key, before=dict(before), pretrain_seed=pseed, pretrain=pre_key,
                               calibration=cal_key)
                    for lbl, spec in evals:  # the final eval first: an eval over steps reuses it
                        finals = [k for k in (m.evals.get(FINAL), before.get(FINAL)) if k]
                        m.evals[lbl] = self.evaluation(f"eval/{name[3:]}/{lbl}", spec, lbl, rl_key, finals)
                    members.append(m)
        return members


# Overrides the planner itself writes (seeds, run dirs, the inputs a run reads): their values
# are always of the right type, so runs that differ only in them validate alike.
PLANNED_KEYS = ("seed", "train.seed", "model.init", "data.shards", "run_dir")


def validate_runs(plan: StudyPlan) -> None:
    """Load every run's recipe with its overrides through the command's own schema, so a typo
    in a level's override fails before the study starts (as `sweep` does for its points).
    One run stands for all that differ from it only in PLANNED_KEYS (a full echo-lab plan
    has ~220 runs, ~30 distinct configs)."""
    seen: set[tuple] = set()
    for r in plan.runs:
        recipe, overrides = run_overrides(r.argv)
        shape = (r.stage, recipe, tuple(o for o in overrides if o.partition("=")[0] not in PLANNED_KEYS))
        if shape in seen:
            continue
        seen.add(shape)
        try:
            run_config(r.argv)
        except UserError as e:
            raise UserError(f"study {plan.cfg.name!r}, run {r.key}: {e}") from None


def write_plan(plan: StudyPlan) -> Path:
    """study.yaml (resolved) and plan.json (every run and each finding's members) in the study folder."""
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    (plan.study_dir / "study.yaml").write_text(to_yaml(plan.cfg))
    if plan.cfg.expectations:  # the report reads the copy: what was expected when the study ran
        shutil.copyfile(resolve_path(plan.cfg.expectations), plan.study_dir / EXPECTATIONS_FILE)
    tmp = plan.study_dir / "plan.json.tmp"
    tmp.write_text(json.dumps(plan.to_dict(), indent=1))
    os.replace(tmp, plan.study_dir / "plan.json")
    return plan.study_dir / "plan.json"


def describe(plan: StudyPlan, done: set[str]) -> str:
    """The plan as text: counts per stage, then every run with its state and command line."""
    lines = [f"study {plan.cfg.name} (budget {plan.budget}, {len(plan.cfg.pretrain_seeds)} pretraining seed(s) x "
             f"{plan.cfg.seeds} RL seed(s)): {len(plan.runs)} runs, {len(done)} done; folder {plan.study_dir}"]
    if plan.cfg.tuning:
        lines.append(f"  tuning: {plan.cfg.tuning}")
    for fid, members in plan.members.items():
        f = plan.cfg.findings[fid]
        levels = list(dict.fromkeys(m.level for m in members))
        shared = sum(not m.rl.startswith(f"rl/{fid}/") for m in members)
        lines.append(f"  {fid} {f.title}: {f.factor} in {levels} x {len(plan.cfg.pretrain_seeds)} x {plan.cfg.seeds} "
                     f"seed(s) = {len(members)} RL run(s)" + (f", {shared} shared with an earlier finding" if shared else ""))
    for stage in STAGES:
        stage_runs = plan.by_stage(stage)
        lines.append(f"[{stage}] {len(stage_runs)} run(s), {sum(r.key in done for r in stage_runs)} done")
        for r in stage_runs:
            lines.append(f"  {'done' if r.key in done else 'todo':4s} {r.key}\n       {r.command()}")
    return "\n".join(lines)


def refuse_changed(plan: StudyPlan, done: set[str]) -> None:
    """Exit 2 when a finished run's command line is no longer the one the recipe gives it:
    its results would be reported under the new design (e.g. a pretraining whose steps the
    recipe raised since). The user moves the run away to redo it, or keeps it knowingly."""
    lines = []
    for r in plan.runs:
        diff = changed_since_done(r.run_dir, r.argv, plan.study_dir) if r.key in done else None
        if diff:
            was, now = diff
            lines.append(f"  {r.key}: ran with {' '.join(map(_short, was)) or '(nothing else)'}; "
                         f"the recipe now gives {' '.join(map(_short, now)) or '(nothing else)'}")
    if lines:
        raise UserError("finished run(s) no longer match the study recipe:\n" + "\n".join(lines)
                        + f"\nmove each such folder out of {plan.study_dir} to run it again, "
                        "or pass --reuse-done to keep the old results")
