"""Shared fixtures: the real data in ../shared/data and a runner for the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from shared_helpers import SHARED_DATA, run_cli, shared_texts

from echo_nemo import cpu, patches

# what every echo-nemo command does at start-up (echo_nemo.cli), for the model code tests
# run in this process (and in the ranks echo_nemo.distributed.run_distributed starts)
patches.defer_megatron_compile()
cpu.use_kernels()

# The suite runs under pytest-xdist (pyproject's addopts: one worker per core, at most 4).
# Each worker gets its share of the cores as torch threads, inherited by the CLI processes
# it starts: torch on every core next to other CPU load slows down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (CI always has it)."""
    assert SHARED_DATA.is_dir(), f"expected the shared data folder at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer_32k(tmp_path_factory, shared_data) -> Path:
    """A 32,000-token byte-level BPE trained here on ../shared/data, standing in for the
    study's Llama-2 tokenizer (same vocabulary size, EOS `</s>` at id 2). Numbers are not
    split into digits and pairs seen once may merge, so this ~11 MB corpus fills the
    vocabulary (about 10 s on 2 cores; nothing is committed)."""
    from echo_nemo.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer_32k")
    tok = train_tokenizer(shared_texts(shared_data), 32000, out, min_frequency=1,
                          specials=("<unk>", "<s>", "</s>"), eos_token="</s>", split_digits=False)
    assert tok.vocab_size == 32000, tok.vocab_size
    return out


@pytest.fixture
def cli():
    return run_cli


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests cleanly when CUDA is absent. Under xdist, a module's tests stay on
    one worker (its module-scoped runs are made once), the `slurm` tests together (they
    share one session-wide cluster), and modules with `long` or `slow` tests are handed out
    first, so that no worker is left with a long test at the end."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    group = {}
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)
        group[item] = "slurm" if "slurm" in item.keywords else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group[item]))
    first = {group[item] for item in items if "long" in item.keywords or "slow" in item.keywords}
    items.sort(key=lambda item: group[item] not in first)  # stable: file order otherwise
