"""The path a user of the study's recipes walks, at the real 150m shape, on CPU:

    data build (a paper mixture pointed at local copies) -> pretrain at TP = 2
    -> export hf (loads in transformers, same logits) -> rl GRPO with the real reward
    server on GSM8K prompts -> eval on GSM8K and MATH-500 -> report

The 150m architecture as the study ran it (d768, 12 layers, 12 heads, untied embeddings,
vocab 32000 from a tokenizer trained here); sequence length and step counts are cut to
fit the suite. Every command's output feeds the next with no fix-up in between.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from echo_nemo.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SEQ = 128


def _ok(r):
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


def test_paper_recipes_end_to_end_at_the_150m_shape(cli, tmp_path, tokenizer_32k, shared_data):
    d = shared_data
    # --- data: the study's five-source mixture, each source pointed at a local stand-in
    sources = (
        f"[{{name: as, path: {d}/gsm8k/train.jsonl, text_field: question, limit: 1500}},"
        f" {{name: fm3, path: {d}/gsm8k/test.jsonl, text_field: answer}},"
        f" {{name: tg, path: {d}/tinygsm_style/ThomasTheMaker_TinyGSM_gpt4.1_samples.json,"
        f" question_field: user, solution_field: assistant}},"
        f" {{name: omi1, path: {d}/openmathinstruct1/openmathinstruct.test}},"
        f" {{name: omi2, path: {d}/openmathinstruct2/openmathinstruct2.test}}]"
    )
    shards = tmp_path / "data"
    _ok(cli("data", "build", "recipes/data/as_fm3_tg_omi1_omi2.yaml", f"tokenizer={tokenizer_32k}",
            f"sources={sources}", f"seq_length={SEQ}", "sequences_per_shard=200", "num_workers=1",
            "--out", shards))
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["vocab_size"] == 32000
    assert {s["name"] for s in manifest["sources"]} == {"as", "fm3", "tg", "omi1", "omi2"}

    # --- pretrain the 150m model at TP = 2 for a few steps (vocabulary from the manifest)
    pre = tmp_path / "pretrain"
    r = _ok(cli("pretrain", "recipes/pretrain/150m.yaml", f"data.shards={shards}", "parallel.tp=2",
                "train.steps=2", "train.global_batch_size=2", "train.micro_batch_size=2",
                "optim.warmup_steps=1", f"model.seq_length={SEQ}", "checkpoint.every=0",
                "checkpoint.log_spaced=0", "--out", pre, nproc=2, timeout=1200))
    assert "150m" in r.stdout and "tp=2 dp=1" in r.stdout
    losses = [row["loss"] for row in read_metrics(pre)]
    assert len(losses) == 2 and all(9.0 < x < 12.0 for x in losses)  # ~ln(32000) = 10.4 at init
    assert json.loads((pre / "checkpoints" / "step_2" / "meta.json").read_text())["model"]["scale"] == "150m"

    # --- export to Hugging Face: transformers loads it and gives our logits
    hf = tmp_path / "hf"
    _ok(cli("export", "hf", pre, hf, timeout=900))
    _ok(python(f"""
import torch
from transformers import AutoModelForCausalLM
from echo_nemo.checkpoint import load_model_for_inference
from echo_nemo.model.forward import causal_forward
ours, tok, cfg = load_model_for_inference({str(pre)!r}, tp=1)
ids = torch.tensor([tok.encode("Natalia sold clips to 48 of her friends.")])
theirs = AutoModelForCausalLM.from_pretrained({str(hf)!r}, torch_dtype=torch.float32).eval()
with torch.no_grad():
    a = causal_forward(ours, ids)[..., :32000]
    b = theirs(ids).logits[..., :32000]
assert type(theirs).__name__ == "OlmoForCausalLM" and theirs.config.vocab_size >= 32000
assert (a - b).abs().max() < 1e-3, float((a - b).abs().max())
"""))

    # --- RL: GRPO on GSM8K prompts, the real reward server started by the run
    rl = tmp_path / "rl"
    _ok(cli("rl", "recipes/rl/grpo_gsm8k_150m.yaml", f"model.init={pre}", "steps=2",
            "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=12",
            f"rollout.max_prompt_tokens={SEQ}", "rollout.batch_size=4", "data.train_limit=8",
            "data.eval_limit=2", "eval_max_new_tokens=12", "num_checkpoints=1", "optim.micro_batch_size=4",
            "reward.workers=1", "--out", rl, timeout=1200))
    rows = read_metrics(rl)
    assert [row["step"] for row in rows] == [0, 1, 2]  # 0: GSM8K eval before any update
    assert "acc/gsm8k/pass@1" in rows[-1] and rows[-1]["kl/mean"] >= 0.0  # KL 0.001: a reference ran
    assert (rl / "checkpoints" / "step_2" / "meta.json").is_file()

    # --- eval the RL checkpoint on GSM8K and MATH-500, then the report over all runs
    ev = tmp_path / "eval"
    _ok(cli("eval", "--checkpoint", rl, "--benchmarks", "gsm8k,math500", "--limit", "2", "--samples", "2",
            "max_new_tokens=12", "--out", ev, timeout=900))
    results = json.loads((ev / "results.json").read_text())
    assert set(results["benchmarks"]) == {"gsm8k", "math500"}
    assert all(b["problems"] == 2 for b in results["benchmarks"].values())
    report = tmp_path / "report"
    _ok(cli("report", pre, rl, ev, "--out", report))
    assert (report / "index.html").is_file()


def python(code: str) -> subprocess.CompletedProcess:
    """A python snippet in a fresh interpreter (the repo as cwd), as the CLI runs."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=REPO)
