"""A cluster self-check: does a multi-task job get a working tensor-parallel group?

`tp_forward_check(tp)` runs inside every task of a job (srun, one task per GPU): it
initialises torch.distributed from the launcher's environment (echo_nemo.distributed),
builds the `debug` GPT at TP=`tp` and at TP=1 from the same seed, runs the same tokens
through both and returns the largest per-token loss difference with the rank layout.
A job whose ranks cannot reach each other hangs or raises here, before any real run
spends its allocation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from echo_nemo.distributed import destroy_distributed, init_distributed
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.model.forward import causal_forward


def _debug_loss(tp: int, seed: int, tokens, labels):
    env = init_distributed(tp=tp, seed=seed)
    model = build_gpt(ModelConfig(scale="debug"), vocab_size=256)
    model.eval()
    with torch.no_grad():
        loss = causal_forward(model, tokens, labels).float().cpu()
    return env, loss


def tp_forward_check(tp: int = 2, seed: int = 1234) -> dict[str, Any]:
    """Per-token loss of the debug GPT at TP=`tp` vs TP=1 in this job's process group.

    Returns {"rank", "world_size", "local_rank", "master_addr", "tp", "max_abs_diff",
    "loss_tp", "loss_tp1"} (losses are means over the batch).
    """
    g = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 256, (2, 33), generator=g)
    tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    try:
        env, loss_tp = _debug_loss(tp, seed, tokens, labels)
        _, loss_1 = _debug_loss(1, seed, tokens, labels)
        diff = (loss_tp - loss_1).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)  # every rank reports the worst rank
        return {
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "master_addr": env.master_addr,
            "tp": tp,
            "max_abs_diff": float(diff),
            "loss_tp": float(loss_tp.mean()),
            "loss_tp1": float(loss_1.mean()),
        }
    finally:
        destroy_distributed()
