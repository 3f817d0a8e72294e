"""The package's training forward and KV-cache decoder against megatron's own paths
(reference_megatron.py), at the tiny shape and a reduced 150m shape (150m's width and
heads, 2 layers): same logits, losses and gradients; same greedy and sampled tokens;
log-probs within 1e-5 of a full forward; TP=2 equal to TP=1; mixed prompt lengths; EOS
stops each row."""

import json

import pytest
import torch
from reference_megatron import greedy_no_cache, megatron_decoding, megatron_forward
from rl_helpers import CharTokenizer, debug_model

from echo_nemo.cpu import attention, kernels
from echo_nemo.distributed import init_distributed, run_distributed
from echo_nemo.model import forward
from echo_nemo.model.forward import causal_forward
from echo_nemo.model.generate import generate
from echo_nemo.model.scales import SCALES, Scale

MODEL_VOCAB = 256  # the same embedding rows at TP=1 and TP=2 (see test_model_generate)
REDUCED_150M = Scale("150m_2l", d_model=768, layers=2, heads=12, seq_length=2048)
SHAPES = ["tiny", REDUCED_150M.name]
# mixed lengths (1 to 30 tokens): rows are left-padded in the cache, packed in prefill
PROMPTS = ["What is 2+3?\n\n", "hi", "A longer prompt, with words.\n\n", "x", "7*8=", "The end"]


def _model(scale: str, seed: int = 3):
    SCALES.setdefault(REDUCED_150M.name, REDUCED_150M)
    model = debug_model(MODEL_VOCAB, seed=seed, scale=scale)
    with torch.no_grad():  # peaked logits: greedy decoding has a clear winner at each step
        for p in model.parameters():
            p.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    init_distributed(tp=1, seed=7)
    out = {s: _model(s) for s in SHAPES}
    yield out
    SCALES.pop(REDUCED_150M.name, None)


@pytest.mark.parametrize("scale", SHAPES)
def test_forward_equals_megatron_forward(models, scale, monkeypatch):
    """Where echo-nemo's CPU kernels run, the forward's attention is the C kernel's."""
    model = models[scale]
    assert forward.supports(model)
    kernel_calls = []
    real_apply = attention._KernelAttention.apply
    monkeypatch.setattr(attention._KernelAttention, "apply", lambda *a: (kernel_calls.append(1), real_apply(*a))[1])
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 200, (3, 37), generator=g)
    labels = torch.randint(0, 200, (3, 37), generator=g)
    grads = {}
    for name, run in (("ours", causal_forward), ("megatron", megatron_forward)):
        model.zero_grad(set_to_none=True)
        loss = run(model, tokens, labels, vocab_size=200)
        loss.mean().backward()
        grads[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        with torch.no_grad():
            grads[name] += (run(model, tokens),)
    (loss_a, ga, logits_a), (loss_b, gb, logits_b) = grads["ours"], grads["megatron"]
    n_layers = len(getattr(model, "module", model).decoder.layers)
    assert len(kernel_calls) == (2 * n_layers if kernels.load() is not None else 0)  # 2 of our forwards
    assert loss_a.shape == (3, 37)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-6)
    assert set(ga) == set(gb)
    for name in ga:  # every parameter gets the same gradient (float rounding apart)
        scale_ = gb[name].abs().max().clamp_min(1e-12)
        assert float((ga[name] - gb[name]).abs().max() / scale_) < 1e-4, name
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("scale", SHAPES)
def test_decoder_matches_megatron_sampler_and_no_cache_greedy(models, scale, monkeypatch):
    model, tok = models[scale], CharTokenizer()
    greedy = generate(model, tok, PROMPTS, max_new_tokens=12, greedy=True)
    for p, got in zip(PROMPTS, greedy.completion_ids):
        assert got == greedy_no_cache(model, tok.encode(p), 12, tok.eos_id, tok.vocab_size)
    # same seed, same tokens as megatron's static-batching sampler: our decoder draws the
    # same uniform per cache row and step
    for kw in (dict(temperature=1.0, seed=5), dict(temperature=0.7, top_p=0.9, seed=6)):
        ours = generate(model, tok, PROMPTS * 2, max_new_tokens=12, **kw)
        with megatron_decoding(monkeypatch):
            ref = generate(model, tok, PROMPTS * 2, max_new_tokens=12, **kw)
        assert ours.completion_ids == ref.completion_ids
        for a, b in zip(ours.logprobs, ref.logprobs):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", SHAPES)
