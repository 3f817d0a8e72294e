"""The only file that constructs megatron-core's GPTModel.

The study's architecture (OLMo v1) maps onto megatron-core's local layer spec except
for one piece megatron has no option for: LayerNorm without learnable parameters. It
is supplied through the layer spec (`NonAffineLayerNorm`), never by patching megatron.
The forward that runs the built model is echo_nemo.model.forward.

megatron-core is imported inside the functions that build: `ModelConfig` is read by
commands that never build a model (`echo-nemo config`, recipe checks), which then do not
load megatron.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from echo_nemo.distributed import tp_size
from echo_nemo.model.scales import Scale, get_scale, padded_vocab_size


@dataclass
class ModelConfig:
    """Which model to build. `vocab_size` normally comes from the tokenizer."""

    scale: str = "debug"
    seq_length: int | None = None  # default: the scale's context
    vocab_size: int | None = None
    init_std: float = 0.02
    rotary_base: int = 10000
    layernorm_eps: float = 1e-5


class NonAffineLayerNorm(torch.nn.Module):
    """LayerNorm with no weight and no bias (OLMo v1), built by megatron's spec system."""

    def __init__(self, config=None, hidden_size: int = 0, eps: float = 1e-5, **_: object) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden_size,), eps=self.eps)


class SdpaAttention(torch.nn.Module):
    """Core attention through torch's `scaled_dot_product_attention`, built by the layer spec.

    megatron's local `DotProductAttention` materialises the [b, h, s, s] score matrix with
    baddbmm + softmax; SDPA picks a fused kernel (flash / memory-efficient on GPU, the
    flash kernel on CPU) with the same math: softmax(q k^T / sqrt(d) + causal mask) v.
    Heads are already split over TP ranks by the qkv projection, so this is TP-agnostic.
    """

    def __init__(
        self,
        config,
        layer_number: int = 1,
        attn_mask_type=None,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__()
        tp = tp_size()
        self.config = config
        self.hidden_per_partition = config.kv_channels * config.num_attention_heads // tp
        self.scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        sq, b = query.shape[0], query.shape[1]
        sk = key.shape[0]
        # megatron: [s, b, heads, d]; SDPA: [b, heads, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask, causal = None, False
        if attention_mask is not None:
            mask = ~attention_mask  # megatron masks where True; SDPA attends where True
        elif sq == sk:
            causal = True
        else:  # queries are the last sq positions (decoding with a KV cache)
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_per_partition)


def transformer_config(scale: Scale, cfg: ModelConfig, params_dtype: torch.dtype, tp: int = 1):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=scale.layers,
        hidden_size=scale.d_model,
        num_attention_heads=scale.heads,
        ffn_hidden_size=scale.ffn_hidden,
        kv_channels=scale.d_model // scale.heads,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layernorm_epsilon=cfg.layernorm_eps,
        init_method_std=cfg.init_std,
        tensor_model_parallel_size=tp,
        sequence_parallel=False,
        # Same weights at every TP size: the full matrix is drawn on CPU, then split.
        use_cpu_initialization=True,
        perform_initialization=True,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        pipeline_dtype=params_dtype,
    )


def layer_spec(num_layers: int):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    spec = get_gpt_layer_local_spec()
    spec.submodules.input_layernorm = ModuleSpec(module=NonAffineLayerNorm)
    spec.submodules.pre_mlp_layernorm = ModuleSpec(module=NonAffineLayerNorm)
    spec.submodules.self_attention.submodules.core_attention = SdpaAttention
    return TransformerBlockSubmodules(
        layer_specs=[spec] * num_layers, layer_norm=ModuleSpec(module=NonAffineLayerNorm)
    )


def build_gpt(
    cfg: ModelConfig,
    vocab_size: int | None = None,
    params_dtype: torch.dtype = torch.float32,
    parallel_output: bool = True,
):
    """Build the GPTModel for `cfg` on the current TP group (init_distributed first).

    The vocabulary is padded to a multiple of 128 * TP. The model is moved to the GPU
    when there is one. Returns the megatron module.
    """
    from megatron.core.models.gpt import GPTModel

    scale = get_scale(cfg.scale)
    tp = tp_size()
    vocab = vocab_size or cfg.vocab_size
    if not vocab:
        raise ValueError("build_gpt needs a vocab size (from the tokenizer or model.vocab_size)")
    model = GPTModel(
        config=transformer_config(scale, cfg, params_dtype, tp),
        transformer_layer_spec=layer_spec(scale.layers),
        vocab_size=padded_vocab_size(vocab, tp),
        max_sequence_length=cfg.seq_length or scale.seq_length,
        pre_process=True,
        post_process=True,
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=scale.tied_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rotary_base,
    )
    if torch.cuda.is_available():
        model = model.cuda()
    return model
