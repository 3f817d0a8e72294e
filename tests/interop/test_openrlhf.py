"""OpenRLHF's own SingleTurnAgentExecutor scores echo-nemo generations through echo-nemo's reward.

The executor (openrlhf/utils/agent.py, openrlhf 0.11.2) tokenizes each prompt, awaits the
generation engine, decodes prompt + response with special tokens kept, and fetches the
reward from ``--reward.remote_url``: over HTTP from a real ``echo-nemo reward serve``
(``/get_reward``), or by loading ``echo_nemo/reward/adapters.py`` by path and calling its
``reward_func`` in a thread. The engine is echo-nemo's HFGenerationEngine over an
``echo-nemo export hf`` folder of a debug model trained to answer two prompts (one right
answer in the text format, one TinyGSM function), so the rewards are not all zero; each
prompt goes out with a right and a wrong label. The executor's reward fields must equal
``score()`` on the engine's decoded response.

Runs where openrlhf is importable: ``bash tests/interop/run_interop.sh openrlhf``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.interop
agent = pytest.importorskip(
    "openrlhf.utils.agent", reason="openrlhf not installed: bash tests/interop/run_interop.sh openrlhf"
)

from echo_nemo.distributed import run_distributed  # noqa: E402
from echo_nemo.integrations.openrlhf import HFGenerationEngine, SamplingParams  # noqa: E402
from echo_nemo.reward import adapters  # noqa: E402
from echo_nemo.reward.client import local_reward_server  # noqa: E402
from echo_nemo.reward.score import score  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# prompt -> (the response the model is trained to give, right label, wrong label)
TAUGHT = {
    "Tom has 3 boxes of 14 apples. How many apples does he have?\n\n":
        ("He has 3 * 14 = 42 apples, so the answer is \\boxed{42}.", "#### 42", 41),
    "Sam has 5 bags of 6 pears. How many pears does he have?\n\n":
        ("def simple_math_problem() -> int:\n    bags = 5\n    return bags * 6\n", 30, "31"),
}  # fmt: skip


def _train_and_save(run_dir: str) -> None:
    """A debug model trained until it answers each TAUGHT prompt with its response."""
    from echo_nemo import distributed as D
    from echo_nemo.checkpoint import save_checkpoint
    from echo_nemo.model.build import ModelConfig, build_gpt
    from echo_nemo.model.forward import causal_forward
    from echo_nemo.tokenizer import load_tokenizer

    D.init_distributed(tp=1, seed=5)
    tok = load_tokenizer()
    cfg = ModelConfig(scale="debug", vocab_size=tok.vocab_size, init_std=0.05)
    model = build_gpt(cfg, tok.vocab_size)
    seqs = [tok.encode(p + r) + [tok.eos_id] for p, (r, _, _) in TAUGHT.items()]
    width = max(map(len, seqs))
    batch = torch.tensor([s + [tok.eos_id] * (width - len(s)) for s in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = causal_forward(model, batch[:, :-1], batch[:, 1:], vocab_size=tok.vocab_size).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if loss.item() < 0.01:
            break
    tok.save(Path(run_dir) / "tokenizer")
    save_checkpoint(run_dir, 1, model, opt, model_config=cfg, tokenizer=Path(run_dir) / "tokenizer")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("openrlhf")
    run_distributed(_train_and_save, 1, str(root / "run"))
    r = subprocess.run([sys.executable, "-m", "echo_nemo.cli", "export", "hf", str(root / "run"), str(root / "hf")],
                       capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "hf"


@pytest.fixture(scope="module")
def engine(hf_dir) -> HFGenerationEngine:
    return HFGenerationEngine(hf_dir)


def _execute_all(executor, engine) -> list[dict]:
    """Every (prompt, label) through `executor.execute`, all at once, as OpenRLHF's rollout does."""
    params = SamplingParams(temperature=0.0, max_tokens=None, logprobs=None)
    cases = [(p, label) for p, (_, right, wrong) in TAUGHT.items() for label in (right, wrong)]

    async def run():
        return await asyncio.gather(*(
            executor.execute(p, label, params, max_length=160, hf_tokenizer=engine.tokenizer, llm_engine=engine)
            for p, label in cases
        ))  # fmt: skip

    return asyncio.run(run())