def test_logprobs_within_1e5_of_a_full_forward(models, scale):
    model, tok = models[scale], CharTokenizer()
    out = generate(model, tok, PROMPTS, max_new_tokens=12, temperature=0.8, seed=2)
    for run in (causal_forward, megatron_forward):  # against both full forwards
        for p_ids, c_ids, lps in zip(out.prompt_ids, out.completion_ids, out.logprobs):
            tokens = torch.tensor([p_ids + c_ids])
            with torch.no_grad():
                logits = run(model, tokens)[0, len(p_ids) - 1 : -1, : tok.vocab_size]
            ref = torch.log_softmax(logits.float() / 0.8, -1).gather(-1, tokens[0, len(p_ids) :, None])[:, 0]
            # 1e-5, plus 1e-5 relative: these peaked models put log-probs at -2 to -20, where
            # one float32 ulp of a logit of ~50 is already 4e-6
            torch.testing.assert_close(lps, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", SHAPES)
def test_decoder_stops_each_row_at_eos(models, scale):
    model = models[scale]
    free = generate(model, CharTokenizer(), PROMPTS, max_new_tokens=16, greedy=True)
    # make a token that some rows emit (and others do not) the EOS
    counts = torch.bincount(torch.tensor([t for c in free.completion_ids for t in set(c)]))
    stop = CharTokenizer()
    stop.eos_id = int(torch.argmax(((counts > 0) & (counts < len(PROMPTS))) * counts))
    out = generate(model, stop, PROMPTS, max_new_tokens=16, greedy=True)
    refs = [greedy_no_cache(model, stop.encode(p), 16, stop.eos_id, stop.vocab_size) for p in PROMPTS]
    assert out.completion_ids == refs
    assert out.finished == [r[-1] == stop.eos_id for r in refs]
    assert any(out.finished) and not all(out.finished), "want rows that stop and rows that run on"
    assert [len(lp) for lp in out.logprobs] == [len(r) for r in refs]


def test_the_150m_width_decodes_on_the_kernel_and_tiny_on_blas(models, monkeypatch):
    """Where the C kernel is available, the reduced 150m shape's decode products run on it
    (so the equivalence tests above hold for it), tiny's stay on bitwise-F.linear BLAS."""
    lib = kernels.load()
    if lib is None:
        pytest.skip("no CPU kernels on this machine (no C compiler or no AVX2)")
    calls = []

    class Counting:  # the library, with its decode product counted
        def __getattr__(self, name):
            return getattr(lib, name)

        def echo_decode_gemm(self, *a):
            calls.append(a[3:6])
            return lib.echo_decode_gemm(*a)

    monkeypatch.setattr(kernels, "load", lambda: Counting())
    for scale, want in ((REDUCED_150M.name, True), ("tiny", False)):
        calls.clear()
        generate(models[scale], CharTokenizer(), PROMPTS, max_new_tokens=4, greedy=True)
        assert bool(calls) == want, scale
    calls.clear()
    generate(models[REDUCED_150M.name], CharTokenizer(), PROMPTS, max_new_tokens=4, greedy=True)
    # qkv, proj, fc1 and fc2 of both layers (the logits' 256 x 768 is BLAS's): in the prefill
    # (one pack of the prompts' 58 tokens) and at each of the 3 decode steps (6 rows)
    assert sorted({(k, n) for _, k, n in calls}) == [(768, 768), (768, 2304), (768, 6144), (3072, 768)]
    rows = [m for m, _, _ in calls]
    assert rows == [sum(map(len, PROMPTS))] * 8 + [len(PROMPTS)] * 3 * 8


def _tp_worker(out_path: str) -> None:
    init_distributed(tp=2, seed=7)
    tok = CharTokenizer()
    res = {}
    for scale in SHAPES:
        model = _model(scale)
        g = generate(model, tok, PROMPTS, max_new_tokens=10, greedy=True)
        s = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=1.0, seed=21)
        tokens = torch.tensor([tok.encode(PROMPTS[2])])
        loss = causal_forward(model, tokens[:, :-1], tokens[:, 1:], vocab_size=tok.vocab_size)
        res[scale] = {"greedy": g.completion_ids, "sampled": s.completion_ids,
                      "logprobs": [lp.tolist() for lp in s.logprobs], "loss": loss.tolist()}
    with open(f"{out_path}.{torch.distributed.get_rank()}", "w") as f:
        json.dump(res, f)


def test_forward_and_decoder_tp2_equal_tp1(models, tmp_path):
    run_distributed(_tp_worker, 2, str(tmp_path / "tp2"))
    ranks = [json.loads((tmp_path / f"tp2.{r}").read_text()) for r in range(2)]
    tok = CharTokenizer()
    for scale in SHAPES:
        model, tp2 = models[scale], ranks[0][scale]
        assert ranks[1][scale]["sampled"] == tp2["sampled"]  # every TP rank holds the same samples
        assert tp2["greedy"] == generate(model, tok, PROMPTS, max_new_tokens=10, greedy=True).completion_ids
        tp1 = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=1.0, seed=21)
        assert tp2["sampled"] == tp1.completion_ids
        for a, b in zip(tp2["logprobs"], tp1.logprobs):
            assert a == pytest.approx(b.tolist(), abs=1e-5, rel=1e-5)
        tokens = torch.tensor([tok.encode(PROMPTS[2])])
        with torch.no_grad():
            loss = causal_forward(model, tokens[:, :-1], tokens[:, 1:], vocab_size=tok.vocab_size)
        assert tp2["loss"][0] == pytest.approx(loss[0].tolist(), abs=1e-5)


def test_swiglu_backward_writes_one_buffer_with_autograd_bits():
    """The fused FC1 gradient written in place equals autograd's chunk / silu / mul /
    concatenation bit for bit (strided halves, a 3-d batch)."""
    y = torch.randn(3, 5, 2 * 24, generator=torch.Generator().manual_seed(0), requires_grad=True)
    grad = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(1))
    g, u = y.chunk(2, dim=-1)
    ref_out = torch.nn.functional.silu(g) * u
    (ref,) = torch.autograd.grad(ref_out, y, grad)
    out = forward.swiglu(y, torch.nn.functional.silu)
    (got,) = torch.autograd.grad(out, y, grad)
    assert out.grad_fn is not None and "SiluGLU" in type(out.grad_fn).__name__
    assert torch.equal(out, ref_out) and torch.equal(got, ref)
