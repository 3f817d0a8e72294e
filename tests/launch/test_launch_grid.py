"""Grid expansion, cluster profiles and `echo-nemo sweep --dry-run` (no cluster needed)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from echo_nemo.errors import UserError
from echo_nemo.launch.config import SweepConfig, load_profile, time_minutes
from echo_nemo.launch.grid import expand

REPO = Path(__file__).resolve().parents[2]


def test_grid_is_the_cartesian_product_with_names_from_the_point():
    cfg = SweepConfig(
        name="s",
        recipe="x.yaml",
        grid={
            "_mixture": ["a_b", "c"],
            "kl.coef": [0.0, 0.01],
            "algorithm": ["ppo", "grpo", "reinforce"],
        },
        overrides=["model.init=runs/pre/{_mixture}/x", "seed=7"],
    )
    points = expand(cfg)
    assert len(points) == 2 * 2 * 3
    assert len({p.name for p in points}) == 12
    p = points[4]  # first key varies slowest: a_b, 0.01, grpo
    assert p.name == "mixture-a_b__kl.coef-0.01__algorithm-grpo"
    assert p.overrides == ["kl.coef=0.01", "algorithm=grpo", "model.init=runs/pre/a_b/x", "seed=7"]
    assert p.values == {"_mixture": "a_b", "kl.coef": 0.01, "algorithm": "grpo"}


def test_grid_mapping_values_use_labels_in_names():
    cfg = SweepConfig(
        name="s", recipe="x.yaml", grid={"model.init": {"small": "/ckpt/a b/1", "big": "/ckpt/2"}}
    )
    names = [(p.name, p.overrides) for p in expand(cfg)]
    assert names == [
        ("model.init-small", ["model.init=/ckpt/a b/1"]),
        ("model.init-big", ["model.init=/ckpt/2"]),
    ]


def test_grid_errors_name_the_problem():
    cfg = SweepConfig(
        name="s", recipe="x.yaml", grid={"a": [1, 1.0, 2]}
    )  # 1 and 1.0 differ as labels
    assert len(expand(cfg)) == 3
    with pytest.raises(UserError, match="repeated values"):
        expand(SweepConfig(name="s", recipe="x.yaml", grid={"a": ["x", "x"]}))
    with pytest.raises(UserError, match=r"placeholder \{nope\}"):
        expand(SweepConfig(name="s", recipe="x.yaml", grid={"a": [1]}, overrides=["b={nope}"]))
    with pytest.raises(UserError, match="grid key 'a' has no values"):
        SweepConfig(name="s", recipe="x.yaml", grid={"a": []}).validate()


def test_profile_resources_override_key_by_key():
    prof = load_profile(
        "gpu_node", {"nodes": 2, "time": "1-00:00:00", "setup": ["module load cuda"]}
    )
    assert (prof.nodes, prof.gpus_per_node, prof.ntasks_per_node, prof.world_size) == (2, 8, 8, 16)
    assert prof.timeout_min == 1440 and prof.setup == ["module load cuda"]
    assert time_minutes("00:02:30") == 3 and time_minutes("90") == 90
    with pytest.raises(UserError, match=r"cluster profile .*gpu_node.yaml.*'gpus'"):
        load_profile("gpu_node", {"gpus": 4})
    with pytest.raises(UserError, match="one task per GPU"):
        load_profile("gpu_node", {"tasks_per_node": 2})
    with pytest.raises(UserError, match="cluster profile 'nope' not found"):
        load_profile("nope")


def _write_sweep(root: Path, body: str) -> Path:
    (root / "recipes" / "rl").mkdir(parents=True, exist_ok=True)
    (root / "recipes" / "sweeps").mkdir(parents=True, exist_ok=True)
    (root / "recipes" / "rl" / "base.yaml").write_text(
        "algorithm: ppo\nrollout: {samples_per_prompt: 4}\n"
    )
    path = root / "recipes" / "sweeps" / "s.yaml"
    path.write_text(body.replace("BASE", str(root / "recipes" / "rl" / "base.yaml")))
    return path


def test_dry_run_prints_points_and_sbatch_script_and_writes_nothing(cli, tmp_path):
    sweep = _write_sweep(
        tmp_path,
        f"""name: mini