def _check_against_score(outputs: list[dict], engine) -> list[float]:
    rewards = []
    for out in outputs:
        (start, end) = out["action_ranges"][0]
        response = engine.tokenizer.decode(out["observation_tokens"][start:end], skip_special_tokens=True)
        want = score([response], [out["label"]])[0]
        got = [float(x) for x in out["reward"]]
        assert got == [want.reward], (response, out["label"], out["reward"])
        assert [float(x) for x in out["scores"]] == [want.reward]
        assert [float(x) for x in out["extra_logs"][f"format_{want.format}"]] == [1.0]
        assert [float(x) for x in out["extra_logs"]["response_prefix"]] == [1.0]
        rewards.append(want.reward)
    return rewards


def test_engine_gives_the_taught_answers(engine) -> None:
    for prompt, (response, _, _) in TAUGHT.items():
        ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out = asyncio.run(engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=80, logprobs=1)))
        assert out.outputs[0].text == response and out.outputs[0].finish_reason == "stop"
        assert len(out.outputs[0].logprobs) == len(out.outputs[0].token_ids)


def test_executor_http_get_reward(engine, hf_dir) -> None:
    with local_reward_server(workers=2, extra_args=("--tokenizer", str(hf_dir))) as url:
        executor = agent.SingleTurnAgentExecutor(remote_rm_url=[url + "/get_reward"])
        outputs = _execute_all(executor, engine)
    assert _check_against_score(outputs, engine) == [1.0, 0.0, 1.0, 0.0]


def test_executor_reward_file(engine, hf_dir, monkeypatch) -> None:
    monkeypatch.setenv(adapters.TOKENIZER_ENV, str(hf_dir))
    monkeypatch.delenv(adapters.URL_ENV, raising=False)
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=adapters.__file__)
    assert executor.reward_func is not None  # loaded by path, as --reward.remote_url file.py does
    outputs = _execute_all(executor, engine)
    assert all(isinstance(o["reward"], torch.Tensor) for o in outputs)
    assert _check_against_score(outputs, engine) == [1.0, 0.0, 1.0, 0.0]


def openrlhf_parser():
    """train_ppo_ray's own argparse parser: its `__main__` block up to parse_args, run as is."""
    import argparse
    import importlib.util
    import textwrap

    # found, not imported: the module imports vLLM and Ray's GPU launchers at the top
    path = importlib.util.find_spec("openrlhf.cli.train_ppo_ray").origin
    source = Path(path).read_text()
    start = source.index("    parser = argparse.ArgumentParser()")
    block = textwrap.dedent(source[start : source.index("    args = parser.parse_args()", start)])
    scope = {"argparse": argparse, "os": os, "datetime": datetime}  # the module's stdlib imports
    exec(compile(block, path, "exec"), scope)
    return scope["parser"]


def doc_commands(section: str) -> list[list[str]]:
    """The `python -m openrlhf.cli.train_ppo_ray` commands of a docs/interop.md section."""
    text = (REPO / "docs" / "interop.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in body.split("```bash\n")[1:]:
        for command in block.split("```", 1)[0].replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:3] == ["python", "-m", "openrlhf.cli.train_ppo_ray"]:
                commands.append(words[3:])
    return commands


def test_docs_commands_parse_with_this_openrlhf() -> None:
    """docs/interop.md's commands for openrlhf >= 0.10.2 parse with train_ppo_ray's parser and
    set the reward URL and label key; the flat flags of <= 0.10.1 are refused."""
    from openrlhf.utils.config import hierarchize

    parser = openrlhf_parser()
    commands = doc_commands("OpenRLHF")
    current = [c for c in commands if "--reward.remote_url" in c]
    assert len(current) == 2, commands
    for argv in current:
        args = hierarchize(parser.parse_args(argv))
        assert args.data.label_key == "answer" and args.data.input_key == "question"
        assert args.reward.remote_url.endswith(("/get_reward", "adapters)")), args.reward.remote_url
    flat = [c for c in commands if "--remote_rm_url" in c]
    assert flat, "the docs also give the flat flags of openrlhf <= 0.10.1"
    for argv in flat:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
