"""Helpers for the real-client tests (`pytest -m interop`): an echo-nemo model that answers,
exported with `echo-nemo export hf`, for the frameworks to train and score."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from shared_helpers import run_cli

PROBLEMS = 4  # echo-lab test problems the taught model answers


def _teach(run_dir: str, prompts: list[str], answers: list[str]) -> None:
    """A debug-scale model trained until it answers each prompt with `\\boxed{answer}` or
    `\\boxed{answer + 1}` about equally often: sampled completions then score 1 and 0 in the
    same group, so rewards vary and GRPO's advantages are not all zero."""
    from echo_nemo import distributed as D
    from echo_nemo.checkpoint import save_checkpoint
    from echo_nemo.model.build import ModelConfig, build_gpt
    from echo_nemo.model.forward import causal_forward
    from echo_nemo.tokenizer import load_tokenizer

    D.init_distributed(tp=1, seed=0)
    tok = load_tokenizer()
    cfg = ModelConfig(scale="debug", vocab_size=tok.vocab_size)
    model = build_gpt(cfg, tok.vocab_size)
    texts = [f"{p}\\boxed{{{a}}}" for p, a in zip(prompts, answers)]
    texts += [f"{p}\\boxed{{{int(a) + 1}}}" for p, a in zip(prompts, answers)]
    rows = [tok.encode(t) + [tok.eos_id] for t in texts]
    width = max(map(len, rows))
    batch = torch.tensor([r + [tok.eos_id] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = causal_forward(model, batch[:, :-1], batch[:, 1:], vocab_size=tok.vocab_size).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    tok.save(Path(run_dir) / "tokenizer")
    save_checkpoint(run_dir, 150, model, None, model_config=cfg, tokenizer=Path(run_dir) / "tokenizer")


@pytest.fixture(scope="session")
def echolab_problems() -> list:
    from echo_nemo.data.sources import load_problems

    return load_problems("echolab_test", limit=PROBLEMS)


@pytest.fixture(scope="session")
def taught_export(tmp_path_factory, echolab_problems) -> Path:
    """The taught model as a Hugging Face folder written by `echo-nemo export hf`."""
    from echo_nemo.distributed import run_distributed

    root = tmp_path_factory.mktemp("interop")
    run_distributed(_teach, 1, str(root / "run"), [p.prompt for p in echolab_problems],
                    [p.answer for p in echolab_problems])
    r = run_cli("export", "hf", str(root / "run"), str(root / "hf"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "hf"
