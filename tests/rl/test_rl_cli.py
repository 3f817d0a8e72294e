"""`echo-nemo rl` through the real CLI: reward server lifecycle, run dir, bad input."""

import os
import uuid
from pathlib import Path

from echo_nemo.distributed import free_port
from echo_nemo.metrics import read_metrics

RECIPE = "recipes/rl/grpo_echolab_tiny.yaml"
SMALL = ["model.init=null", "model.scale=debug", "steps=2", "rollout.prompts_per_step=2",
         "rollout.samples_per_prompt=2", "rollout.max_new_tokens=12", "data.eval_limit=2",
         "eval_max_new_tokens=12", "num_checkpoints=2"]


def _env(**extra: str) -> dict[str, str]:
    # in-process tests leave MASTER_PORT (their own group's port) in os.environ: the CLI
    # subprocess must not try to rendezvous there
    return {"MASTER_PORT": str(free_port()), **extra}


def _processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries `marker` (ours and our children's)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_rl_command_starts_and_stops_its_reward_server(cli, tmp_path):
    marker = f"ECHO_RL_TEST_MARK={uuid.uuid4().hex}"
    key, value = marker.split("=")
    run_dir = tmp_path / "run"
    res = cli("rl", RECIPE, *SMALL, f"run_dir={run_dir}", env=_env(**{key: value}))
    assert res.returncode == 0, res.stderr[-3000:]
    assert _processes_with(marker) == [], "the reward server (or a worker) outlived the rl command"
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the starting policy's held-out eval
    assert "acc/echolab/pass@1" in rows[0] and "reward/mean" not in rows[0]
    # scored by the real reward server: every sample has a format, shares add up to 1
    assert sum(rows[1][f"format/{f}/share"] for f in ("tinygsm", "llm_code", "text", "other")) == 1.0
    assert "acc/echolab/pass@1" in rows[-1]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_1", "step_2"]
    # the RL checkpoint is a standard one: eval/export load it
    from echo_nemo.checkpoint import load_model_for_inference

    model, tok, mcfg = load_model_for_inference(run_dir)
    assert mcfg.scale == "debug" and tok.vocab_size == mcfg.vocab_size


def test_bad_input_exits_2_naming_the_key(cli, tmp_path):
    res = cli("rl", RECIPE, "rollout.temprature=0.5", f"run_dir={tmp_path}/x", env=_env())
    assert res.returncode == 2, res.stderr[-2000:]
    assert "rollout.temprature" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    res = cli("rl", RECIPE, "algorithm=dpo", f"run_dir={tmp_path}/x", env=_env())
    assert res.returncode == 2 and "algorithm" in res.stderr and "grpo" in res.stderr, res.stderr[-2000:]
    res = cli("rl", RECIPE, "model.init=/nonexistent/run", f"run_dir={tmp_path}/y", env=_env())
    assert res.returncode == 2, res.stderr[-2000:]
    assert "/nonexistent/run" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not os.path.exists(tmp_path / "y" / "metrics.jsonl")
