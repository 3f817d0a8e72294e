"""`echo-nemo sweep --cluster local`: the same PointJob through submitit's local executor."""

from __future__ import annotations

import json

from sweep_helpers import REPO, pretrain_overrides

from echo_nemo.metrics import read_metrics


def test_local_cluster_sweep_runs_the_point_and_reports_it(cli, tiny_shards, tmp_path):
    recipe = tmp_path / "recipes" / "sweeps" / "loc.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(
        f"""name: loc
command: pretrain
recipe: {REPO / "recipes" / "pretrain" / "quickstart_smoke.yaml"}
grid: {{optim.lr: [0.002]}}
overrides: {json.dumps(pretrain_overrides(tiny_shards, steps=2))}
out_dir: {tmp_path}
profile: local
"""
    )
    r = cli("sweep", recipe, "--cluster", "local", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = tmp_path / "loc" / "optim.lr-0.002"
    rows = read_metrics(run)
    assert [row["step"] for row in rows] == [1, 2]
    assert (run / ".sweep_done").is_file()
    assert "optim:\n  lr: 0.002" in (run / "config.yaml").read_text()
    status = cli("sweep", "status", tmp_path / "loc")
    assert status.returncode == 0 and "done: 1" in status.stdout
    # the recipe now asks for more steps: the finished point is not redone, and says why
    recipe.write_text(recipe.read_text().replace('"train.steps=2"', '"train.steps=3"'))
    again = cli("sweep", recipe, "--cluster", "local", "--dry-run")
    assert again.returncode == 0, again.stderr
    assert "done (with train.steps=2; the recipe now gives train.steps=3: move its folder away" in again.stdout


def test_failing_point_is_reported_failed_and_exit_1(cli, tmp_path):
    """--cluster debug runs the point in-process; a bad shard dir fails it (exit 1)."""
    recipe = tmp_path / "recipes" / "sweeps" / "bad.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(
        f"""name: bad
command: pretrain
recipe: {REPO / "recipes" / "pretrain" / "quickstart_smoke.yaml"}
grid: {{train.seed: [5]}}
overrides: ["data.shards={tmp_path}/no_shards", "train.steps=1"]
out_dir: {tmp_path}
profile: local
"""
    )
    r = cli("sweep", recipe, "--cluster", "debug", timeout=300)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    status = cli("sweep", "status", tmp_path / "bad")
    assert status.returncode == 0
    assert "failed: 1" in status.stdout and "train.seed-5" in status.stdout
    assert not (tmp_path / "bad" / "train.seed-5" / ".sweep_done").exists()


def test_stopped_sittings_add_up_in_the_run_dir(tmp_path):
    from echo_nemo.launch.submit import WALL_LOG, record_stopped_sitting, stopped_sittings

    run = tmp_path / "run"
    assert stopped_sittings(run) == []
    record_stopped_sitting(run, 12.34)
    record_stopped_sitting(run, 5.0)
    assert stopped_sittings(run) == [12.3, 5.0]
    assert json.loads((run / WALL_LOG).read_text()) == [12.3, 5.0]
    assert sorted(p.name for p in run.iterdir()) == [WALL_LOG]  # no temporary file left
