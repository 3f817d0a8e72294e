"""echo-nemo's NeMo-RL environment on message logs shaped as NeMo-RL 0.6.0 builds them.

NeMo-RL does not install here (Python >= 3.13, GPU stack), so these tests drive the
environment class directly with the data NeMo-RL's source hands it: ``math_hf_data_processor``
renders the user turn (prompt file + passthrough chat template) and puts the ground truth in
``extra_env_info``; generation appends ``{"role": "assistant", "content": decoded text,
"token_ids": ...}``; ``calculate_rewards`` keeps only role and content and calls
``step(message_logs, extra_env_infos)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from echo_nemo.data.sources import Problem
from echo_nemo.errors import UserError
from echo_nemo.integrations import nemo_rl
from echo_nemo.reward.score import score

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Tom has 3 boxes of 14 apples. How many apples does he have?"
RESPONSES = {
    "tinygsm": "def simple_math_problem() -> int:\n    boxes = 3\n    result = boxes * {v} // 3\n    return result\n",
    "llm_code": "Multiply.\n<llm-code>\nboxes * {v} // 3\n</llm-code>\n<llm-code-output>\n{v}\n</llm-code-output>\nSo \\boxed{{{v}}}.",
    "text": "He has 3 * 14 = {v} apples, so the answer is \\boxed{{{v}}}.",
}
TRUTHS = ("42", "Each box has 14.\n3 * 14 = <<3*14=42>>42\n#### 42", "\\boxed{42}")


def user_turn(question: str) -> dict:
    """math_hf_data_processor's user message: prompt.format(problem), passthrough template."""
    text = nemo_rl.PROMPT_FILE.read_text(encoding="utf-8").format(question)
    return {"role": "user", "content": text, "token_ids": torch.arange(len(text.split()))}


def rollout(response: str | None) -> list[dict]:
    log = [user_turn(QUESTION), {"role": "assistant", "content": response, "token_ids": torch.tensor([5, 6])}]
    return [{k: m[k] for k in ("role", "content")} for m in log]  # calculate_rewards' view


def test_prompt_file_gives_echo_nemo_prompt() -> None:
    for question in (QUESTION, "What is {x} if 2x = {4}?"):  # braces in a question stay as they are
        assert user_turn(question)["content"] == Problem("p", question, "42").prompt


def test_step_rewards_equal_score() -> None:
    env = nemo_rl.EchoMathEnvironment({"num_workers": 8})
    logs, meta, texts, truths = [], [], [], []
    for body in RESPONSES.values():
        for v in (42, 41):
            for truth in TRUTHS:
                logs.append(rollout(body.format(v=v)))
                meta.append({"ground_truth": truth})
                texts.append(body.format(v=v))
                truths.append(truth)
    out = env.step(logs, meta)
    want = score(texts, truths)
    assert out.rewards.tolist() == [s.reward for s in want]
    assert sorted(set(out.rewards.tolist())) == [0.0, 1.0]  # both outcomes occur
    assert out.rewards.dtype == torch.float32 and out.terminateds.tolist() == [1.0] * len(logs)
    assert out.answers == [s.answer for s in want]
    assert out.next_stop_strings == [None] * len(logs)
    assert [o["content"] for o in out.observations][:2] == ["Environment: correct"] * 2
    assert {o["role"] for o in out.observations} == {"environment"}
    assert [m["ground_truth"] for m in out.metadata] == truths
    assert [m["format"] for m in out.metadata] == [s.format for s in want]


def test_last_assistant_message_is_graded_and_none_is_empty_text() -> None:
    right = RESPONSES["text"].format(v=42)
    wrong = RESPONSES["text"].format(v=41)
    two_turns = rollout(right) + [{"role": "environment", "content": "Environment: correct"},
                                  {"role": "assistant", "content": wrong}]  # fmt: skip
    logs = [two_turns, rollout(None), rollout(right + "<|endoftext|>")]
    out = nemo_rl.EchoMathEnvironment().step(logs, [{"ground_truth": "42"}] * 3)
    assert out.rewards.tolist() == [0.0, 0.0, 1.0]
    assert out.answers[1] is None


def test_bad_input_is_named() -> None:
    env = nemo_rl.EchoMathEnvironment()
    with pytest.raises(UserError, match="ground_truth"):
        env.step([rollout("x")], [{"answer": "42"}])
    with pytest.raises(UserError, match="without an assistant message"):
        env.step([[user_turn(QUESTION)]], [{"ground_truth": "42"}])
    with pytest.raises(UserError, match="unknown keys"):
        nemo_rl.EchoMathEnvironment({"num_wokers": 2})


def test_global_post_process_and_metrics() -> None:
    batch = {  # the BatchedDataDict keys NeMo-RL's rollout fills
        "rewards": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "is_end": torch.tensor([1, 1, 0, 1]),
        "text": ["p1", "p1", "p2", "p2"],
        "generation_lengths": torch.tensor([30, 40, 50, 60]),
        "prompt_lengths": torch.tensor([10, 10, 20, 20]),
    }
    out, metrics = nemo_rl.EchoMathEnvironment().global_post_process_and_metrics(batch)
    assert out is batch
    assert metrics["accuracy"] == 0.25  # the third is rewarded but did not end properly
    assert metrics["pass@samples_per_prompt"] == 0.5
    assert metrics["fraction_of_samples_properly_ended"] == 0.75
    assert metrics["correct_solution_generation_lengths"] == 20.0
    assert metrics["num_problems_in_batch"] == 4


def test_config_fragment_names_the_environment() -> None:
    cfg = yaml.safe_load(nemo_rl.CONFIG_FRAGMENT.read_text())
    assert cfg["data"]["default"]["env_name"] == nemo_rl.ENV_NAME in cfg["env"]
    assert cfg["data"]["default"]["processor"] == "math_hf_data_processor"
    assert cfg["policy"]["tokenizer"]["chat_template"] is None
    nemo_rl.EchoMathEnvironment(cfg["env"][nemo_rl.ENV_NAME])  # its keys are accepted


def test_launcher_errors_exit_2(capsys) -> None:
    assert nemo_rl.main(["--grpo-script", "/nope/run_grpo.py", "--", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "/nope/run_grpo.py" in err and "Traceback" not in err
    try:
        import nemo_rl as _  # noqa: F401
    except ImportError:
        assert nemo_rl.main(["--", "--config", "x.yaml"]) == 2
        assert "NeMo-RL is not importable" in capsys.readouterr().err
    assert nemo_rl.main(["--prompt-file"]) == 0
    assert Path(capsys.readouterr().out.strip()).read_text() == "{}\n\n"


def test_module_imports_without_ray_or_nemo_rl() -> None:
    probe = ("import sys; from echo_nemo.integrations import nemo_rl; "
             "print('ray' in sys.modules, 'nemo_rl' in sys.modules, nemo_rl.main(['--config-fragment']))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    lines = r.stdout.split("\n")
    assert lines[1].split() == ["False", "False", "0"], r.stderr[-2000:]
    assert Path(lines[0]) == nemo_rl.CONFIG_FRAGMENT
