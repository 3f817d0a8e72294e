"""Hugging Face OLMo (v1) export and import.

The study's architecture is exactly transformers' `OlmoForCausalLM`: non-affine
LayerNorm (eps 1e-5), SwiGLU, RoPE (rotate-half), no biases. The weights map one to one
except for two fused megatron layouts and the padded vocabulary:

- `linear_qkv.weight` [ng * (np/ng + 2) * hn, d]: per query group g, the np/ng query
  heads, then one key head, then one value head (hn rows each); HF keeps q_proj, k_proj,
  v_proj separate, heads contiguous.
- `linear_fc1.weight` [2f, d] = [gate; up] (megatron's GLU applies the activation to
  the first half): HF gate_proj and up_proj.
- the embedding and output rows are padded to a multiple of 128 * TP: HF gets the first
  vocab_size rows; import zero-fills the padding (those logits are masked anyway).

The tokenizer gets a chat template (`CHAT_TEMPLATE`, in tokenizer_config.json) that renders
a conversation as the text echo-nemo trains and prompts on, so that chat-formatted
datasets (TRL's conversational GRPO, OpenRLHF's ``--apply_chat_template``, NeMo-RL's math
processor) give the model exactly echo-nemo's RL prompt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from echo_nemo.errors import UserError
from echo_nemo.model.build import ModelConfig
from echo_nemo.model.scales import SCALES, Scale, get_scale

# A user (or system, or tool) turn is its text and a blank line: `Problem.prompt`, the prompt
# echo-nemo's RL and eval feed the model. An assistant turn is its text and EOS, the way a
# pretraining document ends. add_generation_prompt adds nothing, since the blank line already
# opens the answer, so rendering a conversation one message longer only appends (NeMo-RL
# tokenizes message logs message by message from such differences). `content` may be None
# (TRL's tool-call turns: empty text) or a list of content blocks (their "text" parts).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if content is none -%}{%- set content = '' -%}"
    "{%- elif content is not string -%}"
    "{%- set content = content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ content }}{{ eos_token }}"
    "{%- else -%}{{ content }}{{ '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


# ----------------------------------------------------------------------------- layouts (pure)
def split_qkv(w: torch.Tensor, heads: int, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron fused qkv [groups * (heads/groups + 2) * hn, d] -> q [heads*hn, d], k, v [groups*hn, d]."""
    per = heads // groups
    hn = w.shape[0] // (groups * (per + 2))
    w = w.view(groups, per + 2, hn, w.shape[-1])
    q = w[:, :per].reshape(heads * hn, -1)
    k = w[:, per].reshape(groups * hn, -1)
    v = w[:, per + 1].reshape(groups * hn, -1)
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    """Inverse of `split_qkv`."""
    per = heads // groups
    hn = q.shape[0] // heads
    d = q.shape[-1]
    w = torch.cat(
        [q.view(groups, per, hn, d), k.view(groups, 1, hn, d), v.view(groups, 1, hn, d)], dim=1
    )
    return w.reshape(groups * (per + 2) * hn, d)


