"""Rank layout from the SLURM environment (echo_nemo.distributed.detect_env)."""

from __future__ import annotations

import pytest

from echo_nemo.distributed import detect_env

SLURM_VARS = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_STEP_ID",
    "SLURM_STEPID",
]


@pytest.fixture
def clean_env(monkeypatch):
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_srun_task_gets_its_rank_from_slurm(clean_env):
    clean_env.setenv("SLURM_STEP_ID", "0")
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "16")
    clean_env.setenv("SLURM_LOCALID", "5")
    clean_env.setenv("SLURM_JOB_ID", "123456")
    clean_env.setenv("MASTER_ADDR", "node07")
    env = detect_env()
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (5, 16, 5, "node07")
    assert env.master_port == 20000 + 123456 % 20000  # same on every task of the job


def test_batch_script_outside_srun_is_a_single_process(clean_env):
    """The batch step sees SLURM_PROCID=0 and the allocation's task count but no step id:
    treating it as rank 0 of 16 would wait forever for the other ranks."""
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "16")
    clean_env.setenv("SLURM_JOB_ID", "123456")
    env = detect_env()
    assert (env.rank, env.world_size) == (0, 1)
