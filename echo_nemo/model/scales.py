"""The named model scales and their arithmetic (parameters, FLOPs per token).

Shapes follow the study's OLMo configs (PAPER.md): SwiGLU MLP with hidden 4*d after
the gate split, RoPE, no biases, LayerNorm without affine parameters, untied input and
output embeddings except for 1b. `debug` exists for tests, `tiny` for the CPU
quickstart (the size ECHOLAB.md measured to learn the echo-lab arithmetic on 2 cores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from echo_nemo.errors import UserError


@dataclass(frozen=True)
class Scale:
    name: str
    d_model: int
    layers: int
    heads: int
    seq_length: int
    tied_embeddings: bool = False
    ffn_multiplier: int = 4  # MLP hidden = ffn_multiplier * d_model (after the gate split)

    @property
    def ffn_hidden(self) -> int:
        return self.ffn_multiplier * self.d_model


SCALES: dict[str, Scale] = {
    s.name: s
    for s in [
        Scale("debug", d_model=64, layers=2, heads=4, seq_length=128),
        # the smallest size of the echo-lab scale finding (~0.5M params; tiny / mini ~2.6x)
        Scale("mini", d_model=96, layers=3, heads=3, seq_length=256),
        Scale("tiny", d_model=128, layers=4, heads=4, seq_length=256),
        # a second CPU size for the echo-lab scale finding (~2.8M params, ECHOLAB.md timed ~6,500 tokens/s)
        Scale("small", d_model=160, layers=6, heads=5, seq_length=256),
        Scale("150m", d_model=768, layers=12, heads=12, seq_length=2048),
        Scale("300m", d_model=1024, layers=14, heads=16, seq_length=2048),
        Scale("500m", d_model=1536, layers=12, heads=12, seq_length=2048),
        Scale("1b", d_model=2048, layers=16, heads=16, seq_length=2048, tied_embeddings=True),
    ]
}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise UserError(f"unknown model scale {name!r}; expected one of {', '.join(SCALES)}")
    return SCALES[name]


def padded_vocab_size(vocab_size: int, tp: int = 1, multiple: int = 128) -> int:
    """Vocab rounded up so every tensor-parallel shard of the embedding is equal.

    Uses `multiple` per TP rank, like Megatron-LM's make-vocab-size-divisible-by.
    32000 stays 32000 at TP 1 and 2.
    """
    step = multiple * tp
    return -(-vocab_size // step) * step


def param_counts(scale: Scale, vocab_size: int) -> dict[str, int]:
    """Exact parameter counts of the built model (no biases, non-affine norms).

    per layer: attention 4*d^2 (q, k, v, out) + SwiGLU 3*d*f (gate, up, down);
    embeddings: V*d input, plus V*d output when untied.
    """
    d, f = scale.d_model, scale.ffn_hidden
    per_layer = 4 * d * d + 3 * d * f
    non_embedding = scale.layers * per_layer
    embedding = vocab_size * d * (1 if scale.tied_embeddings else 2)
    return {"params": non_embedding + embedding, "non_embedding_params": non_embedding}


def flops_per_token(scale: Scale, vocab_size: int, seq_length: int | None = None) -> int:
    """Training FLOPs per token (forward + backward = 3 x forward).

    6 * (non-embedding params + V*d for the output projection)
      + 12 * layers * d * seq (attention scores and weighted sum, PaLM appendix B).
    The input embedding is a lookup and costs no matmul FLOPs.
    """
    seq = seq_length or scale.seq_length
    dense = param_counts(scale, vocab_size)["non_embedding_params"] + vocab_size * scale.d_model
    return 6 * dense + 12 * scale.layers * scale.d_model * seq


def model_info(name: str, vocab_size: int, seq_length: int | None = None) -> dict:
    scale = get_scale(name)
    if vocab_size <= 0:
        raise UserError(f"--vocab-size must be positive, got {vocab_size}")
    seq = seq_length or scale.seq_length
    return {
        "scale": name,
        **{k: v for k, v in asdict(scale).items() if k != "name"},
        "ffn_hidden": scale.ffn_hidden,
        "vocab_size": vocab_size,
        "seq_length": seq,
        **param_counts(scale, vocab_size),
        "flops_per_token": flops_per_token(scale, vocab_size, seq),
    }