def megatron_to_hf(sd: dict[str, torch.Tensor], scale: Scale, vocab_size: int) -> dict[str, torch.Tensor]:
    """Full (TP=1) megatron GPT state dict -> OlmoForCausalLM state dict."""
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:vocab_size]}
    for i in range(scale.layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = split_qkv(sd[m + "self_attention.linear_qkv.weight"], scale.heads, scale.heads)
        gate, up = sd[m + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out |= {
            h + "self_attn.q_proj.weight": q,
            h + "self_attn.k_proj.weight": k,
            h + "self_attn.v_proj.weight": v,
            h + "self_attn.o_proj.weight": sd[m + "self_attention.linear_proj.weight"],
            h + "mlp.gate_proj.weight": gate,
            h + "mlp.up_proj.weight": up,
            h + "mlp.down_proj.weight": sd[m + "mlp.linear_fc2.weight"],
        }
    if not scale.tied_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def hf_to_megatron(hf: dict[str, torch.Tensor], scale: Scale, padded_vocab: int) -> dict[str, torch.Tensor]:
    """OlmoForCausalLM state dict -> full (TP=1) megatron GPT weights (padding rows zero)."""

    def pad(w: torch.Tensor) -> torch.Tensor:
        out = w.new_zeros(padded_vocab, w.shape[1])
        out[: w.shape[0]] = w
        return out

    sd = {"embedding.word_embeddings.weight": pad(hf["model.embed_tokens.weight"])}
    for i in range(scale.layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        sd |= {
            m + "self_attention.linear_qkv.weight": fuse_qkv(
                hf[h + "self_attn.q_proj.weight"], hf[h + "self_attn.k_proj.weight"],
                hf[h + "self_attn.v_proj.weight"], scale.heads, scale.heads,
            ),
            m + "self_attention.linear_proj.weight": hf[h + "self_attn.o_proj.weight"],
            m + "mlp.linear_fc1.weight": torch.cat(
                [hf[h + "mlp.gate_proj.weight"], hf[h + "mlp.up_proj.weight"]], dim=0
            ),
            m + "mlp.linear_fc2.weight": hf[h + "mlp.down_proj.weight"],
        }
    if not scale.tied_embeddings:
        sd["output_layer.weight"] = pad(hf["lm_head.weight"])
    return sd


def olmo_config(cfg: ModelConfig, scale: Scale, tokenizer, dtype: torch.dtype):
    from transformers import OlmoConfig

    return OlmoConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=scale.d_model,
        intermediate_size=scale.ffn_hidden,
        num_hidden_layers=scale.layers,
        num_attention_heads=scale.heads,
        num_key_value_heads=scale.heads,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_length or scale.seq_length,
        initializer_range=cfg.init_std,
        rope_parameters={"rope_theta": float(cfg.rotary_base), "rope_type": "default"},
        attention_bias=False,
        attention_dropout=0.0,
        clip_qkv=None,
        tie_word_embeddings=scale.tied_embeddings,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_id,
        architectures=["OlmoForCausalLM"],
        dtype=str(dtype).removeprefix("torch."),
    )


def scale_for_hf_config(hf_cfg: dict[str, Any], source: str) -> Scale:
    """The named scale with this OLMo config's shape (UserError naming the mismatch)."""
    if hf_cfg.get("model_type") != "olmo":
        raise UserError(
            f"{source}: model_type is {hf_cfg.get('model_type')!r}, expected 'olmo' (OlmoForCausalLM)"
        )
    for key, want in (("attention_bias", False), ("clip_qkv", None), ("hidden_act", "silu")):
        if hf_cfg.get(key, want) != want:
            raise UserError(f"{source}: {key}={hf_cfg.get(key)!r} is not supported (expected {want!r})")
    if hf_cfg.get("num_key_value_heads", hf_cfg["num_attention_heads"]) != hf_cfg["num_attention_heads"]:
        raise UserError(f"{source}: grouped-query attention is not supported (num_key_value_heads)")
    shape = (hf_cfg["hidden_size"], hf_cfg["num_hidden_layers"], hf_cfg["num_attention_heads"],
             hf_cfg["intermediate_size"], bool(hf_cfg.get("tie_word_embeddings", False)))
    for s in SCALES.values():
        if (s.d_model, s.layers, s.heads, s.ffn_hidden, s.tied_embeddings) == shape:
            return s
    raise UserError(
        f"{source}: no model scale has d_model={shape[0]}, layers={shape[1]}, heads={shape[2]}, "
        f"intermediate_size={shape[3]}, tied embeddings={shape[4]} (scales: {', '.join(SCALES)})"
    )


# ----------------------------------------------------------------------------- export
def add_chat_template(tokenizer_config: Path) -> None:
    """Set `CHAT_TEMPLATE` as the tokenizer's chat template (replacing one a source tokenizer
    brought along: the exported model answers echo-nemo's prompt format, not another's)."""
    cfg = json.loads(tokenizer_config.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    tokenizer_config.write_text(json.dumps(cfg, indent=2) + "\n")


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write `out/` = model.safetensors + config.json + tokenizer files for OlmoForCausalLM."""
    from safetensors.torch import save_file

    from echo_nemo.checkpoint import load_model_for_inference, resolve_checkpoint

    ckpt = resolve_checkpoint(ckpt)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {str(out)!r} is not empty (choose a new folder)")
    model, tokenizer, cfg = load_model_for_inference(ckpt, tp=1, params_dtype=torch.float32)
    scale = get_scale(cfg.scale)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    hf = {k: v.to(dtype) for k, v in megatron_to_hf(sd, scale, cfg.vocab_size).items()}
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    olmo_config(cfg, scale, tokenizer, dtype).save_pretrained(str(tmp))
    tokenizer.save(tmp)
    add_chat_template(tmp / "tokenizer_config.json")
    (tmp / "echo_nemo_source.json").write_text(
        json.dumps({"checkpoint": str(ckpt.resolve()), "scale": cfg.scale}, indent=2) + "\n"
    )
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)  # a half-written export never sits at `out`
    return out


# ----------------------------------------------------------------------------- import
def import_hf(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Build a megatron checkpoint run dir `out/` (checkpoints/step_0, tokenizer/) from an
    OLMo-architecture HF folder (config.json, *.safetensors, tokenizer.json)."""
    from safetensors.torch import load_file

    from echo_nemo import distributed as D
    from echo_nemo.checkpoint import latest_checkpoint, save_checkpoint
    from echo_nemo.model.build import build_gpt
    from echo_nemo.model.scales import padded_vocab_size
    from echo_nemo.tokenizer import load_tokenizer

    src, out = Path(src), Path(out)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"no config.json in {str(src)!r} (expected a Hugging Face model folder)")
    hf_cfg = json.loads(cfg_path.read_text())
    scale = scale_for_hf_config(hf_cfg, str(cfg_path))
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise UserError(f"no *.safetensors weights in {str(src)!r}")
    if latest_checkpoint(out) is not None:
        raise UserError(f"{str(out)!r} already holds a checkpoint (choose a new folder)")
    hf: dict[str, torch.Tensor] = {}
    for f in files:
        hf |= {k: v.float() for k, v in load_file(str(f)).items()}
    vocab = int(hf_cfg["vocab_size"])
    if "model.embed_tokens.weight" not in hf:
        raise UserError(f"{str(src)!r}: model.embed_tokens.weight missing from the safetensors files")
    rope = (hf_cfg.get("rope_parameters") or {}).get("rope_theta", hf_cfg.get("rope_theta", 10000))
    cfg = ModelConfig(
        scale=scale.name,
        seq_length=int(hf_cfg.get("max_position_embeddings", scale.seq_length)),
        vocab_size=vocab,
        init_std=float(hf_cfg.get("initializer_range", 0.02)),
        rotary_base=int(rope),
    )
    tokenizer = load_tokenizer(src)
    if tokenizer.vocab_size > vocab:
        raise UserError(
            f"{str(src)!r}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab}"
        )
    if not torch.distributed.is_initialized():
        D.init_distributed(tp=1)
    if D.tp_size() != 1:
        raise UserError("import runs at TP=1 (one process); the checkpoint then loads at any TP")
    model = build_gpt(cfg, vocab, params_dtype=torch.float32)
    try:
        weights = hf_to_megatron(hf, scale, padded_vocab_size(vocab, D.tp_size()))
    except KeyError as e:
        raise UserError(f"{str(src)!r}: weight {e} is missing (expected an OlmoForCausalLM checkpoint)") from None
    state = model.state_dict()
    missing = [k for k in state if not k.endswith("_extra_state") and k not in weights]
    if missing:
        raise UserError(f"{str(src)!r}: no weights for {missing[:3]}")
    model.load_state_dict({**state, **weights}, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out / "tokenizer")
    save_checkpoint(out, 0, model, None, model_config=cfg, tokenizer=out / "tokenizer", kind="import")
    return out
