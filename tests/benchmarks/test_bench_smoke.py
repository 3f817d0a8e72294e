"""The generation, pretraining and attention benchmarks run end to end in a smoke mode (debug sizes).

They print figures next to a same-run baseline; timings are never asserted here (the figures
in docs/performance.md come from full runs on an idle machine). What is checked: the run exits 0, the
megatron model and its HF copy agree before anything is timed, and every figure printed is
a positive number.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from shared_helpers import needs_cpu_kernels

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                       timeout=600, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _figure(out: str, pattern: str) -> float:
    m = re.search(pattern, out)
    assert m, f"no line matching {pattern!r} in:\n{out}"
    return float(m.group(1).replace(",", ""))


def test_bench_rollout_smoke():
    out = _run("bench_rollout.py", "--scale", "debug", "--batch", "6", "--new-tokens", "8", "--repeats", "1",
               "--threads", "1")
    assert _figure(out, r"logit diff\| megatron vs HF = ([0-9.e+-]+)") < 1e-4
    assert "malloc echo-nemo" in out  # the settings every echo-nemo command applies, by default
    assert re.search(r"kernels (echo-nemo|torch)", out)
    assert _figure(out, r"transformers generate:\s+([0-9.]+) tokens/s") > 0
    assert _figure(out, r"echo-nemo rollout:\s+([0-9.]+) tokens/s") > 0
    assert _figure(out, r"ratio echo-nemo / transformers: ([0-9.]+)x") > 0


def test_bench_pretrain_smoke():
    out = _run("bench_pretrain.py", "--scale", "debug", "--batch", "2", "--seq", "32", "--steps", "1", "--rounds", "1",
               "--threads", "1", "--malloc", "glibc")
    assert "malloc=glibc" in out and re.search(r"kernels=(echo-nemo|torch)", out)
    assert _figure(out, r"ours \(megatron-core GPT\):\s+([0-9,]+) tokens/s") > 0
    assert _figure(out, r"baseline \(HF OlmoForCausalLM\):\s+([0-9,]+) tokens/s") > 0
    assert _figure(out, r"ratio ours / baseline: ([0-9.]+)") > 0


@needs_cpu_kernels()
def test_bench_attention_smoke():
    out = _run("bench_attention.py", "--smoke", "--repeats", "1", "--threads", "1")
    assert _figure(out, r"max \|kernel - sdpa\| ([0-9.e+-]+)") < 1e-4  # compared before anything is timed
    for what in ("fwd", "fwd\\+bwd"):
        assert _figure(out, what + r": kernel\s+([0-9.]+)") > 0
        assert _figure(out, what + r": kernel\s+[0-9.]+ sdpa\s+([0-9.]+)") > 0
        assert _figure(out, what + r": kernel [^\n]*? ratio ([0-9.]+)x") > 0
