"""The package's one decoder: an inference forward over megatron's own GPT weights, with a
preallocated KV cache.

Why not megatron's static-batch inference: it runs every decode step through the full
training module stack ([s, b, h] transposes, the layer spec's dispatch, the inference
context's bookkeeping and per-layer RNG-tracker forks) and computes the logits of every
prompt position; on CPU that overhead, not the matmuls, is most of a decode step at the
tiny shape. `Decoder` runs the same arithmetic as the training forward
(echo_nemo.model.forward) on the same parameter tensors (no copies, so it always sees the
current weights) with plain torch ops:

    x = E[token];  per layer:  x += W_o attn(rope(q), rope(k), v),  q, k, v = W_qkv LN(x)
                               x += W_2 (silu(g) * u),              g, u = W_1 LN(x)
    logits = W_out LN(x)

Layout: row i's prompt ends at column `plen - 1` of the cache (the left-padding layout
of megatron's static batching, so token t of every row is written at the same column
and RoPE sees the same positions as before); pad columns are masked and never computed.
Prefill packs the distinct prompts end to end, without padding, into chunks of about
`PACK_TOKENS` tokens with a block-diagonal causal mask, and computes logits only at each
prompt's last token; a repeated prompt (a GRPO group's) is computed once and its cache
rows copied. The products x W^T go through the `linear` a speed layer installed
for the weights' device (echo_nemo.speed; on CPU echo_nemo.cpu.gemm), else F.linear.

Tensor parallelism is megatron's own: the rank's heads and MLP columns, an all-reduce
after the row-parallel projections and the vocab-parallel embedding, an all-gather of
the vocab-parallel logits (echo_nemo.parallel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from echo_nemo import speed
from echo_nemo.distributed import tp_size
from echo_nemo.model.forward import check_supported, rope_tables
from echo_nemo.model.forward import rope as _rotate
from echo_nemo.parallel import all_reduce_tp, gather_logits

PACK_TOKENS = 256  # prefill chunk: long enough for efficient matmuls, short enough that
# the block-diagonal attention wastes little on pairs of different prompts


class Decoder:
    """Incremental forward of a megatron GPTModel (built by echo_nemo.model.build)."""

    def __init__(self, model, batch: int, max_len: int) -> None:
        check_supported(model)
        gpt = getattr(model, "module", model)
        cfg = gpt.config
        self.tp = tp_size()
        self.eps = cfg.layernorm_epsilon
        self.d = cfg.hidden_size
        self.hn = cfg.kv_channels
        self.groups = (cfg.num_query_groups or cfg.num_attention_heads) // self.tp
        self.per = cfg.num_attention_heads // (cfg.num_query_groups or cfg.num_attention_heads)
        self.heads = self.groups * self.per
        self.emb = gpt.embedding.word_embeddings
        self.out_w = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights \
            else gpt.output_layer.weight
        self.layers = [
            (layer.self_attention.linear_qkv.weight, layer.self_attention.linear_proj.weight,
             layer.mlp.linear_fc1.weight, layer.mlp.linear_fc2.weight)
            for layer in gpt.decoder.layers
        ]
        w = self.emb.weight
        self.linear = speed.ops(w.device.type).linear or F.linear
        self.cos, self.sin = rope_tables(gpt.rotary_pos_emb(max_len)[:, 0, 0], w.dtype)  # megatron's angles
        shape = (batch, self.groups, max_len, self.hn)
        self.k = [w.new_zeros(shape) for _ in self.layers]
        self.v = [w.new_zeros(shape) for _ in self.layers]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=w.device)
        self.length = self.plen = 0  # cache columns written so far; prompt columns

    # ------------------------------------------------------------------ pieces
    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        # `linear` may return a transposed view; the all-reduce works in place
        return all_reduce_tp(x.contiguous()) if self.tp > 1 else x

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return F.embedding(ids, self.emb.weight)
        lo, hi = self.emb.vocab_start_index, self.emb.vocab_end_index
        outside = (ids < lo) | (ids >= hi)
        x = F.embedding((ids - lo).masked_fill(outside, 0), self.emb.weight)
        return self._all_reduce(x.masked_fill(outside[..., None], 0.0))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return gather_logits(self.linear(F.layer_norm(x, (self.d,), eps=self.eps), self.out_w).contiguous())

    def _qkv(self, h: torch.Tensor, w: torch.Tensor, cos, sin):
        """[n, s, d] -> rotated q [n, heads, s, hn], rotated k and v [n, groups, s, hn]."""
        n, s, _ = h.shape
        qkv = self.linear(h, w).contiguous().view(n, s, self.groups, self.per + 2, self.hn).transpose(1, 2)
        q = qkv[:, :, :, : self.per].transpose(2, 3).reshape(n, self.heads, s, self.hn)
        return _rotate(q, cos, sin), _rotate(qkv[:, :, :, self.per], cos, sin), qkv[:, :, :, self.per + 1]

    def _block(self, x, i, attend) -> torch.Tensor:
        """One transformer layer; `attend(i, h)` returns the attention output [n, s, heads*hn]."""
        _, w_o, w_1, w_2 = self.layers[i]
        x = x + self._all_reduce(self.linear(attend(i, F.layer_norm(x, (self.d,), eps=self.eps)), w_o))
        g, u = self.linear(F.layer_norm(x, (self.d,), eps=self.eps), w_1).chunk(2, dim=-1)
        return x + self._all_reduce(self.linear(F.silu(g) * u, w_2))

    def _sdpa(self, q, k, v, mask) -> torch.Tensor:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.per > 1)
        return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.heads * self.hn)

    # ------------------------------------------------------------------ the two phases
    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Cache every prompt's keys and values (prompt i ends at column plen - 1); returns
        the logits after each prompt's last token, [batch, vocab].

        A prompt that occurs several times (a GRPO group's samples) is computed once, in
        the row of its first occurrence, and its cache rows are copied to the others."""
        dev = self.valid.device
        plen = max(map(len, prompts))
        first: dict[tuple[int, ...], int] = {}
        source = [first.setdefault(tuple(p), i) for i, p in enumerate(prompts)]
        unique = sorted(first.values())
        out = []
        packs, cur = [], []
        for i in unique:
            if cur and sum(len(prompts[j]) for j in cur) + len(prompts[i]) > PACK_TOKENS:
                packs.append(cur)
                cur = []
            cur.append(i)
        packs.append(cur)
        for pack in packs:
            out.append(self._prefill_pack(prompts, pack, plen))
        self.length = self.plen = plen
        copies = [i for i, s in enumerate(source) if s != i]
        if copies:
            to, frm = torch.tensor(copies, device=dev), torch.tensor([source[i] for i in copies], device=dev)
            for cache in (*self.k, *self.v):
                cache[to, :, :plen] = cache[frm, :, :plen]
            self.valid[to] = self.valid[frm]
        self._set_bias()
        logits = torch.cat(out)
        row = {i: n for n, i in enumerate(unique)}
        return logits.index_select(0, torch.tensor([row[s] for s in source], device=logits.device))

    def _prefill_pack(self, prompts: list[list[int]], pack: list[int], plen: int) -> torch.Tensor:
        """Prefill the prompts `pack` (cache rows) packed end to end; their last logits."""
        dev = self.valid.device
        rows = torch.cat([torch.full((len(prompts[i]),), i) for i in pack]).to(dev)
        cols = torch.cat([torch.arange(plen - len(prompts[i]), plen) for i in pack]).to(dev)
        ids = torch.tensor([t for i in pack for t in prompts[i]], device=dev)
        # block-diagonal causal: a token sees the earlier tokens of its own prompt
        mask = (rows[:, None] == rows[None, :]) & (cols[:, None] >= cols[None, :])
        cos, sin = self.cos[cols], self.sin[cols]

        def attend(i, h):
            q, k, v = self._qkv(h, self.layers[i][0], cos, sin)
            self.k[i][rows, :, cols] = k[0].transpose(0, 1)
            self.v[i][rows, :, cols] = v[0].transpose(0, 1)
            return self._sdpa(q, k, v, mask)

        x = self._embed(ids[None])
        for i in range(len(self.layers)):
            x = self._block(x, i, attend)
        ends = torch.tensor([sum(len(prompts[j]) for j in pack[: n + 1]) - 1 for n in range(len(pack))])
        self.valid[rows, cols] = True
        return self._logits(x[0, ends.to(dev)])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row at the next column; returns the next logits [rows, vocab]."""
        col = self.length
        n = self.length = col + 1
        cos, sin = self.cos[col : col + 1], self.sin[col : col + 1]

        b, tmax = tokens.size(0), self.k[0].size(2)
        bias = self.bias[:, :, :n]

        def attend(i, h):
            # one query per row: two batched matmuls over the cache prefix (strided views,
            # no copy) beat SDPA's kernel setup and its bool-to-float mask conversion per call
            q, k, v = self._qkv(h, self.layers[i][0], cos, sin)
            self.k[i][:, :, col : col + 1] = k
            self.v[i][:, :, col : col + 1] = v
            keys = self.k[i].view(b * self.groups, tmax, self.hn)[:, :n]
            values = self.v[i].view(b * self.groups, tmax, self.hn)[:, :n]
            scores = torch.baddbmm(bias, q.view(b * self.groups, self.per, self.hn), keys.transpose(1, 2),
                                   alpha=self.hn**-0.5)
            return torch.bmm(torch.softmax(scores, -1), values).view(b, 1, self.heads * self.hn)

        x = self._embed(tokens[:, None])
        for i in range(len(self.layers)):
            x = self._block(x, i, attend)
        return self._logits(x[:, 0])

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every other row from the batch and the cache (finished sequences)."""
        # index_select: ~6x faster than advanced indexing for these whole-row copies
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.valid = self.valid.index_select(0, rows)
        self._set_bias()

    def _set_bias(self) -> None:
        """Additive attention mask per (row, kv group): -inf at pad columns, else 0."""
        b, tmax = self.valid.shape
        pad = ~self.valid
        pad[:, self.plen :] = False  # decoded columns (written or not) are never pads
        bias = torch.zeros(b, self.groups, 1, tmax, dtype=self.k[0].dtype, device=pad.device)
        self.bias = bias.masked_fill_(pad[:, None, None], float("-inf")).view(b * self.groups, 1, tmax)
