"""Every change echo-nemo makes to megatron-core and torch, each applied by an explicit call.

`defer_megatron_compile()`, CPU and GPU, at command start-up (echo_nemo.cli), before
anything imports megatron-core: megatron decorates its fused kernels with
`jit_fuser = torch.compile` when its modules are imported, and building each compile
wrapper loads dynamo and inductor, about 2 s of every process's start, spent even where
none of those kernels runs (the training forward and the decoder never call them). An
import hook wraps `megatron.core.jit.jit_fuser` so that `torch.compile` is applied at a
kernel's first call instead: the compiled function and when it compiles are unchanged,
only the import stops paying for it.

`megatron_on_cpu()`, by `echo_nemo.distributed.init_distributed` when CUDA is absent,
makes megatron-core run on CPU:

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

megatron's layer spec is never patched: the study's parameter-free LayerNorm and SDPA
core attention come in through the spec (echo_nemo.model.build).

torch and megatron are imported inside the functions that patch them: the CLI imports
this module, and installs the hook, before either has loaded.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import queue
import sys
from collections.abc import Iterator
from typing import Any

_JIT_MODULE = "megatron.core.jit"
_CPU_PATCHED = False


# ----------------------------------------------------------------------------- import hook
def _compile_on_first_call(compile_fn):
    """A decorator like `compile_fn` (torch.compile) that calls it when the decorated
    function is first called, not when it is decorated."""

    def decorate(fn=None, **kwargs):
        if fn is None:  # @jit_fuser(...) with arguments
            return lambda f: decorate(f, **kwargs)
        compiled = []

        @functools.wraps(fn)
        def run(*args, **kw):
            if not compiled:
                compiled.append(compile_fn(fn, **kwargs))
            return compiled[0](*args, **kw)

        return run

    return decorate


class _LazyJitFuser(importlib.abc.MetaPathFinder):
    """Finds megatron.core.jit once, through the normal machinery, and wraps its
    `jit_fuser` after the module has run (only when it is torch.compile)."""

    def find_spec(self, name, path, target=None):
        if name != _JIT_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            torch = sys.modules.get("torch")
            if torch is not None and getattr(module, "jit_fuser", None) is torch.compile:
                module.jit_fuser = _compile_on_first_call(torch.compile)

        spec.loader.exec_module = exec_and_wrap
        return spec


def defer_megatron_compile() -> bool:
    """Install the import hook. Idempotent; False when megatron.core.jit is already imported
    (too late: its kernels are already wrapped)."""
    if _JIT_MODULE in sys.modules:
        return False
    if not any(isinstance(f, _LazyJitFuser) for f in sys.meta_path):
        sys.meta_path.insert(0, _LazyJitFuser())
    return True


# ----------------------------------------------------------------------------- megatron on CPU
def _cpu_rng_tracker_class() -> type:
    import torch
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


def megatron_on_cpu() -> None:
    """Make megatron-core run on CPU. Idempotent; does nothing when CUDA is present."""
    global _CPU_PATCHED
    import torch

    if _CPU_PATCHED or torch.cuda.is_available():
        return
    from megatron.core import tensor_parallel
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer import utils as mutils

    def cpu_causal_mask(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    mutils.get_default_causal_mask = cpu_causal_mask
    fused_softmax.get_default_causal_mask = cpu_causal_mask
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    filesystem_async._results_queue = queue.Queue()
    mrandom.model_parallel_cuda_manual_seed = _cpu_model_parallel_seed
    tensor_parallel.model_parallel_cuda_manual_seed = _cpu_model_parallel_seed
    _CPU_PATCHED = True
