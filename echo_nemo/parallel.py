"""Every collective the package runs, in one place: data-parallel gradient averaging, the
TP-aware global grad norm and clip, TP broadcasts, all-reduces and gathers, and the DP mean
of metrics. Pretraining, RL (policy and critic) and Expert
Iteration's SFT all call `reduce_and_clip` between backward and the optimizer step, so
the same recipe takes the same update at every TP / DP size.

Why not megatron-core's `DistributedDataParallel`: it accumulates into `param.main_grad`
buffers that only megatron's own optimizer reads, and that optimizer (and its grad
scaler and clip) hard-codes CUDA. We keep `torch.optim.AdamW` (CPU and GPU alike) and
one hand-written bucketed all-reduce here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import (
    gather_from_tensor_model_parallel_region,
    param_is_not_tensor_parallel_duplicate,
)

from echo_nemo import distributed as D

BUCKET_NUMEL = 50_000_000  # gradients all-reduced per bucket (200 MB in fp32)


def _grads(params: Iterable[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average .grad over the data-parallel group, one flat all-reduce per bucket.

    Every DP rank holds a replica and a different slice of the global batch, so the
    average of their gradients is the gradient of the global-batch mean loss.
    """
    if D.dp_size() == 1:
        return
    group = ps.get_data_parallel_group()
    grads = _grads(params)
    bucket: list[torch.Tensor] = []
    numel = 0
    for i, g in enumerate(grads):
        bucket.append(g)
        numel += g.numel()
        if numel >= BUCKET_NUMEL or i == len(grads) - 1:
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.all_reduce(flat, group=group)
            flat /= D.dp_size()
            for g_, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                g_.copy_(synced)
            bucket, numel = [], 0


def global_grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of the whole model's gradient, the same number on every rank.

        norm = sqrt( sum over TP ranks of sum_p |g_p|^2 ),

    where a parameter replicated on every TP rank (norms, a value head) counts once (on TP
    rank 0) and a TP-sharded one contributes each rank's shard. Gradients are already
    DP-averaged, so DP ranks agree without a reduction.
    """
    sq = torch.zeros((), dtype=torch.float32, device=D.device())
    for p in params:
        if p.grad is not None and param_is_not_tensor_parallel_duplicate(p):
            # one pass over the gradient, no squared copy of it (150m: 460 MB a step)
            sq += torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32).square()
    if D.tp_size() > 1:
        dist.all_reduce(sq, group=ps.get_tensor_model_parallel_group())
    return sq.sqrt().item()


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Scale all gradients by max_norm / norm when the global norm exceeds max_norm
    (max_norm <= 0: no clipping). Returns the global norm before clipping."""
    params = list(params)
    norm = global_grad_norm(params)
    if max_norm > 0 and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for g in _grads(params):
            g.mul_(coef)
    return norm


def reduce_and_clip(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """What every trainer does between backward and `optimizer.step()`: DP-average, then
    clip by the global norm. Returns that norm (the one to log)."""
    params = list(params)
    average_gradients(params)
    return clip_gradients(params, max_norm)


def broadcast_tp(obj: Any) -> Any:
    """TP rank 0's picklable object on every rank of its TP group (e.g. rewards)."""
    if D.tp_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(
        box, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group()
    )
    return box[0]


def broadcast_tensor_tp(t: torch.Tensor) -> torch.Tensor:
    """TP rank 0's tensor on every rank of its TP group (in place)."""
    if D.tp_size() > 1:
        dist.broadcast(t, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group())
    return t


def all_reduce_tp(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over its TP group, in place (contiguous `t`; not differentiable: the
    training forward uses megatron's autograd-aware mappings instead)."""
    if D.tp_size() > 1:
        dist.all_reduce(t, group=ps.get_tensor_model_parallel_group())
    return t


def gather_logits(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from vocab-parallel ones: the TP ranks' shards concatenated
    along the last dimension (identity at TP=1); differentiable."""
    if D.tp_size() == 1:
        return logits
    return gather_from_tensor_model_parallel_region(logits)


def gather_tp_param(tensor: torch.Tensor, param: torch.Tensor | None = None) -> torch.Tensor:
    """The full (TP=1 layout) tensor of a tensor-parallel shard, on every TP rank.

    `tensor` is a parameter's shard or its gradient (then pass the parameter as `param`
    for its sharding attributes). Megatron shards along `partition_dim`; with
    `partition_stride` s > 1 (SwiGLU's fc1 holds [gate_r; up_r] on rank r) each shard
    is s interleaved pieces.
    """
    param = tensor if param is None else param
    if D.tp_size() == 1 or not getattr(param, "tensor_model_parallel", False):
        return tensor.detach().clone()
    dim = param.partition_dim
    stride = getattr(param, "partition_stride", 1)
    shards = [torch.empty_like(tensor) for _ in range(D.tp_size())]
    dist.all_gather(shards, tensor.detach().contiguous(), group=ps.get_tensor_model_parallel_group())
    pieces = [shard.chunk(stride, dim=dim) for shard in shards]
    return torch.cat([p[i] for i in range(stride) for p in pieces], dim=dim)


def mean_over_dp(metrics: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over data-parallel ranks (each saw its own prompts)."""
    if D.dp_size() == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=D.device())
    dist.all_reduce(t, group=ps.get_data_parallel_group(with_context_parallel=False))
    return {k: float(v) / D.dp_size() for k, v in zip(keys, t)}
