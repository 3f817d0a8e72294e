"""A study on the real local SLURM cluster (marker `slurm`): one job array per stage, in order."""

from __future__ import annotations

import json

import pytest

from echo_nemo.launch.submit import is_done

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_smoke_study_runs_stage_by_stage_under_slurm(slurm_cluster, tmp_path, cli):
    args = ["study", "recipes/study/echolab.yaml", "--budget", "smoke", "--only", "f1", "--seeds", "1",
            "--cluster", "slurm", "--out", str(tmp_path)]
    r = cli(*args, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = tmp_path / "echolab" / "smoke"
    plan = json.loads((study / "plan.json").read_text())
    done = [r["key"] for r in plan["runs"] if is_done(study / r["key"])]
    assert done == ["data/echo_tg_omi1_omi2-fair", "pretrain/base/seed-0", "calibrate/base/seed-0",
                    "rl/f1/grpo/pretrain-0/seed-0", "eval/pretrain/base/seed-0/final",
                    "eval/f1/grpo/pretrain-0/seed-0/final"]  # f1's, nothing else
    for stage in ("data", "pretrain", "calibrate", "rl", "eval"):  # each stage ran as its own SLURM job
        logs = list((study / "logs" / stage).glob("*/*_log.out"))
        assert logs and "[echo-nemo sweep]" in logs[0].read_text(), stage
    assert "6/6 runs done" in r.stdout and (study / "report" / "verdicts.json").is_file()
