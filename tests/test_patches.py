"""echo_nemo.patches: megatron-core's torch.compile'd kernels are compiled at their first
call, not at import, once the import hook is installed (as every command does at
start-up): the import no longer loads inductor, and a kernel still gives the compiled
function's result. Importing echo_nemo alone patches nothing."""

from __future__ import annotations

import subprocess
import sys

from echo_nemo.patches import _compile_on_first_call


def test_the_compile_happens_at_the_first_call_and_once():
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append((fn.__name__, kwargs))
        return lambda *a, **k: ("compiled", fn(*a, **k))

    lazy = _compile_on_first_call(fake_compile)

    @lazy
    def add(a, b):
        return a + b

    @lazy(dynamic=True)
    def mul(a, b):
        return a * b

    assert calls == [] and add.__name__ == "add"  # decorating compiles nothing
    assert add(2, 3) == ("compiled", 5) and add(1, 1) == ("compiled", 2)
    assert mul(2, 3) == ("compiled", 6)
    assert calls == [("add", {}), ("mul", {"dynamic": True})]  # once each, with its arguments


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_megatron_after_the_hook_loads_no_inductor():
    code = (
        "import sys\n"
        "from echo_nemo import patches\n"
        "assert patches.defer_megatron_compile() and patches.defer_megatron_compile()\n"
        "import torch, megatron.core, megatron.core.models.gpt\n"
        "import megatron.core.jit as jit\n"
        "from megatron.core.fusions.fused_bias_swiglu import bias_swiglu\n"
        "assert 'torch._inductor.compile_fx' not in sys.modules, 'inductor loaded at import'\n"
        "assert jit.jit_fuser is not torch.compile and bias_swiglu.__name__ == 'bias_swiglu'\n"
        "print('ok')\n"
    )
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_importing_echo_nemo_installs_nothing_and_a_late_hook_says_so():
    code = (
        "import sys, echo_nemo, torch, megatron.core.jit as jit\n"
        "from echo_nemo import patches\n"
        "assert jit.jit_fuser is torch.compile, 'patched at import'\n"
        "assert patches.defer_megatron_compile() is False\n"
        "print('ok')\n"
    )
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
