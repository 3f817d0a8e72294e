"""Expand a study recipe into runs: data builds, pretrainings, RL runs, evals (pure, writes nothing).

Every run is one `echo-nemo` command line with its own run dir under the study folder
(`out_dir/name/budget`):

    data/<data recipe>          one per distinct data build (recipe + overrides)
    pretrain/<pretraining>      one per pretraining named in `pretrain:` that a planned level uses
    rl/<finding>/<level>/seed-<s>    factor level x seed, model.init = its pretraining's run dir
    eval/<finding>/<level>/seed-<s>/<label>   each of the finding's evals of that RL run
    eval/pretrain/<pretraining>/<label>       evals marked `before: true`, of the pretrained model

Runs are shared, never repeated: two findings that ask for the same RL run (same recipe,
pretraining, overrides and seed; e.g. the collapse finding and the GRPO level of the
algorithm finding) get one run, planned under the first finding's name; likewise data
builds, pretrainings and evals.
"""

from __future__ import annotations

import json
import os
import shlex
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_nemo.config import REPO_ROOT, load_recipe, schema_for_recipe, to_yaml
from echo_nemo.errors import UserError
from echo_nemo.launch.config import resolve_path
from echo_nemo.launch.grid import label_of
from echo_nemo.launch.submit import changed_since_done
from echo_nemo.study.config import STAGES, Budget, Finding, StudyConfig


@dataclass
class StudyRun:
    stage: str  # data | pretrain | rl | eval
    key: str  # path of its run dir relative to the study folder
    argv: list[str]  # `echo-nemo ARGV`
    run_dir: Path
    after: list[str] = field(default_factory=list)  # keys of the runs it needs
    cost: float = 1.0  # expected length in units of the budget's minutes for its stage

    def command(self) -> str:
        return "echo-nemo " + shlex.join(_short(a) for a in self.argv)


@dataclass
class Member:
    """One RL run of a finding's level (and its evals), as the report reads it."""

    level: str
    seed: int
    rl: str  # run key
    evals: dict[str, str] = field(default_factory=dict)  # label -> run key (after RL)
    before: dict[str, str] = field(default_factory=dict)  # label -> run key (the pretrained model)


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
                "title": f.title, "claim": f.claim, "factor": f.factor, "verdict": f.verdict,
                "benchmark": f.benchmark, "shares": f.shares, "notes": f.notes,
                "levels": list(dict.fromkeys(m.level for m in members)),
                "members": [vars(m) for m in members],
            }
        return {
            "name": self.cfg.name, "budget": self.budget, "study_dir": str(self.study_dir),
            "seeds": self.cfg.seeds, "selected": list(self.members),
            "runs": [{"stage": r.stage, "key": r.key, "argv": r.argv, "run_dir": str(r.run_dir), "after": r.after}
                     for r in self.all_runs],
            "findings": findings,
        }


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
    """The study recipe with `--only`, `--seeds` and `--budget` applied (validated)."""
    cfg = load_recipe(StudyConfig, recipe, overrides)
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {seeds}")
        cfg.seeds = seeds
    if budget is not None:
        if budget not in cfg.budgets:
            raise UserError(f"--budget {budget!r}: study {cfg.name!r} has budgets {', '.join(cfg.budgets)}")
        cfg.budget = budget
    if only:
        cfg.only = list(only)
    unknown = [f for f in cfg.only if f not in cfg.findings]
    if unknown:
        raise UserError(f"--only {','.join(unknown)}: study {cfg.name!r} has findings {', '.join(cfg.findings)}")
    return cfg


