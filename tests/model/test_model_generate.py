"""Rollouts on the real megatron GPTModel: KV-cache equivalence, padding, stopping, TP=2."""

import json

import pytest
import torch
from reference_megatron import greedy_no_cache
from rl_helpers import CharTokenizer, debug_model

from echo_nemo.distributed import init_distributed, run_distributed
from echo_nemo.model.generate import filter_logits, generate
from echo_nemo.rl.experience import sequence_logprobs

# 256 embedding rows at TP=1 and TP=2 alike (the vocab is padded to 128 * TP), so both
# sizes draw the same initial weights; logits past the tokenizer's vocab are never sampled.
MODEL_VOCAB = 256
PROMPTS = ["What is 2+3?\n\n", "hi", "A longer prompt, with words.\n\n", "x"]


@pytest.fixture(scope="module")
def model_and_tok():
    init_distributed(tp=1, seed=7)
    tok = CharTokenizer()
    model = debug_model(MODEL_VOCAB, seed=3)
    with torch.no_grad():  # a peaked (non-uniform) model so greedy decoding is not a tie-fest
        for p in model.parameters():
            p.mul_(4.0)
    return model, tok


def test_greedy_with_cache_equals_no_cache_argmax_loop(model_and_tok):
    model, tok = model_and_tok
    out = generate(model, tok, PROMPTS, max_new_tokens=24, greedy=True)
    for i, p in enumerate(PROMPTS):
        ref = greedy_no_cache(model, tok.encode(p), 24, tok.eos_id, tok.vocab_size)
        assert out.completion_ids[i] == ref, f"prompt {i} diverged"
        assert out.prompt_ids[i] == tok.encode(p)
    # batching (left padding) changes nothing: one prompt at a time gives the same tokens
    alone = [generate(model, tok, [p], max_new_tokens=24, greedy=True).completion_ids[0] for p in PROMPTS]
    assert alone == out.completion_ids


def test_logprobs_match_a_training_forward(model_and_tok):
    model, tok = model_and_tok
    out = generate(model, tok, PROMPTS, max_new_tokens=12, temperature=0.7, seed=5)
    for p_ids, c_ids, lps in zip(out.prompt_ids, out.completion_ids, out.logprobs):
        tokens = torch.tensor([p_ids + c_ids])
        lp, _ = sequence_logprobs(model.eval(), tokens, temperature=0.7, vocab_size=tok.vocab_size)
        assert lps.shape == (len(c_ids),)
        torch.testing.assert_close(lps, lp[0, len(p_ids) - 1 :], atol=1e-4, rtol=1e-4)


def test_sampling_is_seeded_and_top_k_one_is_greedy(model_and_tok):
    model, tok = model_and_tok
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.9)
    a = generate(model, tok, PROMPTS, seed=11, **kw)
    b = generate(model, tok, PROMPTS, seed=11, **kw)
    c = generate(model, tok, PROMPTS, seed=12, **kw)
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids != c.completion_ids
    greedy = generate(model, tok, PROMPTS, max_new_tokens=16, greedy=True)
    topk1 = generate(model, tok, PROMPTS, max_new_tokens=16, top_k=1, seed=3)
    assert topk1.completion_ids == greedy.completion_ids
    # the decoded text is the completion without EOS
    assert a.completions == [tok.decode(c) for c in a.completion_ids]


