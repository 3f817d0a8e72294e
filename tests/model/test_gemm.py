"""echo_nemo.model.gemm: the decoder's per-shape choice of product form never changes a bit of
the result, and the sampler's tokens and log-probs are those of plain F.linear."""

import pytest
import torch
import torch.nn.functional as F
from rl_helpers import CharTokenizer, debug_model

from echo_nemo.distributed import init_distributed
from echo_nemo.model import gemm
from echo_nemo.model.generate import generate


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.setattr(gemm, "_chosen", {})
    return gemm._chosen


@pytest.mark.parametrize("rows", [1, 3, 8, 11, 12, 16, 29, 64])
@pytest.mark.parametrize("k,n", [(128, 384), (768, 2304), (3072, 768)])
def test_linear_is_bitwise_f_linear_for_every_row_count(fresh_choices, rows, k, n):
    g = torch.Generator().manual_seed(rows * n)
    w = torch.randn(n, k, generator=g)
    x = torch.randn(rows, 1, k, generator=g)  # a decode step's [rows, 1, d]
    first = gemm.linear(x, w)  # decides the form for this shape
    again = gemm.linear(x * 0.5, w)  # runs the chosen form on other values
    assert first.shape == (rows, 1, n)
    assert torch.equal(first, F.linear(x, w)) and torch.equal(again, F.linear(x * 0.5, w))
    assert set(fresh_choices) == {(rows, n, k, (k, 1), True)}


def test_a_faster_form_that_differs_in_one_bit_is_never_chosen(fresh_choices, monkeypatch):
    def off_by_one_ulp(x, w):  # instant, and wrong in the last bit of one entry
        out = torch.zeros(x.size(0), w.size(0))
        out[0, 0] = torch.nextafter(F.linear(x[:1], w[:1])[0, 0], torch.tensor(1e9))
        return out

    monkeypatch.setitem(gemm.FORMS, "fast_but_wrong", off_by_one_ulp)
    w, x = torch.randn(2304, 768), torch.randn(16, 768)
    assert gemm.choose(x, w) != "fast_but_wrong"
    # the same check accepts a form that is exact: F.linear under another name always qualifies
    monkeypatch.setitem(gemm.FORMS, "fast_but_wrong", lambda x, w: F.linear(x, w))
    assert gemm.choose(x, w) in gemm.FORMS


def test_large_batches_and_other_dtypes_stay_on_f_linear(fresh_choices):
    w = torch.randn(256, 128)
    prefill = torch.randn(1, gemm.MAX_ROWS + 1, 128)
    assert torch.equal(gemm.linear(prefill, w), F.linear(prefill, w))
    half = torch.randn(16, 128, dtype=torch.bfloat16)
    assert torch.equal(gemm.linear(half, w.bfloat16()), F.linear(half, w.bfloat16()))
    assert fresh_choices == {}  # neither was timed or cached


def test_sampled_tokens_and_logprobs_equal_those_of_plain_f_linear(monkeypatch):
    init_distributed(tp=1, seed=7)
    tok = CharTokenizer()
    model = debug_model(256, seed=5, scale="tiny").eval()
    prompts = ["What is 2+3?\n\n", "hi", "A longer prompt, with words.\n\n", "7*8="] * 5  # 20 rows
    monkeypatch.setattr(gemm, "_chosen", {})
    chosen = generate(model, tok, prompts, max_new_tokens=24, temperature=1.0, seed=3)
    assert gemm._chosen  # the decoder went through the chooser
    monkeypatch.setattr(gemm, "FORMS", {"linear": F.linear})
    monkeypatch.setattr(gemm, "_chosen", {})
    plain = generate(model, tok, prompts, max_new_tokens=24, temperature=1.0, seed=3)
    assert chosen.completion_ids == plain.completion_ids
    assert all(torch.equal(a, b) for a, b in zip(chosen.logprobs, plain.logprobs))