def plan_study(cfg: StudyConfig, out_dir: str | os.PathLike | None = None, validate: bool = True) -> StudyPlan:
    """Every run of the selected findings (`cfg.only`, empty: all) in stage order (data, pretrain, rl, eval)."""
    study_dir = (resolve_path(str(out_dir) if out_dir else cfg.out_dir, Path.cwd()) / cfg.name / cfg.budget).resolve()
    planner = _Planner(cfg, study_dir)
    members = {fid: planner.finding(fid, f) for fid, f in cfg.findings.items()}
    ordered = [r for stage in STAGES for r in planner.runs.values() if r.stage == stage]
    # every finding is planned so that a run's name never depends on --only; then only the
    # runs the selected findings need (and what those need) are kept
    selected = {fid: m for fid, m in members.items() if not cfg.only or fid in cfg.only}
    need = {k for ms in selected.values() for m in ms for k in (m.rl, *m.evals.values(), *m.before.values())}
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

    def add(self, stage: str, key: str, signature: Any, argv_of, after: list[str], cost: float = 1.0) -> str:
        """The key of the run with this content: an earlier one, or a new run named `key`."""
        sig = json.dumps([stage, signature])
        if sig in self.by_signature:
            return self.by_signature[sig]
        if key in self.runs:  # same name, different content (e.g. one data recipe, two overrides)
            key = f"{key}-{zlib.crc32(sig.encode()) % 16**6:06x}"
        run_dir = self.study_dir / key
        self.runs[key] = StudyRun(stage, key, argv_of(run_dir), run_dir, after, cost)
        self.by_signature[sig] = key
        return key

    def pretraining(self, name: str) -> str:
        """The data build and the pretraining of `cfg.pretrain[name]`; the pretraining's key."""
        p, budget = self.cfg.pretrain[name], self.budget
        data_recipe = _recipe(p.data, f"pretrain.{name}.data")
        data_over = [*p.data_overrides, *budget.data]
        # a pretraining's own data overrides name the build, so that the name does not depend
        # on which findings run together (--only): f5's 1-5-step corpus never reuses f1's
        build = "__".join([Path(data_recipe).stem, *map(label_of, p.data_overrides)])
        data_key = self.add("data", f"data/{build}", [data_recipe, data_over],
                            lambda d: ["data", "build", data_recipe, *data_over, "--out", str(d)], [])
        pre_recipe = _recipe(p.recipe, f"pretrain.{name}")
        over = [*p.overrides, *budget.pretrain, f"data.shards={self.runs[data_key].run_dir}"]
        return self.add("pretrain", f"pretrain/{name}", [pre_recipe, over],
                        lambda d: ["pretrain", pre_recipe, *over, f"run_dir={d}"], [data_key], p.cost)

    def evaluation(self, key: str, spec_index: int, f: Finding, target: str) -> tuple[str, str]:
        """(label, key) of the finding's eval `spec_index` of the run `target`."""
        spec = f.evals[spec_index]
        label = spec.label or f"eval{spec_index}"
        recipe = _recipe(spec.recipe, f"finding eval {label}")
        over = [*spec.overrides, *self.budget.eval]
        target_dir = str(self.runs[target].run_dir)
        steps = ["--all-steps"] if spec.over_steps else []
        ev = self.add("eval", key, [recipe, over, target_dir, spec.over_steps],
                      lambda d: ["eval", recipe, *over, "--checkpoint", target_dir, *steps, "--out", str(d),
                                 "--label", label], [target])
        return label, ev

    def finding(self, fid: str, f: Finding) -> list[Member]:
        """Per level (up to the budget's max_levels): its pretraining, the evals before RL, and
        per seed the RL run and its evals."""
        levels = list(f.levels.items())
        if self.budget.max_levels > 0:
            levels = levels[: self.budget.max_levels]
        members: list[Member] = []
        for label, level in levels:
            pre_name = level.pretrain or f.pretrain
            pre_key = self.pretraining(pre_name)
            rl_recipe = _recipe(level.rl_recipe or f.rl_recipe, f"finding {fid} RL")
            before: dict[str, str] = {}
            for i, spec in enumerate(f.evals):
                if spec.before:
                    lbl, ev = self.evaluation(f"eval/pretrain/{pre_name}/{spec.label or f'eval{i}'}", i, f, pre_key)
                    before[lbl] = ev
            for seed in range(self.cfg.seeds):
                over = [*f.rl, *level.rl, *self.budget.rl, f"model.init={self.runs[pre_key].run_dir}", f"seed={seed}"]
                rl_key = self.add("rl", f"rl/{fid}/{label}/seed-{seed}", [rl_recipe, over],
                                  lambda d, r=rl_recipe, o=over: ["rl", r, *o, f"run_dir={d}"], [pre_key], level.cost)
                m = Member(label, seed, rl_key, before=dict(before))
                for i, spec in enumerate(f.evals):
                    lbl = spec.label or f"eval{i}"
                    m.evals[lbl] = self.evaluation(f"eval/{fid}/{label}/seed-{seed}/{lbl}", i, f, rl_key)[1]
                members.append(m)
        return members


def validate_runs(plan: StudyPlan) -> None:
    """Load every run's recipe with its overrides through the command's own schema, so a typo
    in a level's override fails before the study starts (as `sweep` does for its points)."""
    for r in plan.runs:
        recipe, overrides = r.argv[2 if r.stage == "data" else 1], []
        for arg in r.argv[3 if r.stage == "data" else 2 :]:
            if arg.startswith("--"):
                break
            overrides.append(arg)
        try:
            load_recipe(schema_for_recipe(recipe), recipe, overrides)
        except UserError as e:
            raise UserError(f"study {plan.cfg.name!r}, run {r.key}: {e}") from None


def write_plan(plan: StudyPlan) -> Path:
    """study.yaml (resolved) and plan.json (every run and each finding's members) in the study folder."""
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    (plan.study_dir / "study.yaml").write_text(to_yaml(plan.cfg))
    tmp = plan.study_dir / "plan.json.tmp"
    tmp.write_text(json.dumps(plan.to_dict(), indent=1))
    os.replace(tmp, plan.study_dir / "plan.json")
    return plan.study_dir / "plan.json"


def describe(plan: StudyPlan, done: set[str]) -> str:
    """The plan as text: counts per stage, then every run with its state and command line."""
    lines = [f"study {plan.cfg.name} (budget {plan.budget}, {plan.cfg.seeds} seed(s)): "
             f"{len(plan.runs)} runs, {len(done)} done; folder {plan.study_dir}"]
    for fid, members in plan.members.items():
        f = plan.cfg.findings[fid]
        levels = list(dict.fromkeys(m.level for m in members))
        shared = sum(not m.rl.startswith(f"rl/{fid}/") for m in members)
        lines.append(f"  {fid} {f.title}: {f.factor} in {levels} x {plan.cfg.seeds} seed(s) = {len(members)} RL "
                     f"run(s)" + (f", {shared} shared with an earlier finding" if shared else ""))
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
