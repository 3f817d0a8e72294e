"""The models of an RL run and what a checkpoint of it holds.

- `load_policy`: the policy from `model.init` (a checkpoint or run dir), or a fresh one;
- `frozen_reference`: a frozen copy of the starting policy (the KL term's reference);
- `TrainState`: the policy with its optimizer and schedule, the auxiliary models trained
  beside it (`AuxModel`: PPO's critic) and small algorithm state: what the algorithms
  update and rl/checkpointing.py saves and resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from echo_nemo import checkpoint as C
from echo_nemo.errors import UserError
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.rl.config import RLConfig
from echo_nemo.tokenizer import load_tokenizer


@dataclass
class AuxModel:
    """A model trained beside the policy (PPO's critic): checkpointed under run_dir/<name>/."""

    module: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any


@dataclass
class TrainState:
    """What the update phases change and a checkpoint restores."""

    model: Any  # the policy (megatron GPTModel)
    opt: torch.optim.Optimizer | None = None  # built by the algorithm's setup
    sched: Any = None
    aux: dict[str, AuxModel] = field(default_factory=dict)
    algo_state: dict[str, Any] = field(default_factory=dict)  # small algorithm state (REINFORCE's EMA)


def clone_model(model, model_config: ModelConfig):
    """A second GPTModel with the same weights (deepcopy cannot copy megatron's process groups)."""
    dtype = next(model.parameters()).dtype
    with torch.random.fork_rng(devices=[]):  # building draws init weights: keep the run's RNG
        twin = build_gpt(model_config, model_config.vocab_size, params_dtype=dtype)
    twin.load_state_dict(model.state_dict())
    return twin


def frozen_reference(model, model_config: ModelConfig):
    """A frozen copy of the starting policy, in eval mode, without gradients."""
    reference = clone_model(model, model_config).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def load_policy(cfg: RLConfig, tokenizer=None):
    """(model, ModelConfig, tokenizer, tokenizer path) from model.init, or a fresh model."""
    dtype = torch.bfloat16 if (cfg.model.bf16 and torch.cuda.is_available()) else torch.float32
    if cfg.model.init:
        ckpt = C.resolve_checkpoint(cfg.model.init)
        meta = C.read_meta(ckpt)
        mcfg = C.model_config_from_meta(meta)
        model = build_gpt(mcfg, mcfg.vocab_size, params_dtype=dtype)
        C.load_checkpoint(ckpt, model, None, load_rank_extra=False)
        tok_path = cfg.model.tokenizer or C.tokenizer_path_from_meta(ckpt, meta)
    else:
        tok_path = cfg.model.tokenizer
        mcfg = None
        model = None
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_path)
        tok_path = str(tokenizer.path) if getattr(tokenizer, "path", None) else tok_path
    if model is None:
        mcfg = ModelConfig(scale=cfg.model.scale, vocab_size=tokenizer.vocab_size)
        torch.manual_seed(cfg.seed)  # the same fresh weights again on resume (the KL reference)
        model = build_gpt(mcfg, tokenizer.vocab_size, params_dtype=dtype)
    if mcfg.vocab_size and tokenizer.vocab_size > mcfg.vocab_size:
        raise UserError(
            f"tokenizer {tok_path!r} has {tokenizer.vocab_size} tokens but model {cfg.model.init!r} "
            f"was built for {mcfg.vocab_size}"
        )
    return model, mcfg, tokenizer, tok_path
