"""Hugging Face OLMo export/import: transformers loads our export with no custom code and
gives our logits; importing it back gives our model again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from echo_nemo.distributed import run_distributed
from echo_nemo.export.hf import (
    add_chat_template,
    fuse_qkv,
    hf_to_megatron,
    megatron_to_hf,
    split_qkv,
)
from echo_nemo.model.scales import Scale

REPO = Path(__file__).resolve().parents[2]
TEXT = "Tom has 3 apples and buys 4 more.\n\nHow many apples does he have?"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echo_nemo.cli", *args], capture_output=True, text=True,
        timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _make_checkpoint(run_dir: str) -> None:
    """A debug model trained 3 AdamW steps on random tokens (so no weight is at its init)."""
    from echo_nemo import distributed as D
    from echo_nemo.checkpoint import save_checkpoint
    from echo_nemo.model.build import ModelConfig, build_gpt
    from echo_nemo.model.forward import causal_forward
    from echo_nemo.tokenizer import load_tokenizer

    D.init_distributed(tp=1, seed=3)
    tok = load_tokenizer()
    cfg = ModelConfig(scale="debug", vocab_size=tok.vocab_size, init_std=0.05)
    model = build_gpt(cfg, tok.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = torch.randint(0, tok.vocab_size, (4, 33), generator=g)
        loss = causal_forward(model, batch[:, :-1], batch[:, 1:], vocab_size=tok.vocab_size).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    tok.save(Path(run_dir) / "tokenizer")
    save_checkpoint(run_dir, 3, model, opt, model_config=cfg, tokenizer=Path(run_dir) / "tokenizer")


def _our_logits(ckpt: str, ids: list[int], out: str) -> None:
    from echo_nemo.checkpoint import load_model_for_inference
    from echo_nemo.model.forward import causal_forward

    model, _tok, cfg = load_model_for_inference(ckpt)
    with torch.no_grad():
        logits = causal_forward(model, torch.tensor([ids]), vocab_size=cfg.vocab_size)
    torch.save(logits[..., : cfg.vocab_size].clone(), out)


def our_logits(ckpt: Path, ids: list[int], tmp: Path) -> torch.Tensor:
    out = tmp / f"logits_{ckpt.name}.pt"
    run_distributed(_our_logits, 1, str(ckpt), ids, str(out))
    return torch.load(out)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    run_distributed(_make_checkpoint, 1, str(run))
    return run


def test_export_hf_logits_match_and_import_round_trips(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echo_nemo.tokenizer import load_tokenizer

    hf_dir = tmp_path / "hf"
    r = cli("export", "hf", str(checkpoint), str(hf_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["OlmoForCausalLM"] and config["clip_qkv"] is None
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(hf).__name__ == "OlmoForCausalLM"
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = load_tokenizer().encode(TEXT)
    assert hf_tok(TEXT)["input_ids"] == ids
    user_turn = [{"role": "user", "content": TEXT}]
    assert hf_tok.apply_chat_template(user_turn, tokenize=False, add_generation_prompt=True) == TEXT + "\n\n"

    ours = our_logits(checkpoint, ids, tmp_path)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits
    assert theirs.shape == ours.shape == (1, len(ids), config["vocab_size"])
    assert ours.std() > 0.1  # trained weights, not a flat distribution
    assert (theirs - ours).abs().max() <= 1e-4

    # import the export back: a run dir with checkpoints/step_0 that is our model again
    imported = tmp_path / "imported"
    r = cli("import", "hf", str(hf_dir), str(imported))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (imported / "checkpoints" / "step_0" / "meta.json").is_file()
    again = our_logits(imported, ids, tmp_path)
    assert (again - ours).abs().max() <= 1e-6


def test_export_and_import_bad_input_exit_2(checkpoint, tmp_path):
    r = cli("export", "hf", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    r = cli("export", "hf", str(checkpoint), str(busy))
    assert r.returncode == 2 and "not empty" in r.stderr
    assert (busy / "keep.txt").read_text() == "mine"
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    r = cli("import", "hf", str(llama), str(tmp_path / "imp"))
    assert r.returncode == 2 and "model_type" in r.stderr and "olmo" in r.stderr


def test_export_qkv_and_fc1_layouts_invert_and_place_heads():
    heads, hn, d = 4, 3, 12
    q, k, v = (torch.randn(heads * hn, d) for _ in range(3))
    fused = fuse_qkv(q, k, v, heads, heads)
    # megatron's per-head interleave: head h occupies rows [h*3*hn, (h+1)*3*hn) as q_h, k_h, v_h
    assert torch.equal(fused[3 * hn : 4 * hn], q[hn : 2 * hn])
    assert torch.equal(fused[4 * hn : 5 * hn], k[hn : 2 * hn])
    assert torch.equal(fused[5 * hn : 6 * hn], v[hn : 2 * hn])
    for a, b in zip(split_qkv(fused, heads, heads), (q, k, v)):
        assert torch.equal(a, b)
    # tied-embedding scale (like 1b): the whole state dict round trips, padding rows zero
    scale = Scale("t", d_model=d, layers=2, heads=heads, seq_length=16, tied_embeddings=True)
    hf = {"model.embed_tokens.weight": torch.randn(10, d)}
    for i in range(2):
        p = f"model.layers.{i}."
        hf |= {p + f"self_attn.{n}_proj.weight": torch.randn(d, d) for n in "qkvo"}
        hf |= {p + f"mlp.{n}_proj.weight": torch.randn(4 * d, d) for n in ("gate", "up")}
        hf[p + "mlp.down_proj.weight"] = torch.randn(d, 4 * d)
    meg = hf_to_megatron(hf, scale, padded_vocab=128)
    assert "output_layer.weight" not in meg
    assert meg["embedding.word_embeddings.weight"][10:].abs().sum() == 0
    assert torch.equal(meg["decoder.layers.1.mlp.linear_fc1.weight"][: 4 * d], hf["model.layers.1.mlp.gate_proj.weight"])
    back = megatron_to_hf(meg, scale, vocab_size=10)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def _chat_tokenizer(folder: Path):
    """The project tokenizer saved as the exporter saves it, loaded by transformers."""
    from transformers import AutoTokenizer

    from echo_nemo.tokenizer import load_tokenizer

    load_tokenizer().save(folder)
    add_chat_template(folder / "tokenizer_config.json")
    return AutoTokenizer.from_pretrained(folder)


def test_export_chat_template_renders_echo_nemo_rl_prompts(tmp_path):
    """A chat-formatted user turn becomes exactly the prompt echo-nemo's RL samples from
    (`Problem.prompt`), in text and in token ids, as TRL, OpenRLHF and NeMo-RL render it."""
    from echo_nemo.data.sources import load_problems
    from echo_nemo.tokenizer import load_tokenizer

    tok = _chat_tokenizer(tmp_path / "tok")
    ours = load_tokenizer()
    for problem in load_problems("echolab_test", limit=5):
        turn = [{"role": "user", "content": problem.question}]
        text = tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        assert text == problem.prompt == problem.question + "\n\n"
        ids = tok.apply_chat_template(turn, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert ids == ours.encode(problem.prompt)
        # the generation prompt adds nothing: the blank line already opens the answer
        assert tok.apply_chat_template(turn, tokenize=False) == text


def test_export_chat_template_conversations(tmp_path):
    """Assistant turns end with EOS like pretraining documents; content None (TRL's tool-call
    turns) is empty text, content blocks give their text; each longer conversation renders
    as an extension of the shorter one (NeMo-RL tokenizes message logs from the differences)."""
    tok = _chat_tokenizer(tmp_path / "tok")
    eos = tok.eos_token
    messages = [
        {"role": "system", "content": "Solve it."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "\\boxed{4}"}]},
        {"role": "user", "content": "And 3+3?"},
    ]
    rendered = [tok.apply_chat_template(messages[: i + 1], tokenize=False) for i in range(len(messages))]
    assert rendered[-1] == f"Solve it.\n\nWhat is 2+2?\n\n{eos}4\n\nIt is \\boxed{{4}}{eos}And 3+3?\n\n"
    for shorter, longer in zip(rendered, rendered[1:]):
        assert longer.startswith(shorter)
    assert "None" not in rendered[-1]


def test_export_chat_template_replaces_a_source_template(tmp_path):
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"eos_token": "</s>", "chat_template": "{{ messages[0]['content'] }} [/INST]"}))
    add_chat_template(cfg)
    saved = json.loads(cfg.read_text())
    assert saved["eos_token"] == "</s>" and "[/INST]" not in saved["chat_template"]
