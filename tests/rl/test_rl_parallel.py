"""RL at TP = 2 trains the same model as at TP = 1, with gradient clipping active at every step.

Two gloo processes against one, GRPO and PPO (policy and critic): the same per-step loss
and global grad norm, and the same weights after 3 steps when the TP = 2 checkpoint is
loaded at TP = 1. Before the shared clip (echo_nemo.parallel), each TP rank clipped its
own shard by its own norm and the runs parted at step 2.
"""

from __future__ import annotations

import string

import pytest
import torch
from rl_helpers import CharTokenizer, Prompt, starts_with_reward

from echo_nemo.distributed import run_distributed
from echo_nemo.metrics import read_metrics

PROBLEMS = [Prompt(f"q{i}", "1") for i in range(8)]
CLIP = 1e-4  # far below the debug model's gradient norms: every step clips


class Tokenizer(CharTokenizer):
    """256 ids: the vocabulary pads to 256 at TP = 1 and 2 alike, so both runs draw the
    same initial weights (a fresh model's init depends on the padded vocabulary size)."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab_size = 256


def _cfg(run_dir: str, algorithm: str, tp: int):
    from echo_nemo.rl.config import RLConfig

    cfg = RLConfig(algorithm=algorithm, run_dir=run_dir, steps=3, seed=5, num_checkpoints=1)
    cfg.parallel.tp = tp
    cfg.rollout.max_new_tokens = 6
    cfg.rollout.prompts_per_step = 4
    cfg.rollout.samples_per_prompt = 4
    cfg.optim.lr = cfg.optim.critic_lr = 1e-2
    cfg.optim.grad_clip = CLIP
    return cfg


def _train(run_dir: str, algorithm: str, tp: int) -> None:
    from echo_nemo.rl.run import run_rl

    reward = starts_with_reward(string.ascii_lowercase)
    run_rl(_cfg(run_dir, algorithm, tp), reward_fn=reward, problems=PROBLEMS, eval_problems=[],
           tokenizer=Tokenizer())


def _weights_at_tp1(run_dir: str, out: str) -> None:
    """The run's final policy (and critic) loaded into fresh TP = 1 models."""
    from echo_nemo import checkpoint as C
    from echo_nemo import distributed as D
    from echo_nemo.model.build import build_gpt
    from echo_nemo.rl.ppo import ValueHead

    D.init_distributed(tp=1, seed=0)
    ckpt = C.latest_checkpoint(run_dir)
    mcfg = C.model_config_from_meta(C.read_meta(ckpt))
    policy = build_gpt(mcfg, mcfg.vocab_size)
    C.load_checkpoint(ckpt, policy, None, load_rank_extra=False)
    weights = {f"policy.{k}": v for k, v in policy.state_dict().items() if isinstance(v, torch.Tensor)}
    critic_ckpt = C.latest_checkpoint(f"{run_dir}/critic")
    if critic_ckpt is not None:
        critic = build_gpt(mcfg, mcfg.vocab_size)
        critic.output_layer = ValueHead(critic.config.hidden_size)
        critic.share_embeddings_and_output_weights = False
        C.load_checkpoint(critic_ckpt, critic, None, load_rank_extra=False)
        weights |= {f"critic.{k}": v for k, v in critic.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save(weights, out)


# PPO's critic at TP=2 (~40 s) in the slow run; GRPO's policy at TP=2 in the default one
@pytest.mark.parametrize("algorithm", ["grpo", pytest.param("ppo", marks=pytest.mark.slow)])
def test_rl_tp2_equals_tp1_with_clipping(algorithm, tmp_path):
    runs = {tp: str(tmp_path / f"tp{tp}") for tp in (1, 2)}
    for tp, run_dir in runs.items():
        run_distributed(_train, tp, run_dir, algorithm, tp)
    rows = {tp: read_metrics(run_dir) for tp, run_dir in runs.items()}
    assert [r["step"] for r in rows[2]] == [1, 2, 3] == [r["step"] for r in rows[1]]
    keys = ["loss/policy", "grad_norm"] + (["loss/value", "critic/grad_norm"] if algorithm == "ppo" else [])
    for one, two in zip(rows[1], rows[2]):
        assert one["reward/mean"] == two["reward/mean"]  # the same samples
        assert one["grad_norm"] > 100 * CLIP  # clipping did act
        for key in keys:
            # abs: a policy loss over whitened advantages is ~0, a sum of O(1) terms that cancel
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), (key, one["step"])

    for tp, run_dir in runs.items():
        run_distributed(_weights_at_tp1, 1, run_dir, str(tmp_path / f"w{tp}.pt"))
    w1, w2 = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    assert w1.keys() == w2.keys() and any(k.startswith("critic.") for k in w1) == (algorithm == "ppo")
    for name, a in w1.items():
        torch.testing.assert_close(w2[name], a, rtol=1e-5, atol=1e-6, msg=name)
