"""Every `ECHO_NEMO_*` environment variable, read here and nowhere else.

| variable                     | default                   | meaning                                                              |
|------------------------------|---------------------------|----------------------------------------------------------------------|
| `ECHO_NEMO_CACHE`            | `~/.cache/echo-nemo`      | folder for built CPU kernels and converted tokenizers                |
| `ECHO_NEMO_CPU_KERNELS`      | `echo-nemo`               | `echo-nemo`: the C kernels on CPU; `torch`: torch's own ops only     |
| `ECHO_NEMO_MALLOC`           | `echo-nemo`               | `echo-nemo`: freed memory stays in the process; `glibc`: glibc's defaults |
| `ECHO_NEMO_THREADS_FILE`     | unset                     | a file holding this run's torch thread count, followed while it runs (set by a study) |
| `ECHO_NEMO_DATA`             | unset                     | folder searched first for evaluation sets given without a path       |
| `ECHO_NEMO_PEAK_TFLOPS`      | unset (the GPU table)     | dense bf16 TFLOP/s of a GPU missing from the MFU table               |
| `ECHO_NEMO_REWARD_WORKERS`   | min(4, CPU count)         | sandbox worker processes of the in-process reward                    |
| `ECHO_NEMO_REWARD_URL`       | unset                     | score on this reward server instead of in process (framework adapters) |
| `ECHO_NEMO_REWARD_TOKENIZER` | unset                     | tokenizer folder whose special tokens the adapters strip             |
| `ECHO_NEMO_SANDBOX_NETNS`    | `1`                       | `0`: sandbox workers keep the network namespace they were started in |
| `ECHO_NEMO_SANDBOX_LAYERS_OFF` | unset                   | tests only: comma list of sandbox layers to leave off (docs/sandbox.md) |

An empty value counts as unset. A value outside what a variable accepts raises
`UserError` naming the variable and what it expects (exit 2 from the CLI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from echo_nemo.errors import UserError


@dataclass(frozen=True)
class Var:
    """One variable: its name, the value used when it is unset, and the values it accepts
    (empty: any)."""

    name: str
    default: str | None = None
    choices: tuple[str, ...] = ()

    def get(self) -> str | None:
        value = os.environ.get(self.name) or self.default
        if self.choices and value not in self.choices:
            raise UserError(f"${self.name} must be one of {', '.join(self.choices)} (or unset), got {value!r}")
        return value


CACHE = Var("ECHO_NEMO_CACHE")
CPU_KERNELS = Var("ECHO_NEMO_CPU_KERNELS", "echo-nemo", ("echo-nemo", "torch"))
MALLOC = Var("ECHO_NEMO_MALLOC", "echo-nemo", ("echo-nemo", "glibc"))
THREADS_FILE = Var("ECHO_NEMO_THREADS_FILE")
DATA = Var("ECHO_NEMO_DATA")
PEAK_TFLOPS = Var("ECHO_NEMO_PEAK_TFLOPS")
REWARD_WORKERS = Var("ECHO_NEMO_REWARD_WORKERS")
REWARD_URL = Var("ECHO_NEMO_REWARD_URL")
REWARD_TOKENIZER = Var("ECHO_NEMO_REWARD_TOKENIZER")
SANDBOX_NETNS = Var("ECHO_NEMO_SANDBOX_NETNS", "1", ("0", "1"))
SANDBOX_LAYERS_OFF = Var("ECHO_NEMO_SANDBOX_LAYERS_OFF")
VARIABLES = (CACHE, CPU_KERNELS, MALLOC, THREADS_FILE, DATA, PEAK_TFLOPS, REWARD_WORKERS, REWARD_URL,
             REWARD_TOKENIZER, SANDBOX_NETNS, SANDBOX_LAYERS_OFF)


def _positive(var: Var, cast: type) -> float | int | None:
    value = var.get()
    if value is None:
        return None
    try:
        number = cast(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise UserError(f"${var.name} must be a positive {cast.__name__} (or unset), got {value!r}")
    return number


def cache_dir() -> Path:
    """$ECHO_NEMO_CACHE, else ~/.cache/echo-nemo."""
    value = CACHE.get()
    return Path(value) if value else Path.home() / ".cache" / "echo-nemo"


def cpu_kernels() -> str:
    """$ECHO_NEMO_CPU_KERNELS: "echo-nemo" (the C kernels where they build) or "torch"."""
    return CPU_KERNELS.get()


def malloc() -> str:
    """$ECHO_NEMO_MALLOC: "echo-nemo" (keep freed memory) or "glibc" (glibc's defaults)."""
    return MALLOC.get()


def threads_file() -> Path | None:
    """$ECHO_NEMO_THREADS_FILE: the file this run's thread count is read from, or None."""
    value = THREADS_FILE.get()
    return Path(value) if value else None


def data_dir() -> Path | None:
    """$ECHO_NEMO_DATA: the first folder to look in for evaluation sets, or None."""
    value = DATA.get()
    return Path(value) if value else None


def peak_tflops() -> float | None:
    """$ECHO_NEMO_PEAK_TFLOPS: a GPU's dense bf16 peak in TFLOP/s, or None."""
    return _positive(PEAK_TFLOPS, float)


def reward_workers() -> int:
    """$ECHO_NEMO_REWARD_WORKERS, else min(4, CPU count)."""
    return _positive(REWARD_WORKERS, int) or min(4, os.cpu_count() or 1)


def reward_url() -> str | None:
    """$ECHO_NEMO_REWARD_URL: the reward server the framework adapters score on, or None."""
    return REWARD_URL.get()


def reward_tokenizer() -> str | None:
    """$ECHO_NEMO_REWARD_TOKENIZER: a tokenizer folder whose special tokens are stripped, or None."""
    return REWARD_TOKENIZER.get()


def sandbox_netns() -> bool:
    """$ECHO_NEMO_SANDBOX_NETNS: False for "0" (no network namespace), True for "1" (the default)."""
    return SANDBOX_NETNS.get() == "1"


def sandbox_layers_off() -> tuple[str, ...]:
    """$ECHO_NEMO_SANDBOX_LAYERS_OFF: the sandbox layers to leave off (tests only), from a
    comma list; the sandbox checks the names."""
    return tuple(x.strip() for x in (SANDBOX_LAYERS_OFF.get() or "").split(",") if x.strip())
