"""Process groups: tensor/data parallel init and the rank queries every layer asks.

`init_distributed` applies megatron-core's CPU patches when CUDA is absent
(echo_nemo.patches.megatron_on_cpu). Collectives live in echo_nemo.parallel.

megatron-core is imported inside the functions that use it, not at the top: the launcher
checks (`detect_env`) run without it, and ranks started by `run_distributed` install the
import hook of echo_nemo.patches before anything loads megatron.

Launchers: torchrun (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*), srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, first host of SLURM_JOB_NODELIST), or a plain single
process (a 1-rank gloo group on a free local port).
"""

from __future__ import annotations

import datetime
import functools
import importlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from echo_nemo import patches, speed
from echo_nemo.errors import UserError
from echo_nemo.net import free_port


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
        patches.megatron_on_cpu()
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
def _spawn_entry(local_rank: int, world_size: int, port: int, installed: tuple, fn_ref: tuple[str, str],
                 args: tuple) -> None:
    patches.defer_megatron_compile()  # before `fn`'s module imports megatron
    speed.restore(installed)  # the parent's speed layer (echo_nemo.cpu when it applied it)
    fn = functools.reduce(getattr, fn_ref[1].split("."), importlib.import_module(fn_ref[0]))
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
    `init_distributed(tp=...)` exactly as real code does, and gets the speed layer this
    process installed (echo_nemo.speed). A failure in any rank raises.
    """
    for attempt in range(3):
        try:
            mp.start_processes(
                _spawn_entry,
                args=(world_size, free_port(), speed.snapshot(), (fn.__module__, fn.__qualname__), args),
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
