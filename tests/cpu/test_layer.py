"""The CPU speed layer is a layer: nothing that runs models imports echo_nemo.cpu, the model
runs without it (torch's operations), and the command start-up installs it explicitly
(kernels for CPU tensors, the thread-share follower between steps)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from echo_nemo import speed

PACKAGE = Path(__file__).resolve().parents[2] / "echo_nemo"


def _imports_cpu(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if any(n == "echo_nemo.cpu" or n.startswith("echo_nemo.cpu.") for n in names):
            return True
    return False


def test_only_the_command_start_up_and_the_study_driver_import_the_cpu_layer():
    importers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "cpu" not in p.relative_to(PACKAGE).parts[:1] and _imports_cpu(p)}
    # cli applies the layer; the study driver writes the share files the follower reads
    assert importers == {"cli.py", "study/run.py"}


def _python(code: str, **env: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "2", **env}, cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_the_model_trains_and_decodes_without_the_cpu_layer():
    out = _python(
        "import sys, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "from rl_helpers import CharTokenizer, debug_model\n"
        "from echo_nemo.distributed import init_distributed\n"
        "from echo_nemo.model.forward import causal_forward\n"
        "from echo_nemo.model.generate import generate\n"
        "init_distributed(tp=1, seed=0)\n"
        "model = debug_model(256, seed=1)\n"
        "tokens = torch.randint(0, 200, (2, 16))\n"
        "causal_forward(model, tokens[:, :-1], tokens[:, 1:], vocab_size=200).mean().backward()\n"
        "out = generate(model, CharTokenizer(), ['hi', 'a longer one'], max_new_tokens=4, greedy=True)\n"
        "assert all(len(c) == 4 for c in out.completion_ids)\n"
        "print(sorted(m for m in sys.modules if m.startswith('echo_nemo.cpu')))\n")
    assert out.strip() == "[]"


def test_start_up_installs_the_kernels_and_the_thread_follower(tmp_path):
    share = tmp_path / "share"
    share.write_text("1")
    out = _python(
        "import torch\n"
        "from echo_nemo import cpu, speed\n"
        "torch.set_num_threads(2)\n"
        "cpu.apply()\n"
        "ops = speed.ops('cpu')\n"
        "print(ops.causal_attention.__module__, ops.linear.__module__, speed.ops('cuda') is speed.NONE)\n"
        "speed.between_steps()\n"
        "print(torch.get_num_threads())\n",
        ECHO_NEMO_THREADS_FILE=str(share))
    assert out.split() == ["echo_nemo.cpu.attention", "echo_nemo.cpu.gemm", "True", "1"]


def test_a_snapshot_installs_the_same_in_another_process():
    saved = speed.snapshot()
    try:
        speed.restore(({}, []))
        assert speed.ops("cpu") is speed.NONE
        speed.restore(saved)
        assert speed.snapshot() == saved
    finally:
        speed.restore(saved)
