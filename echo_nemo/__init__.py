"""echo-nemo: the Echo Chamber study (pretraining -> RL -> format shares) on megatron-core.

One import-time adjustment lives here, because it must be in place before anything
imports megatron-core (the CPU patches proper are in `echo_nemo.distributed`):
megatron decorates its fused kernels with `jit_fuser = torch.compile` when its modules are
imported, and on torch 2.13 building each compile wrapper loads dynamo and inductor:
~2 s of every process's start, spent even where none of those kernels ever runs (the
lean forward never calls them). `megatron.core.jit.jit_fuser` is wrapped so that
`torch.compile` is applied at a kernel's first call instead: the compiled function and
when it compiles are unchanged, only the import no longer pays for it.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

_JIT_MODULE = "megatron.core.jit"


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


if _JIT_MODULE not in sys.modules:
    sys.meta_path.insert(0, _LazyJitFuser())
