"""Our HF export under the transformers NeMo-RL pins (5.5.x), in a separate virtual environment.

NeMo-RL takes any Hugging Face causal LM through its DTensor backend but pins an older
transformers 5.x than ours. This test installs that version into its own venv (cached
under /tmp, keyed by the versions, so reruns take seconds), loads our export there with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and compares token ids and logits with our
megatron model; it also renders a problem as NeMo-RL does with echo-nemo's config fragment
(prompt file, passthrough chat template) and checks that it is echo-nemo's RL prompt.

Building the venv is opt-in: it installs torch (~800 MB unpacked) and took 10.6 min on a
loaded 2-core machine, so the test runs when the venv is already there, or when
``ECHO_NEMO_TEST_NEMO_RL=1`` allows building it; otherwise it skips and says so. It also
skips when the package registry cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_export_hf import TEXT, _make_checkpoint, cli, our_logits  # noqa: E402

from echo_nemo.distributed import run_distributed  # noqa: E402

TRANSFORMERS = "5.5.*"  # NeMo-RL's floor (its range is 5.5-5.8)
TORCH = "2.13.0"  # the local CPU wheel; a newer torch would pull a multi-GB CUDA build
OPT_IN = "ECHO_NEMO_TEST_NEMO_RL"
VENV = Path("/tmp/echo-nemo-venvs") / f"transformers-{TRANSFORMERS.rstrip('.*')}-torch-{TORCH}"
# NeMo-RL 0.6.0's passthrough chat template (nemo_rl/data/chat_templates.py), which
# `policy.tokenizer.chat_template: null` selects, and math_hf_data_processor's rendering of a
# problem through echo-nemo's prompt file (echo_nemo/integrations/nemo_rl_prompt.txt).
LOAD = """
import sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text, prompt_file, question, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(text)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits
tok.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
content = open(prompt_file, encoding="utf-8").read().format(question)
rendered = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                   add_generation_prompt=True, add_special_tokens=False)
torch.save({"ids": ids, "logits": logits, "version": transformers.__version__,
            "class": type(model).__name__, "prompt": rendered,
            "prompt_ids": tok(rendered, add_special_tokens=False)["input_ids"]}, out)
"""
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def _venv_python() -> Path:
    """The cached venv's interpreter; built on first use (skip if the registry is unreachable)."""
    python = VENV / "bin" / "python"
    if (VENV / ".ready").is_file():
        return python
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"no cached venv at {VENV}; set {OPT_IN}=1 to build it (about 10 min cold)")
    probe = VENV.parent / "probe"
    try:  # a quick look at the registry before a long install
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(probe),
                        f"transformers=={TRANSFORMERS}"], check=True, capture_output=True, timeout=90)  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"package registry unreachable, cannot install transformers {TRANSFORMERS}: {e}")
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", f"transformers=={TRANSFORMERS}",
                        "safetensors", f"torch=={TORCH}"], capture_output=True, text=True, timeout=900)  # fmt: skip
    if r.returncode != 0:
        pytest.fail(f"installing transformers {TRANSFORMERS} failed:\n{r.stderr[-3000:]}")
    (VENV / ".ready").write_text(f"built in {time.monotonic() - start:.0f} s\n")
    return python


@pytest.mark.slow
def test_export_loads_with_nemo_rl_transformers(tmp_path) -> None:
    python = _venv_python()
    run = tmp_path / "run"
    run_distributed(_make_checkpoint, 1, str(run))
    hf_dir = tmp_path / "hf"
    r = cli("export", "hf", str(run), str(hf_dir))
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "theirs.pt"
    from echo_nemo.integrations.nemo_rl import PROMPT_FILE

    r = subprocess.run([str(python), "-c", LOAD, str(hf_dir), TEXT, str(PROMPT_FILE), QUESTION, str(out)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = torch.load(out)
    assert theirs["version"].startswith(TRANSFORMERS.rstrip("*"))  # really the pinned version
    assert theirs["class"] == "OlmoForCausalLM"

    from echo_nemo.tokenizer import load_tokenizer

    ids = load_tokenizer().encode(TEXT)
    assert theirs["ids"] == ids
    # the prompt NeMo-RL builds with echo-nemo's config fragment is echo-nemo's RL prompt
    from echo_nemo.data.sources import Problem

    prompt = Problem("q", QUESTION, "7").prompt
    assert theirs["prompt"] == prompt
    assert theirs["prompt_ids"] == load_tokenizer().encode(prompt)
    ours = our_logits(run, ids, tmp_path)
    assert theirs["logits"].shape == ours.shape
    assert ours.std() > 0.1
    assert (theirs["logits"] - ours).abs().max() <= 1e-4
