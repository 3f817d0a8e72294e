"""echo-nemo's CPU speed layer: what makes training and rollouts fast on CPU machines.

- `kernels`: the two C kernels (attention.c, decode_gemm.c), built once per machine by
  `kernels.build()` and loaded with ctypes ($ECHO_NEMO_CPU_KERNELS=torch turns them off);
- `attention`: causal self-attention for training on the C kernel (torch's SDPA where it
  does not apply);
- `gemm`: x w^T for decode steps on the C kernel or the fastest BLAS form bitwise equal
  to F.linear;
- `malloc`: glibc settings that keep freed memory in the process ($ECHO_NEMO_MALLOC);
- `threads`: a run's torch thread count following a share file ($ECHO_NEMO_THREADS_FILE).

Nothing here is imported by model, training or RL code: `apply()` is called once at
command start-up (echo_nemo.cli) and installs the CPU operations and the thread follower
into `echo_nemo.speed`, the seam the model and the loops read. The CPU operations load
(with torch) at their first use on a CPU tensor; tensors on a GPU never reach them. No
torch import here: the CLI applies this layer before any command starts.
"""

from __future__ import annotations

from echo_nemo import env, speed
from echo_nemo.cpu import malloc, threads


def _load_ops() -> speed.Ops:
    # imported here, at the first model operation on a CPU tensor: they load torch, which
    # commands that never run a model (config, data, reward, report) do not pay for
    from echo_nemo.cpu import attention, gemm

    return speed.Ops(causal_attention=attention.causal, linear=gemm.linear)


def use_kernels() -> None:
    """Check $ECHO_NEMO_CPU_KERNELS now (a misspelt value exits 2 before any work), and give
    the model the CPU implementations of its attention and decode products."""
    env.cpu_kernels()
    speed.install("cpu", _load_ops)


def apply() -> None:
    """The whole CPU layer for one command: allocator settings (before the first tensor:
    every step reuses the last one's memory), the kernels, and the thread follower when a
    study set $ECHO_NEMO_THREADS_FILE."""
    malloc.keep_freed_memory()
    use_kernels()
    if env.threads_file() is not None:
        speed.on_every_step(threads.follow_share)
