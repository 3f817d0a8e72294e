"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

On GPU the peak is the device's dense bf16 figure from its datasheet; on CPU it is the
fp32 matmul throughput measured at start-up with the threads torch will use.
"""

from __future__ import annotations

import time

import torch

from echo_nemo import env

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA datasheets (SXM parts
# unless named). Matched in order against torch.cuda.get_device_name(): the first key
# found in the name wins, so the more specific names come first.
GPU_BF16_PEAK = {
    "B200": 2250e12,
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}
PEAK_ENV = env.PEAK_TFLOPS.name  # set it for a GPU not listed here (dense bf16 TFLOP/s)


def gpu_peak_flops(name: str | None = None) -> float | None:
    """The bf16 peak of the current (or named) GPU: $ECHO_NEMO_PEAK_TFLOPS when set, else the
    table above; None when unknown (MFU is then reported as nan)."""
    if (peak := env.peak_tflops()) is not None:
        return peak * 1e12
    name = name or (torch.cuda.get_device_name() if torch.cuda.is_available() else "")
    for key, peak in GPU_BF16_PEAK.items():
        if key in name:
            return peak
    return None


def cpu_matmul_peak(n: int = 512, seconds: float = 0.5, trials: int = 5) -> float:
    """Measured fp32 matmul FLOP/s on this CPU: 2 n^3 FLOPs per [n,n] @ [n,n].

    The best of `trials` short windows, so a moment of contention from other processes
    does not pass for the hardware's peak.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):  # warm up the BLAS thread pool
        a @ b
    best = 0.0
    for _ in range(trials):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / trials:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / elapsed)
    return best


def _device_kind(device: str | torch.device | None) -> str:
    """`device`'s type; None: CUDA when available."""
    return torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")


def device_peak_flops(device: str | torch.device | None = None) -> float | None:
    """The peak MFU is measured against: the GPU's bf16 peak on CUDA, the measured fp32
    matmul throughput on CPU. `device` None: CUDA when available."""
    return gpu_peak_flops() if _device_kind(device) == "cuda" else cpu_matmul_peak()


class BestPeak:
    """The peak a run's MFU is measured against: the best reading so far.

    On CPU the matmul throughput is read again (one ~0.1 s window) at the 1st, 2nd, 4th,
    8th, ... call of `update()`: a start-up reading taken while other work held the cores
    would otherwise stand for the whole run (a study's pretraining, started as the data
    builds exited, logged MFU 1.15-1.5 against a reading ~2.5x low). On GPU the
    datasheet figure, fixed.
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.cpu = _device_kind(device) == "cpu"
        self.value = device_peak_flops(device)
        self.calls = 0

    def update(self) -> float | None:
        self.calls += 1
        if self.cpu and self.calls & (self.calls - 1) == 0:
            self.value = max(self.value or 0.0, cpu_matmul_peak(seconds=0.1, trials=1))
        return self.value


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float | None, devices: int = 1) -> float:
    """MFU = tokens/s * training FLOPs per token / (devices * peak FLOP/s)."""
    if not peak_flops:
        return float("nan")
    return tokens_per_s * flops_per_token / (devices * peak_flops)
