"""The peak MFU is measured against: re-read on CPU, best reading kept."""

from __future__ import annotations

from echo_nemo.train import mfu as M


def test_best_peak_reads_the_cpu_again_at_powers_of_two_and_keeps_the_best(monkeypatch) -> None:
    readings = iter([60e9, 150e9, 90e9, 120e9, 200e9])
    windows = []

    def fake_peak(n: int = 512, seconds: float = 0.5, trials: int = 5) -> float:
        windows.append(seconds)
        return next(readings)

    monkeypatch.setattr(M, "cpu_matmul_peak", fake_peak)
    peak = M.BestPeak("cpu")
    assert peak.value == 60e9  # the start-up reading (contended, in this story)
    assert [peak.update() for _ in range(8)] == [150e9] * 7 + [200e9]  # re-read at calls 1, 2, 4, 8
    assert windows == [0.5, 0.1, 0.1, 0.1, 0.1]  # the start-up measurement (0.5 s), then short windows
    assert M.mfu(1000.0, 1e8, peak.value) == 1000.0 * 1e8 / 200e9


def test_best_peak_on_gpu_is_the_datasheet_figure(monkeypatch) -> None:
    monkeypatch.setenv(M.PEAK_ENV, "100")
    def must_not_run(*args, **kwargs):
        raise AssertionError("the CPU was read on a GPU run")

    monkeypatch.setattr(M, "cpu_matmul_peak", must_not_run)
    peak = M.BestPeak("cuda")
    assert [peak.update() for _ in range(4)] == [100e12] * 4
