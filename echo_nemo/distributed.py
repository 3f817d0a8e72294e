"""Process groups, tensor/data parallel init, and megatron-core's CPU compatibility.

This is the only module that patches megatron-core or torch (besides one wrap that must
precede any megatron import: `echo_nemo/__init__.py` makes megatron's torch.compile'd
kernels compile at their first call, not at import). The patches are applied by
`init_distributed` (or `apply_cpu_patches`) and only when CUDA is absent:

- `torch.cuda.current_device()` is called by RoPE and attention to place buffers:
  on CPU it answers "cpu".
- `torch.cuda.synchronize()` is called by dist-checkpointing: a no-op on CPU.
- megatron's RNG tracker forks CUDA generator states (used by embeddings and
  attention even with dropout 0): a CPU tracker forks `torch.get_rng_state()`.
- the unfused softmax builds its default causal mask with device="cuda": the same
  mask is built on CPU.
- dist-checkpointing's writer collects results through a spawn-context Manager queue
  (a fresh interpreter that re-imports `__main__`, 2-4 s per process). Our saves are
  synchronous, so the queue is only used inside the saving process: a plain
  `queue.Queue` does the same job.

One patch is for speed on any device, applied by the rollout sampler:
`patch_static_kv_rope` caches keys already rotated instead of re-rotating the whole
KV cache at every decode step.

Launchers: torchrun (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*), srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, first host of SLURM_JOB_NODELIST), or a plain single
process (a 1-rank gloo group on a free local port).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from echo_nemo.errors import UserError
from echo_nemo.net import free_port

_CPU_PATCHED = False


# ----------------------------------------------------------------------------- CPU patches
def _cpu_rng_tracker_class() -> type:
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    class CpuRNGStatesTracker(CudaRNGStatesTracker):
        """megatron's tracker API over CPU generator states."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRNGStatesTracker


def _cpu_model_parallel_seed(seed: int, *args: Any, **kwargs: Any) -> None:
    """CPU stand-in for megatron's `model_parallel_cuda_manual_seed` (same seeds)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import random as mrandom

    tracker = _cpu_rng_tracker_class()()
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    tp_rank = ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0
    tracker.add("data-parallel-rng", seed)
    tracker.add("model-parallel-rng", seed + 2718 + tp_rank)
    tracker.add("expert-parallel-rng", seed + 1024)


def apply_cpu_patches() -> None:
    """Make megatron-core run on CPU. Idempotent; does nothing when CUDA is present."""
    global _CPU_PATCHED
    if _CPU_PATCHED or torch.cuda.is_available():
        return
    from megatron.core import tensor_parallel
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer import utils as mutils

    def cpu_causal_mask(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    mutils.get_default_causal_mask = cpu_causal_mask
    fused_softmax.get_default_causal_mask = cpu_causal_mask
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    filesystem_async._results_queue = queue.Queue()
    mrandom.model_parallel_cuda_manual_seed = _cpu_model_parallel_seed
    tensor_parallel.model_parallel_cuda_manual_seed = _cpu_model_parallel_seed
    _CPU_PATCHED = True


_ROPE_PATCHED = False
MEGATRON_ADJUST_KV = None  # megatron's own Attention._adjust_key_value_for_inference (tests compare)


def patch_static_kv_rope() -> None:
    """Cache rotated keys in megatron's static-batching KV cache. Idempotent; CPU and GPU.

    Without flash-decode kernels (CPU, or GPUs without flash-attn) megatron stores the
    keys un-rotated and re-applies RoPE to the whole cached prefix at every decode step:
    O(length) extra elementwise work per token and layer, about a third of the decode
    time of the tiny model on CPU. RoPE is position-wise, so rotating each key once at
    its own positions before it is cached gives bit-identical keys (tested); the key
    embedding is then dropped from `rotary_pos_emb`, as megatron's dynamic-batching path
    does after it has rotated keys itself.
    """
    global _ROPE_PATCHED, MEGATRON_ADJUST_KV
    if _ROPE_PATCHED:
        return
    from megatron.core.transformer import attention as mattn

    original = MEGATRON_ADJUST_KV = mattn.Attention._adjust_key_value_for_inference

    def adjust(self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs):
        if (inference_context is None or rotary_pos_emb is None or self.config.flash_decode
                or not inference_context.is_static_batching()):
            return original(self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs)
        q_pos_emb, k_pos_emb = rotary_pos_emb
        start = inference_context.sequence_len_offset
        key = mattn.apply_rotary_pos_emb(  # exactly the call Attention.forward would make later
            key, k_pos_emb[start : start + key.size(0)], config=self.config,
            mscale=mattn._yarn_get_concentration_factor_from_config(self.config), cp_group=self.pg_collection.cp)
        query, key, value, rotary_pos_emb, mask_type, block_table = original(
            self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs)
        return query, key, value, (rotary_pos_emb[0], None), mask_type, block_table

    mattn.Attention._adjust_key_value_for_inference = adjust
    _ROPE_PATCHED = True


# ----------------------------------------------------------------------------- init
@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30
        )
        first = out.stdout.split()
        if first:
            return first[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return nodelist.split(",")[0].split("[")[0]


def detect_env() -> DistEnv:
    """Rank layout from torchrun, srun, or a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
        )
    # Only inside an srun step: the batch script itself also sees SLURM_PROCID=0 and the
    # allocation's SLURM_NTASKS, and would wait forever for ranks nobody started.
    in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    if in_step and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or _slurm_master_addr(),
            master_port=int(env.get("MASTER_PORT", 20000 + job % 20000)),
        )
    # A lone process needs no agreed port: a stale MASTER_PORT (e.g. inherited from a
    # parent that ran its own group) must not make it collide.
    return DistEnv(0, 1, 0, "127.0.0.1", free_port())


