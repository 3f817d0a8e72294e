"""The RL algorithms end to end on the debug model (in process, python reward functions)."""

import string

import pytest
import torch
from rl_helpers import CharTokenizer, Prompt, starts_with_reward

from echo_nemo.metrics import read_metrics
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.expert_iteration import filter_and_dedupe
from echo_nemo.rl.run import open_run, run_rl
from echo_nemo.schedule import log_spaced_steps as checkpoint_steps

PROBLEMS = [Prompt(f"q{i}", "1") for i in range(16)]
LOWER = starts_with_reward(string.ascii_lowercase)


def _cfg(tmp_path, algorithm="grpo", steps=2, **kw) -> RLConfig:
    cfg = RLConfig(algorithm=algorithm, run_dir=str(tmp_path / algorithm), steps=steps, seed=5)
    cfg.rollout.max_new_tokens = 6
    cfg.rollout.prompts_per_step = 4
    cfg.rollout.samples_per_prompt = 8
    cfg.optim.lr = 1e-2
    cfg.optim.critic_lr = 1e-2
    cfg.num_checkpoints = 3
    for key, value in kw.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section), name, value) if name else setattr(cfg, section, value)
    return cfg


def _run(cfg, reward=LOWER):
    return read_metrics(run_rl(cfg, reward_fn=reward, problems=PROBLEMS, eval_problems=PROBLEMS[:4],
                               tokenizer=CharTokenizer()))


def test_grpo_mean_reward_rises_on_a_learnable_reward(tmp_path):
    rows = _run(_cfg(tmp_path, steps=12))
    rewards = [r["reward/mean"] for r in rows]
    assert len(rewards) == 12
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.15, rewards
    assert rows[-1]["entropy/mean"] < rows[0]["entropy/mean"]


def test_first_update_has_ratio_one_and_zero_kl(tmp_path):
    rows = _run(_cfg(tmp_path, steps=2, kl__coef=0.1, kl__estimator="k3"))
    first = rows[0]
    assert first["policy/ratio_first_epoch"] == pytest.approx(1.0, abs=1e-6)
    assert first["kl/mean"] == 0.0 and first["loss/kl"] == 0.0
    assert rows[1]["kl/mean"] != 0.0  # after one step the policy has moved away from the reference


def test_kl_zero_loads_no_reference_model(tmp_path):
    for coef in (0.0, 0.01):
        cfg = _cfg(tmp_path / str(coef), kl__coef=coef)
        with open_run(cfg, reward_fn=LOWER, problems=PROBLEMS, eval_problems=[], tokenizer=CharTokenizer()) as run:
            if coef == 0:
                assert run.reference is None
            else:
                ref = dict(run.reference.named_parameters())
                for name, p in run.model.named_parameters():
                    assert torch.equal(p, ref[name]) and not ref[name].requires_grad


def test_step_metrics_formats_timers_and_checkpoints(tmp_path):
    rows = _run(_cfg(tmp_path, algorithm="reinforce", steps=3, kl__coef=0.01))
    for row in rows:
        shares = sum(row[f"format/{f}/share"] for f in ("tinygsm", "llm_code", "text", "other"))
        assert shares == pytest.approx(1.0)
        # the python reward gives no formats: all samples are `other`, and an absent format has
        # no accuracy (eval's meaning), not a made-up 0
        assert row["format/other/share"] == 1.0 and row["format/other/acc"] == pytest.approx(row["reward/mean"])
        assert "format/text/acc" not in row and row["format/text/share"] == 0.0
        for key in ("reward/mean", "kl/mean", "entropy/mean", "response_length/mean",
                    "throughput/tokens_per_s", "time/generate_s", "time/score_s", "time/advantages_s",
                    "time/update_s"):
            assert key in row, key
    assert "acc/echolab/pass@1" in rows[-1]  # the periodic greedy eval ran at the end
    ckpts = sorted(p.name for p in (tmp_path / "reinforce" / "checkpoints").iterdir())
    assert ckpts == [f"step_{s}" for s in checkpoint_steps(3, 3)]


