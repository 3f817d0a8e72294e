"""TRL's own GRPOTrainer trains an echo-nemo export with echo-nemo's reward function.

Installed with the `interop` extra (`pip install -c constraints.txt -e '.[test,interop]'`,
trl 1.16.0); without trl these tests skip and say so. `bash tests/interop/run_trl.sh` makes
that environment and runs them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from echo_nemo.reward import adapters

HAS_TRL = importlib.util.find_spec("trl") is not None
needs_trl = pytest.mark.skipif(
    not HAS_TRL, reason="trl is not installed: pip install -c constraints.txt -e '.[test,interop]' "
    "(or bash tests/interop/run_trl.sh)",
)
REPO = Path(__file__).resolve().parents[2]
REWARD_NAME = "echo_nemo_math_reward"  # the name TRL logs rewards under (the function's __name__)


def _question(prompt) -> str:
    """The question of a logged TRL prompt: text (question + blank line) or a user turn."""
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt.removesuffix("\n\n")


def _train(export: Path, problems: list, conversational: bool, out: Path):
    """Two GRPO steps of TRL's trainer on `export`; returns (trainer, per-step logs), each
    step's logs being the prompts, completions and rewards TRL recorded for it."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": p.question}] if conversational else p.prompt,
             "answer": p.answer} for p in problems]  # fmt: skip
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, max_steps=2, per_device_train_batch_size=8,
        num_generations=4, max_completion_length=12, learning_rate=1e-3, logging_steps=1,
        report_to="none", save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=str(export), reward_funcs=adapters.trl_reward, args=args,
                          train_dataset=Dataset.from_list(rows))
    steps: list[dict] = []

    class Record(TrainerCallback):  # TRL keeps the latest generation batch in trainer._logs
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and f"rewards/{REWARD_NAME}/mean" in logs:
                steps.append({"prompt": list(trainer._logs["prompt"]),
                              "completion": list(trainer._logs["completion"]),
                              "reward": list(trainer._logs["rewards"][REWARD_NAME]),
                              "mean": logs[f"rewards/{REWARD_NAME}/mean"]})  # fmt: skip

    trainer.add_callback(Record())
    trainer.train()
    return trainer, steps


@pytest.mark.interop
@needs_trl
@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_trl_grpo_trains_an_export_and_logs_echo_nemo_rewards(taught_export, echolab_problems, conversational,
                                                                tmp_path):
    """2 steps x 2 prompts x 4 completions; every reward TRL logged is `score()` of that
    completion against the prompt's answer, and the weights moved."""
    from safetensors.torch import load_file

    from echo_nemo.reward import score

    trainer, steps = _train(taught_export, echolab_problems, conversational, tmp_path / "trl")
    assert trainer.state.global_step == 2 and len(steps) == 2
    answers = {p.question: p.answer for p in echolab_problems}
    every = []
    for step in steps:
        assert len(step["completion"]) == len(step["reward"]) == 8
        if conversational:  # the assistant's turn as TRL decodes it
            assert all(c[0]["role"] == "assistant" for c in step["completion"])
        texts = [c[0]["content"] if conversational else c for c in step["completion"]]
        truths = [answers[_question(p)] for p in step["prompt"]]
        want = [s.reward for s in score(texts, truths)]
        assert step["reward"] == want, list(zip(texts, truths, step["reward"]))
        assert math.isclose(step["mean"], sum(want) / len(want), abs_tol=1e-6)
        every += want
    assert 0 < sum(every) < len(every), every  # the taught model is right some of the time, not always
    before = load_file(str(taught_export / "model.safetensors"))
    after = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_trl_reward_reads_content_none_as_empty_text():
    """TRL hands a tool-calling assistant turn over with `content: None`: it adds no text
    (never the string "None"), and the turns after it are graded as usual."""
    tool_call = {"role": "assistant", "content": None,
                 "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2}}}]}
    completions = [
        [tool_call],
        [tool_call, {"role": "tool", "name": "add", "content": "4"}, {"role": "assistant", "content": "\\boxed{4}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{"}, {"type": "text", "text": "4}"}]}],
    ]
    assert adapters._completion_text(completions[0]) == ""
    assert adapters._completion_text(completions[1]) == "\\boxed{4}"
    prompts = [[{"role": "user", "content": "What is 2+2?"}]] * 3
    assert adapters.trl_reward(prompts=prompts, completions=completions, answer=["4"] * 3,
                               completion_ids=[[1]] * 3, trainer_state=None) == [0.0, 1.0, 1.0]  # fmt: skip


@pytest.mark.interop
@needs_trl
def test_bench_rl_step_smoke(tmp_path):
    """benchmarks/bench_rl_step.py end to end at a debug shape: both sides train and every
    figure printed is a positive number (timings are never asserted)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_rl_step.py"), "--scale", "debug", "--prompts", "2",
         "--group", "4", "--new-tokens", "8", "--micro-batch", "4", "--threads", "1"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for label in ("baseline TRL GRPOTrainer", "echo-nemo rl \\(grpo\\)"):
        m = re.search(label + r"\s+([0-9.]+)s\s+([0-9.]+)s\s+([0-9.]+)s\s+([0-9.]+)s\s+([0-9.]+)\s+([0-9.]+)", r.stdout)
        assert m, r.stdout
        generate, _score, update, step, steps_per_s, new_tokens = map(float, m.groups())
        assert generate > 0 and update > 0 and step > 0 and steps_per_s > 0 and 0 < new_tokens <= 8
    assert float(re.search(r"ratio echo-nemo / TRL steps/s: ([0-9.]+)x", r.stdout).group(1)) > 0
