"""Typed configs of a sweep and of a cluster profile.

A sweep recipe (recipes/sweeps/*.yaml) names the `echo-nemo` command to run, its base
recipe, and a grid over dotted config keys of that recipe:

    name: rl_150m
    command: rl
    recipe: recipes/rl/ppo_gsm8k_150m.yaml
    grid:
      algorithm: [ppo, grpo, reinforce]
      kl.coef: [0.0, 0.001, 0.01]
      _mixture: [as_fm3_tg, as_fm3_tg_omi1]     # a sweep variable, not a config key
    overrides: ["model.init=runs/pretrain_150m/{_mixture}"]
    profile: gpu_1node_8gpu
    resources: {time: "12:00:00"}

Grid values are a list, or a mapping label -> value when the value (a path) would make
a poor run-dir name. Keys starting with `_` are sweep variables: they name points and
fill `{key}` placeholders in `overrides`, but are not passed to the command.

A cluster profile (slurm/profiles/*.yaml) holds the SLURM resources; the sweep's
`resources` mapping overrides single keys of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_nemo.config import REPO_ROOT, load_recipe
from echo_nemo.errors import UserError

PROFILES_DIR = REPO_ROOT / "slurm" / "profiles"
COMMANDS = ("pretrain", "rl", "eval", "data")
CLUSTERS = ("slurm", "local", "debug")


@dataclass
class ClusterProfile:
    """SLURM resources of one job (one grid point). Tasks per node = GPUs per node."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    # CPU-only jobs (gpus_per_node 0) run this many tasks per node; with GPUs it must be
    # left null or equal gpus_per_node (one task per GPU).
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time: str = "01:00:00"  # HH:MM:SS, or D-HH:MM:SS
    constraint: str | None = None
    array_parallelism: int = 64  # how many points of the array run at once
    max_requeues: int = 3  # timeouts/preemptions before a point is given up
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load ...)
    additional: dict[str, str] = field(default_factory=dict)  # any other #SBATCH --key=value

    def validate(self) -> None:
        if self.nodes < 1:
            raise UserError(f"cluster profile: nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise UserError(
                f"cluster profile: gpus_per_node must be >= 0, got {self.gpus_per_node}"
            )
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise UserError(
                f"cluster profile: tasks_per_node ({self.tasks_per_node}) must equal gpus_per_node "
                f"({self.gpus_per_node}): one task per GPU"
            )
        if self.array_parallelism < 1:
            raise UserError("cluster profile: array_parallelism must be >= 1")
        time_minutes(self.time)

    @property
    def ntasks_per_node(self) -> int:
        return self.gpus_per_node or self.tasks_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    @property
    def timeout_min(self) -> int:
        return time_minutes(self.time)


def time_minutes(text: str) -> int:
    """`[D-]HH:MM:SS` (or plain minutes) -> whole minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)|(\d+)", str(text).strip())
    if not m:
        raise UserError(
            f"cluster profile: time {text!r} must look like HH:MM:SS, D-HH:MM:SS or minutes"
        )
    if m.group(5):
        return int(m.group(5))
    days, hours, mins, secs = (int(g or 0) for g in m.groups()[:4])
    return days * 1440 + hours * 60 + mins + (1 if secs else 0)


@dataclass
class SweepConfig:
    """One sweep: a command, its base recipe, a grid, and where/how to run the points."""

    name: str = "sweep"
    command: str = "pretrain"
    recipe: str = ""  # base recipe, relative to the repo root (or absolute)
    grid: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(
        default_factory=list
    )  # for every point; may use {key} placeholders
    # The config key that receives each point's run directory.
    run_dir_key: str = "run_dir"
    out_dir: str = "runs/sweeps"  # the sweep directory is out_dir/name
    profile: str = "local"  # slurm/profiles/<profile>.yaml, or a path to a YAML file
    resources: dict[str, Any] = field(default_factory=dict)  # overrides of profile keys
    description: str = ""

    def validate(self) -> None:
        if self.command not in COMMANDS:
            raise UserError(
                f"sweep {self.name!r}: command must be one of {COMMANDS}, got {self.command!r}"
            )
        if not self.recipe:
            raise UserError(
                f"sweep {self.name!r}: `recipe` (the base recipe of every point) is required"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise UserError(
                f"sweep name {self.name!r} must use only letters, digits, '_', '.', '-'"
            )
        if not self.grid:
            raise UserError(f"sweep {self.name!r}: `grid` must map at least one key to its values")
        for key, values in self.grid.items():
            if isinstance(values, dict | list):
                if len(values) == 0:
                    raise UserError(f"sweep {self.name!r}: grid key {key!r} has no values")
            else:
                raise UserError(
                    f"sweep {self.name!r}: grid key {key!r} must map to a list or a mapping "
                    f"label -> value, got {values!r}"
                )


def resolve_path(path: str, base: Path = REPO_ROOT) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


def profile_path(profile: str) -> Path:
    """A profile name (slurm/profiles/<name>.yaml) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        return resolve_path(profile)
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(x.stem for x in PROFILES_DIR.glob("*.yaml"))
        raise UserError(
            f"cluster profile {profile!r} not found in {PROFILES_DIR} (known: {', '.join(known)})"
        )
    return path


def load_profile(profile: str, resources: dict[str, Any] | None = None) -> ClusterProfile:
    """The cluster profile with the sweep's `resources` applied key by key."""
    # JSON is YAML flow syntax, so lists and mappings survive the dotted-override parser.
    overrides = [f"{key}={json.dumps(value)}" for key, value in (resources or {}).items()]
    path = profile_path(profile)
    try:
        return load_recipe(ClusterProfile, path, overrides)
    except UserError as e:
        raise UserError(f"cluster profile {str(path)!r} (with the sweep's resources): {e}") from None