def test_ppo_trains_policy_and_critic(tmp_path):
    rows = _run(_cfg(tmp_path, algorithm="ppo", steps=2, kl__coef=0.01))
    assert all("loss/value" in r and "critic/grad_norm" in r for r in rows)
    assert rows[0]["critic/value_mean"] == 0.0  # zero-initialised value head
    assert rows[1]["critic/value_mean"] != 0.0  # ... trained after one update
    assert rows[0]["policy/ratio_first_epoch"] == pytest.approx(1.0, abs=1e-6)
    assert (tmp_path / "ppo" / "critic" / "checkpoints" / "step_2" / "meta.json").is_file()


def test_resume_after_a_kill_continues_the_same_run(tmp_path):
    full = _run(_cfg(tmp_path / "a", steps=4, num_checkpoints=15))
    calls = {"n": 0}

    def dies_in_step_3(completions, truths):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill after the step-2 checkpoint
        return LOWER(completions, truths)

    cfg = _cfg(tmp_path / "b", steps=4, num_checkpoints=15)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, reward=dies_in_step_3)
    assert [r["step"] for r in read_metrics(cfg.run_dir)] == [1, 2]
    resumed = _run(cfg)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        assert a["reward/mean"] == b["reward/mean"]
        assert a["loss/policy"] == pytest.approx(b["loss/policy"], rel=1e-5, abs=1e-7)


def test_held_out_evals_leave_the_training_run_unchanged(tmp_path):
    """Greedy evals draw no random numbers and every rollout seeds its own sampler: a run
    evaluated at every step trains exactly as one evaluated only at the end."""
    keys = ("reward/mean", "loss/policy", "grad_norm", "entropy/mean", "response_length/mean")
    rare = _run(_cfg(tmp_path / "rare", steps=3, eval_every=0))
    often = _run(_cfg(tmp_path / "often", steps=3, eval_every=1))
    assert [r["step"] for r in often if "acc/echolab/pass@1" in r] == [0, 1, 2, 3]
    assert [r["step"] for r in rare if "acc/echolab/pass@1" in r] == [3]
    train_rows = [r for r in often if r["step"] > 0]
    assert [{k: r[k] for k in keys} for r in rare] == [{k: r[k] for k in keys} for r in train_rows]


def test_periodic_eval_starts_at_step_0_and_a_rerun_before_any_checkpoint_starts_clean(tmp_path):
    cfg = _cfg(tmp_path, steps=2, eval_every=2)

    def dies_in_step_1(completions, truths):
        if len(completions) > len(PROBLEMS[:4]):  # a rollout, not the eval's 4 greedy answers
            raise KeyboardInterrupt
        return LOWER(completions, truths)

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, reward=dies_in_step_1)
    [before] = read_metrics(cfg.run_dir)  # the starting policy's eval, logged before step 1
    assert before["step"] == 0 and "acc/echolab/pass@1" in before and "reward/mean" not in before
    rows = _run(cfg)  # no checkpoint: a fresh start, the first attempt's rows do not stay
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["acc/echolab/pass@1"] == before["acc/echolab/pass@1"]
    assert "acc/echolab/pass@1" in rows[2] and "acc/echolab/pass@1" not in rows[1]


def test_expert_iteration_filters_dedupes_and_retrains_from_the_base(tmp_path):
    keep, dupes = filter_and_dedupe(["a", "a", "a", "b", "b"], ["x", "x", "y", "x", "z"], [1.0, 1.0, 0.0, 1.0, 0.0])
    assert keep == [0, 3] and dupes == 1  # (a, x) twice counts once; (b, x) is another question
    cfg = _cfg(tmp_path, algorithm="ei", ei__rounds=2, ei__samples_per_question=4, ei__questions_per_round=8,
               ei__sft_lr=1e-2, ei__sft_batch_size=8, ei__sft_epochs=1)
    rows = _run(cfg)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        correct = round(r["reward/mean"] * 8 * 4)
        assert r["ei/kept"] + r["ei/duplicates"] == correct
        assert r["sft/steps"] == -(-r["ei/kept"] // 8)
    assert rows[1]["reward/mean"] > rows[0]["reward/mean"]  # the round-1 model samples round 2


def test_checkpoint_steps():
    steps = checkpoint_steps(1168)
    assert steps[0] == 10 and steps[-1] == 1168 and len(steps) == 15  # ceil(10^-2.1 * 1168) = 10
    assert checkpoint_steps(3) == [1, 2, 3]
    assert checkpoint_steps(40, 1) == [40] and checkpoint_steps(40, 2) == [1, 40]  # the end is saved