def init_distributed(tp: int = 1, pp: int = 1, seed: int = 1234, timeout_min: int = 30) -> DistEnv:
    """Initialise torch.distributed and megatron's TP/PP/DP groups; seed the RNG trackers.

    gloo on CPU, NCCL on GPU (one device per local rank). World size must be a multiple
    of tp * pp; the rest is data parallel.
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    env = detect_env()
    if env.world_size % (tp * pp) != 0:
        launch = (f"; start {tp * pp} processes per model replica, e.g. `torchrun --nproc-per-node "
                  f"{tp * pp} -m echo_nemo.cli ...` (or srun under SLURM)") if env.world_size == 1 else ""
        raise UserError(
            f"world size {env.world_size} is not divisible by parallel.tp * parallel.pp = {tp * pp}{launch}"
        )
    cuda = torch.cuda.is_available()
    if not cuda:
        apply_cpu_patches()
    else:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        # The rendezvous address goes in init_method, not os.environ: writing it there
        # would leak into every subprocess this process starts.
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(minutes=timeout_min),
        )
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        create_gloo_process_groups=not cuda,
    )
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return env


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def tp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0


def tp_size() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_world_size() if ps.model_parallel_is_initialized() else 1


def dp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_rank() if ps.model_parallel_is_initialized() else 0


def dp_size() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_world_size() if ps.model_parallel_is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- testing
def _spawn_entry(local_rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        destroy_distributed()


def run_distributed(fn: Callable, world_size: int, *args: Any) -> None:
    """Run `fn(*args)` in `world_size` fresh processes wired as a gloo group.

    Each process sees torchrun-style environment variables, so `fn` calls
    `init_distributed(tp=...)` exactly as real code does. A failure in any rank raises.
    """
    import torch.multiprocessing as mp

    for attempt in range(3):
        try:
            mp.start_processes(
                _spawn_entry,
                args=(world_size, free_port(), fn, args),
                nprocs=world_size,
                join=True,
                start_method="spawn",
            )
            return
        except mp.ProcessRaisedException as e:
            # the port was free when picked, but another process (a parallel test) can
            # take it before rank 0 listens on it: pick another
            if "EADDRINUSE" not in str(e) or attempt == 2:
                raise