command: rl
recipe: BASE
grid: {{kl.coef: [0.0, 0.01], algorithm: [grpo, reinforce, ppo]}}
out_dir: {tmp_path}/runs
profile: gpu_node
resources: {{nodes: 2, partition: big, account: lab, qos: high, time: "10:00:00"}}
""",
    )
    # a PATH without SLURM's commands: a dry run previews the script on any machine
    r = cli("sweep", sweep, "--dry-run", env={"PATH": os.path.dirname(sys.executable)})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "mini: 6 points, 6 to submit" in out
    assert len(re.findall(r"^\s+\[\s*\d+\] submit ", out, re.M)) == 6
    for flag in [
        "--array=0-5%6",
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--partition=big",
        "--account=lab",
        "--qos=high",
        "--time=600",
        "--requeue",
    ]:
        assert f"#SBATCH {flag}" in out, flag
    assert not (tmp_path / "runs").exists()


def test_bad_sweeps_exit_2_naming_the_key(cli, tmp_path):
    sweep = _write_sweep(
        tmp_path,
        f"name: bad\ncommand: rl\nrecipe: BASE\ngrid: {{kl.coeff: [0.1]}}\nout_dir: {tmp_path}\n",
    )
    r = cli("sweep", sweep, "--dry-run")
    assert r.returncode == 2
    assert (
        "kl.coeff" in r.stderr and "point kl.coeff-0.1" in r.stderr and "Traceback" not in r.stderr
    )
    r = cli("sweep", sweep, "profile=nowhere", "--dry-run")
    assert r.returncode == 2 and "cluster profile 'nowhere' not found" in r.stderr
    r = cli("sweep", "status", tmp_path)
    assert r.returncode == 2 and "not a sweep directory" in r.stderr


STUDY_SWEEPS = {
    # recipe: (points, nodes, gpus per node)
    "rl_150m_mixtures_kl_algos.yaml": (90, 1, 1),
    "pretrain_150m_mixtures.yaml": (10, 1, 8),
    "pretrain_1b_mixtures.yaml": (5, 4, 8),
    "rl_1b_mixtures.yaml": (10, 1, 8),
    "ei_150m_mixtures.yaml": (20, 1, 1),
    "ei_1b_mixtures.yaml": (5, 1, 8),
    "echolab_cpu_pretrain.yaml": (2, 1, 0),
    "echolab_cpu_rl.yaml": (4, 1, 0),
}


@pytest.mark.parametrize("recipe", sorted(STUDY_SWEEPS))
def test_study_sweeps_dry_run(recipe, tmp_path, capsys, monkeypatch):
    """In-process (the real CLI's main) to keep 8 recipes fast; every point is validated
    against the command's own schema on the way. No SLURM on PATH: dry runs need none."""
    from echo_nemo.cli import main

    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))

    points, nodes, gpus = STUDY_SWEEPS[recipe]
    rc = main(
        ["sweep", str(REPO / "recipes" / "sweeps" / recipe), f"out_dir={tmp_path}", "--dry-run"]
    )
    r = capsys.readouterr()
    assert rc == 0, r.err
    assert not any(tmp_path.iterdir())
    out = r.out
    m = re.search(r": (\d+) points, (\d+) to submit", out)
    assert m and int(m.group(1)) == points and int(m.group(2)) == points
    assert f"#SBATCH --nodes={nodes}\n" in out
    assert f"#SBATCH --ntasks-per-node={gpus or 1}\n" in out
    assert ("#SBATCH --gpus-per-node" in out) == (gpus > 0)
    assert re.search(rf"#SBATCH --array=0-{points - 1}%\d+", out)
    if recipe.startswith("rl_150m"):
        names = re.findall(r"\] submit\s+(\S+)", out)
        assert len(set(names)) == 90
        assert sum("kl.coef-0.001__algorithm-grpo" in n for n in names) == 10
        assert json.dumps("as_fm3_tg_8xomi1")[1:-1] in out


def test_slurm_without_a_controller_exits_2(cli, tmp_path):
    """sbatch missing, or present with no controller: a clear error, not a traceback."""
    sweep = _write_sweep(
        tmp_path, f"name: noctl\ncommand: rl\nrecipe: BASE\ngrid: {{seed: [1]}}\nout_dir: {tmp_path}\n"
    )
    # a controller on a port nobody listens at: sbatch fails in about a second (a missing
    # slurm.conf would make it retry for 60 s)
    conf = tmp_path / "noctl.conf"
    conf.write_text("ClusterName=noctl\nSlurmctldHost=localhost\nSlurmctldPort=9\nMessageTimeout=2\n"
                    "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=localhost Default=YES\n")
    r = cli("sweep", sweep, "--cluster", "slurm", env={"SLURM_CONF": str(conf)})
    assert r.returncode == 2, r.stderr
    assert "sbatch" in r.stderr and "--cluster local" in r.stderr and "Traceback" not in r.stderr
