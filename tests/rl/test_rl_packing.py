"""The packed policy passes (a shared prompt computed once) against the padded forward."""

import pytest
import torch
from rl_helpers import CharTokenizer, debug_model

from echo_nemo import speed
from echo_nemo.cpu import use_kernels
from echo_nemo.distributed import init_distributed
from echo_nemo.model.generate import generate
from echo_nemo.rl.experience import build_experience, sequence_logprobs
from echo_nemo.rl.packing import pack, packed_logprobs, prefix_batches

PROMPTS = ["What is 2+3?\n\n", "hi", "A longer prompt, with words.\n\n", "x"]
GROUP = 3


@pytest.fixture(scope="module")
def setup():
    init_distributed(tp=1, seed=7)
    tok = CharTokenizer()
    model = debug_model(256, seed=3)
    with torch.no_grad():  # peaked, so completions end at different lengths
        for p in model.parameters():
            p.mul_(3.0)
    prompts = [p for p in PROMPTS for _ in range(GROUP)]
    out = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=5)
    exp = build_experience(out, [0.0] * len(prompts), tok.eos_id, torch.device("cpu"))
    return model, tok, exp


@pytest.fixture(params=["torch", "kernel"])
def attention(request):
    """Both attention paths: torch's SDPA and echo-nemo's CPU kernel (echo_nemo.cpu, which
    conftest installs as every command does, and which is restored after)."""
    if request.param == "torch":
        speed.install("cpu", lambda: speed.NONE)
    yield request.param
    use_kernels()


def test_experience_knows_its_shared_prompts(setup):
    _, tok, exp = setup
    assert exp.prompt_groups.tolist() == [g for g in range(len(PROMPTS)) for _ in range(GROUP)]
    assert exp.prompt_lens.tolist() == [len(tok.encode(p)) for p in PROMPTS for _ in range(GROUP)]
    lengths = {int(exp.mask[i].sum()) for i in range(len(exp))}
    assert len(lengths) > 1, "want completions of different lengths"


def test_pack_holds_each_prompt_once_per_micro_batch(setup):
    _, tok, exp = setup
    rows = torch.arange(0, 2 * GROUP)  # two whole groups
    packing, labels, targets, (r, c) = pack(exp, rows)
    prompt_tokens = sum(len(tok.encode(p)) for p in PROMPTS[:2])
    own = sum(int(exp.mask[i].sum()) - 1 for i in rows.tolist())  # each sample's last token left out
    assert packing.tokens.numel() == prompt_tokens + own
    assert labels.numel() == int(exp.mask[rows].sum())
    assert torch.equal(targets, exp.tokens[rows][r, c + 1])  # each label scores its next token
    assert torch.equal(packing.tokens[labels], exp.tokens[rows][r, c])  # ... from the token before it


@pytest.mark.parametrize("size", [GROUP, 2, 5, 64])  # whole groups, groups split across micro-batches, all
def test_packed_logprobs_equal_the_padded_forward(setup, attention, size):
    model, tok, exp = setup
    model.eval()
    full, full_ent = sequence_logprobs(model, exp.tokens, vocab_size=tok.vocab_size, with_entropy=True)
    seen = []
    for rows, w in prefix_batches(exp, size):
        seen += rows.tolist()
        lp, ent = packed_logprobs(model, exp, rows, w, vocab_size=tok.vocab_size, with_entropy=True)
        m = exp.mask[rows, : w - 1].bool()
        assert not exp.mask[rows, w - 1 :].any()  # the width holds every label
        torch.testing.assert_close(lp[m], full[rows, : w - 1][m], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent[m], full_ent[rows, : w - 1][m], atol=1e-5, rtol=1e-5)
        assert not lp[~m].any() and not ent[~m].any()
    assert seen == list(range(len(exp)))


def test_packed_gradients_equal_the_padded_forward(setup, attention):
    """The gradient of a weighted sum of log-probs: shared prompt tokens sum the gradients
    of every sample that reads them."""
    model, tok, exp = setup
    model.train()
    weights = torch.randn(exp.mask.shape, generator=torch.Generator().manual_seed(0)) * exp.mask

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    def padded():
        lp, _ = sequence_logprobs(model, exp.tokens, temperature=0.8, vocab_size=tok.vocab_size)
        return (lp * weights).sum()

    def packed():
        total = 0.0
        for rows, w in prefix_batches(exp, 4):
            lp, _ = packed_logprobs(model, exp, rows, w, temperature=0.8, vocab_size=tok.vocab_size)
            total = total + (lp * weights[rows, : w - 1]).sum()
        return total

    a, b = grads(padded), grads(packed)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)