def test_stops_at_eos_and_at_max_tokens(model_and_tok):
    model, tok = model_and_tok
    greedy = generate(model, tok, PROMPTS[:1], max_new_tokens=8, greedy=True)
    assert greedy.finished == [False] and len(greedy.completion_ids[0]) == 8
    # declare a token the model emits greedily to be EOS: generation must stop right
    # after its first occurrence, with EOS kept as the last completion token
    first = greedy.completion_ids[0]
    j = max(i for i, t in enumerate(first) if t not in first[:i])
    stop = CharTokenizer()
    stop.eos_id = first[j]
    out = generate(model, stop, PROMPTS[:1], max_new_tokens=8, greedy=True)
    assert out.completion_ids[0] == first[: j + 1]
    assert out.finished == [True]
    assert len(out.logprobs[0]) == j + 1
    assert out.completions[0] == stop.decode(first[:j])
    # in a batch, rows that stop early leave the KV cache; the others must be unaffected
    batch = generate(model, stop, PROMPTS * 2, max_new_tokens=20, greedy=True)
    refs = [greedy_no_cache(model, stop.encode(p), 20, stop.eos_id, stop.vocab_size) for p in PROMPTS * 2]
    assert batch.completion_ids == refs
    assert batch.finished == [r[-1] == stop.eos_id for r in refs]
    assert len({len(r) for r in refs}) > 1, "want rows of different lengths"


def test_min_new_tokens_masks_eos_until_then(model_and_tok):
    model, tok = model_and_tok
    first = generate(model, tok, PROMPTS[:1], max_new_tokens=8, greedy=True).completion_ids[0]
    stop = CharTokenizer()
    stop.eos_id = first[1]  # greedy decoding would stop at the 2nd token
    assert generate(model, stop, PROMPTS[:1], max_new_tokens=8, greedy=True).completion_ids[0] == first[:2]
    held = generate(model, stop, PROMPTS[:1], max_new_tokens=8, greedy=True, min_new_tokens=3)
    ids = held.completion_ids[0]
    assert len(ids) >= 3 and stop.eos_id not in ids[:3]
    assert ids[0] == first[0]  # the first step is unchanged; EOS was only masked
    # log-probs are of the distribution sampled from: EOS removed, the rest renormalised
    full = generate(model, stop, PROMPTS[:1], max_new_tokens=1, greedy=True)
    assert held.logprobs[0][0] > full.logprobs[0][0]
    exact = generate(model, stop, PROMPTS * 4, max_new_tokens=12, temperature=1.0, seed=1, min_new_tokens=12)
    assert all(len(c) == 12 and stop.eos_id not in c for c in exact.completion_ids)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, top_p=0.8)  # 0.5 + 0.3 reaches 0.8: two tokens kept
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p2 = filter_logits(logits, top_p=0.81)  # the third token crosses the threshold: kept
    assert torch.isfinite(p2[0, :3]).all() and torch.isinf(p2[0, 3])


