"""echo-nemo's C kernels (echo_nemo.cpu.kernels): the training attention kernel
equals SDPA to float rounding, forward and backward, with grouped queries and ragged
lengths, whatever the thread count; the library is built once and cached; without a
working compiler, or by choice, torch's kernels run (same results as before the kernels
existed); a misspelt choice exits 2 naming it."""

import pytest
import torch
import torch.nn.functional as F
from shared_helpers import needs_cpu_kernels, run_cli

from echo_nemo import env
from echo_nemo.cpu import attention, gemm
from echo_nemo.cpu import kernels as cpu_kernels
from echo_nemo.errors import UserError

needs_kernel = needs_cpu_kernels()


@pytest.fixture
def reload_kernels():
    """load() runs again in the test (its result is cached per process), and again after it."""
    cpu_kernels.load.cache_clear()
    yield
    cpu_kernels.load.cache_clear()


def _qkv(b, h, g, s, d, dtype, seed=0):
    """q [b, h, s, d], k, v [b, g, s, d]: strided views of one [b, s, h + 2g, d] tensor, as the
    training forward has them (the gradient lands in that tensor)."""
    x = torch.randn(b, s, h + 2 * g, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x.to(dtype).requires_grad_()
    return x, x[:, :, :h].transpose(1, 2), x[:, :, h:h + g].transpose(1, 2), x[:, :, h + g:].transpose(1, 2)


def _run(fn, shape, dtype):
    x, q, k, v = _qkv(*shape, dtype)
    o = fn(q, k, v)
    weights = torch.cos(torch.arange(o.numel(), dtype=dtype)).view(o.shape)  # a loss that mixes every output
    (o * weights).sum().backward()
    return o.detach().double(), x.grad.double()


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.size(1) != k.size(1)).transpose(1, 2)


@needs_kernel
@pytest.mark.parametrize("shape", [(2, 4, 4, 37, 32), (3, 4, 2, 70, 64), (1, 2, 2, 5, 8), (2, 4, 4, 256, 32),
                                   (1, 2, 1, 129, 128)])  # (batch, heads, kv groups, seq, head dim)
def test_attention_kernel_equals_sdpa_to_float_rounding(shape):
    x, q, _, _ = _qkv(*shape, torch.float32)
    assert attention.uses_kernel(q)
    exact_o, exact_grad = _run(_sdpa, shape, torch.float64)
    sdpa_o, sdpa_grad = _run(_sdpa, shape, torch.float32)
    ours_o, ours_grad = _run(attention.causal, shape, torch.float32)
    assert ours_o.shape == sdpa_o.shape == (shape[0], shape[3], shape[1], shape[4])
    # within 3x float32 SDPA's own error against the float64 result (measured: 0.7-2.2x)
    assert (ours_o - exact_o).abs().max() <= 3 * (sdpa_o - exact_o).abs().max() + 1e-7
    assert (ours_grad - exact_grad).abs().max() <= 3 * (sdpa_grad - exact_grad).abs().max() + 1e-7
    assert not torch.equal(ours_o, sdpa_o)  # it really ran another kernel


@needs_kernel
def test_attention_kernel_bits_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(attention.causal, (2, 4, 4, 100, 32), torch.float32)
        torch.set_num_threads(2)
        two = _run(attention.causal, (2, 4, 4, 100, 32), torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_attention_keeps_sdpa_where_the_kernel_does_not_apply():
    _, q, k, v = _qkv(1, 2, 2, 16, 32, torch.float32)
    long_q = torch.empty(1, 2, attention.MAX_SEQ_X_HEAD_DIM // 32 + 1, 32)
    assert not attention.uses_kernel(long_q)  # long sequences: SDPA's key blocking wins
    assert not attention.uses_kernel(q.bfloat16()) and not attention.uses_kernel(q[..., :12])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not attention.uses_kernel(q)


@needs_kernel
def test_the_library_is_built_once_and_cached(tmp_path):
    lib = cpu_kernels.build(tmp_path)
    mtime = lib.stat().st_mtime_ns
    assert cpu_kernels.build(tmp_path) == lib and lib.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [lib.name]  # no temporary left


def test_without_a_working_compiler_torch_kernels_run(tmp_path, monkeypatch, capsys, reload_kernels):
    monkeypatch.setenv("ECHO_NEMO_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_cpu_ok", lambda: True)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no C compiler"):
        cpu_kernels.build()
    assert cpu_kernels.load() is None
    assert "CPU kernels are not available" in capsys.readouterr().err
    w, x = torch.randn(2304, 768), torch.randn(16, 768)
    assert torch.equal(gemm.linear(x, w), F.linear(x, w))  # BLAS's bits
    _, q, k, v = _qkv(2, 4, 4, 40, 32, torch.float32)
    assert torch.equal(attention.causal(q, k, v), _sdpa(q, k, v))  # SDPA's bits
    cpu_kernels.load.cache_clear()
    monkeypatch.setenv("CC", "false")  # a compiler that fails: nothing half-written is left
    assert cpu_kernels.load() is None
    assert "false failed" in capsys.readouterr().err
    assert not any((tmp_path / "kernels").iterdir())


def test_torch_by_choice_and_a_misspelt_choice_exits_2(monkeypatch, reload_kernels):
    monkeypatch.setenv(env.CPU_KERNELS.name, "torch")
    assert cpu_kernels.load() is None
    cpu_kernels.load.cache_clear()
    monkeypatch.setenv(env.CPU_KERNELS.name, "fast")
    with pytest.raises(UserError, match="ECHO_NEMO_CPU_KERNELS"):
        cpu_kernels.load()
    r = run_cli("config", "recipes/pretrain/debug.yaml", env={env.CPU_KERNELS.name: "fast"}, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "ECHO_NEMO_CPU_KERNELS" in r.stderr and "'fast'" in r.stderr and "echo-nemo" in r.stderr
