"""The in-memory shard build as it was before streaming (main at 6bfa5be), kept as the
reference the streaming builder is checked against: every document of every source in
memory, repeats expanded, one global permutation (seed, 1), then one packing pass."""

from __future__ import annotations

import numpy as np

from echo_nemo.data.config import DataRecipe
from echo_nemo.data.mixtures import expand_repeats
from echo_nemo.data.shards import pack, pack_best_fit
from echo_nemo.data.sources import load_documents
from echo_nemo.tokenizer import load_tokenizer


def reference_build(recipe: DataRecipe) -> tuple[np.ndarray, list[int], list[int]]:
    """(rows, tokens per source, documents per source) of the in-memory build."""
    tok = load_tokenizer(recipe.tokenizer)
    per_source = [[np.asarray(ids + [tok.eos_id], dtype=np.uint16)
                   for ids in tok.encode_batch(list(load_documents(spec, recipe.echolab)))]
                  for spec in recipe.sources]
    picks = expand_repeats([len(d) for d in per_source], [s.repeat for s in recipe.sources], recipe.seed)
    order = np.random.default_rng([recipe.seed, 1]).permutation(len(picks))
    shuffled = [per_source[picks[i][0]][picks[i][1]] for i in order]
    width = recipe.seq_length + 1
    if recipe.packing == "best_fit":
        rows, _ = pack_best_fit(shuffled, width, tok.eos_id, recipe.seed)
    else:
        rows, _ = pack(shuffled, width)
    tokens, docs = [0] * len(per_source), [0] * len(per_source)
    for src, idx in picks:
        tokens[src] += len(per_source[src][idx])
        docs[src] += 1
    return rows.astype(np.uint16), tokens, docs