def _tp_worker(out_path: str) -> None:
    init_distributed(tp=2, seed=7)
    tok = CharTokenizer()
    model = debug_model(MODEL_VOCAB, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    g = generate(model, tok, PROMPTS, max_new_tokens=16, greedy=True)
    s = generate(model, tok, PROMPTS, max_new_tokens=16, temperature=1.0, seed=21)
    rank = torch.distributed.get_rank()
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump({"greedy": g.completion_ids, "sampled": s.completion_ids,
                   "logprobs": [lp.tolist() for lp in s.logprobs]}, f)


def test_tp2_equals_tp1(model_and_tok, tmp_path):
    model, tok = model_and_tok
    run_distributed(_tp_worker, 2, str(tmp_path / "tp2"))
    ranks = [json.loads((tmp_path / f"tp2.{r}").read_text()) for r in range(2)]
    assert ranks[0]["sampled"] == ranks[1]["sampled"]  # every TP rank holds the same samples
    tp1_greedy = generate(model, tok, PROMPTS, max_new_tokens=16, greedy=True)
    tp1_sampled = generate(model, tok, PROMPTS, max_new_tokens=16, temperature=1.0, seed=21)
    assert ranks[0]["greedy"] == tp1_greedy.completion_ids
    assert ranks[0]["sampled"] == tp1_sampled.completion_ids
    for a, b in zip(ranks[0]["logprobs"], tp1_sampled.logprobs):
        assert a == pytest.approx(b.tolist(), abs=1e-4)


def test_sample_categorical_follows_the_distribution():
    from echo_nemo.model.generate import sample_categorical

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0]]).repeat(20_000, 1)
    g = torch.Generator().manual_seed(0)
    idx = sample_categorical(probs, g)
    first, second = idx[0::2], idx[1::2]
    freq = torch.bincount(first, minlength=4).double() / first.numel()
    # 20,000 draws: 4 standard errors of a share p are at most 4 * sqrt(.25 / 20000) = 0.014
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64), atol=0.014)
    assert int((first == 1).sum()) == 0 and bool((second == 3).all())  # probability 0 is never drawn
    again = sample_categorical(probs, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_length_batches_cut_padding_without_changing_logprobs(model_and_tok):
    from echo_nemo.rl.experience import build_experience, length_batches

    model, tok = model_and_tok
    out = generate(model, tok, PROMPTS * 3, max_new_tokens=16, temperature=1.0, seed=9)
    exp = build_experience(out, [0.0] * len(PROMPTS * 3), tok.eos_id, torch.device("cpu"))
    batches = length_batches(exp.mask, 5)
    rows = torch.cat([r for r, _ in batches])
    assert sorted(rows.tolist()) == list(range(len(exp)))  # every row exactly once
    lengths = [len(p) + len(c) for p, c in zip(out.prompt_ids, out.completion_ids)]
    for r, w in batches:
        assert w == max(lengths[i] for i in r.tolist())  # cut to the longest row, no shorter
    assert sum(w for _, w in batches) < len(batches) * exp.tokens.size(1), "want some padding removed"
    full, _ = sequence_logprobs(model.eval(), exp.tokens, vocab_size=tok.vocab_size)
    for r, w in batches:
        cut, _ = sequence_logprobs(model, exp.tokens[r, :w], vocab_size=tok.vocab_size)
        m = exp.mask[r, : w - 1].bool()
        torch.testing.assert_close(cut[m], full[r, : w - 1][m], atol=1e-5, rtol=1e-5)
        assert not exp.mask[r, w - 1 :].any()  # nothing cut off was a completion label


def test_repeated_prompts_are_prefilled_once_with_the_same_cache(model_and_tok, monkeypatch):
    """A GRPO group's prompt is computed once and its cache rows copied: the logits and the
    cache of every copy equal those of the prompt prefilled without copies."""
    from echo_nemo.model.decode import Decoder

    model, tok = model_and_tok
    model.eval()
    prompts = [tok.encode(p) for p in (PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[0])]
    plen, room = max(map(len, prompts)), 4
    dec = Decoder(model, len(prompts), plen + room)
    computed = []
    pack = Decoder._prefill_pack
    monkeypatch.setattr(Decoder, "_prefill_pack", lambda self, ps, rows, n: computed.extend(rows) or pack(self, ps, rows, n))
    logits = dec.prefill(prompts)
    monkeypatch.undo()
    assert sorted(computed) == [0, 1, 3]  # each distinct prompt once, in its first row
    longest = max(prompts, key=len)
    for i, p in enumerate(prompts):
        alone = Decoder(model, 2, plen + room)  # p beside the longest prompt: the same cache columns
        ref = alone.prefill([p, longest])[:1]
        torch.testing.assert_close(logits[i : i + 1], ref, atol=1e-5, rtol=1e-5)
        for cache, cache_ref in zip((*dec.k, *dec.v), (*alone.k, *alone.v)):
            torch.testing.assert_close(cache[i, :, :plen], cache_ref[0, :, :plen], atol=1e-5, rtol=1e-5)
        assert dec.valid[i, :plen].tolist() == [False] * (plen - len(p)) + [True] * len(p)
    # and decoding on from there: the copies of a prompt continue alike under greedy decoding
    out = generate(model, tok, [PROMPTS[0], PROMPTS[1], PROMPTS[0]], max_new_tokens=12, greedy=True)
    assert out.completion_ids[0] == out.completion_ids[2]
    assert out.completion_ids[0] == generate(model, tok, [PROMPTS[0]], max_new_tokens=12, greedy=True).completion_ids[0]
