"""A checkpoint of an optimizer that has not stepped yet (PPO's policy while its critic
warms up) resumes, and continues as the optimizer it saved would have."""

from __future__ import annotations

import torch

from echo_nemo import distributed as D
from echo_nemo.checkpoint import load_checkpoint, save_checkpoint
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.optim import OptimConfig


def _model_and_opt(cfg: ModelConfig, vocab: int):
    torch.manual_seed(0)
    model = build_gpt(cfg, vocab)
    opt, _ = OptimConfig(lr=1e-2).build(model, total_steps=10)
    return model, opt


def _step(model, opt, ids: torch.Tensor) -> None:
    from echo_nemo.model.forward import causal_forward

    opt.zero_grad()
    causal_forward(model, ids).float().logsumexp(-1).mean().backward()
    opt.step()


def test_an_optimizer_that_never_stepped_saves_and_resumes(tmp_path):
    if not torch.distributed.is_initialized():
        D.init_distributed(tp=1, seed=0)
    vocab = 256
    cfg = ModelConfig(scale="debug", vocab_size=vocab)
    model, opt = _model_and_opt(cfg, vocab)
    assert not opt.state  # no moments yet
    save_checkpoint(tmp_path / "run", 4, model, opt, model_config=cfg)
    assert not opt.state  # saving left the live optimizer as it was

    resumed, resumed_opt = _model_and_opt(cfg, vocab)
    with torch.no_grad():  # other weights, so the load must bring the saved ones back
        for p in resumed.parameters():
            p.add_(1.0)
    assert load_checkpoint(tmp_path / "run", resumed, resumed_opt).step == 4
    moments = [st[k] for st in resumed_opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(not m.any() for m in moments)
    # one step of each from there: the same parameters as the optimizer that was saved
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    _step(model, opt, ids)
    _step(resumed, resumed_opt, ids)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
