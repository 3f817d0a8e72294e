"""Tokenizer: the committed default, exact round trips, training, HF folders by path."""

from __future__ import annotations

import json

from echo_nemo.data.config import EchoLabConfig
from echo_nemo.data.sources import load_documents
from echo_nemo.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer, train_tokenizer

TRICKY = [
    'def simple_math_problem() -> int:\n    """\n    Q?\n    """\n    x = 3\n\ty = x / 2\n    return result',
    r"Thus $\frac{1}{2} \times 4 = 2$ and \boxed{\left( 3, \frac{\pi}{2} \right)}.",
    "  leading spaces, trailing\n\n\n  ",
    "unicode: é, ü, π, 中文, emoji 🙂, tabs\t\tend",
]


def test_default_tokenizer_round_trips_echolab_text():
    tok = load_tokenizer()
    assert tok.vocab_size == 1024 and tok.eos_id == 0 and tok.pad_id == tok.eos_id
    assert tok.path == str(DEFAULT_TOKENIZER_DIR.resolve())
    cfg = EchoLabConfig(num_problems=60, num_background=20, max_steps=5, max_number=99)
    docs = [d for n in ("echo_tg", "echo_omi1", "echo_omi2", "echo_fm3") for d in load_documents(n, cfg)]
    for text in docs + TRICKY:
        ids = tok.encode(text)
        assert tok.eos_id not in ids
        assert tok.decode(ids) == text
    assert tok.encode_batch(docs[:5]) == [tok.encode(d) for d in docs[:5]]
    assert tok.decode(tok.encode("12") + [tok.eos_id]) == "12"  # EOS skipped
    # digits are split one by one (arithmetic stays learnable for a tiny model)
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]
    # compact on its own corpus: well under one token per 3 characters
    assert sum(len(tok.encode(d)) for d in docs) < sum(map(len, docs)) / 2.5


def test_training_is_deterministic_and_saves_a_hf_folder(tmp_path):
    cfg = EchoLabConfig(num_problems=150, num_background=20)
    texts = [d for n in ("echo_tg", "echo_omi2", "echo_fm3") for d in load_documents(n, cfg)]
    a = train_tokenizer(texts, 400, tmp_path / "a")
    train_tokenizer(texts, 400, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert a.vocab_size == 400 and a.decode(a.encode(texts[0])) == texts[0]
    loaded = load_tokenizer(tmp_path / "a")
    assert loaded.encode(texts[1]) == a.encode(texts[1])
    # transformers reads the saved folder as a fast tokenizer with the same ids
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    assert hf.encode(texts[1], add_special_tokens=False) == a.encode(texts[1])
    assert hf.eos_token_id == a.eos_id


def test_foreign_hf_folder_with_sentencepiece_style_eos(tmp_path):
    """A Llama-style folder: EOS named `</s>` in tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    t = load_tokenizer(tmp_path)
    assert (t.eos_id, t.vocab_size, t.encode("hello world")) == (2, 5, [3, 4])
    t.save(tmp_path / "copy")
    assert load_tokenizer(tmp_path / "copy").eos_id == 2


def test_cli_train_and_missing_tokenizer(cli, tmp_path):
    r = cli("tokenizer", "train", "--out", str(tmp_path / "t"), "--vocab-size", "300", "--num-problems", "40")
    assert r.returncode == 0, r.stderr
    assert load_tokenizer(tmp_path / "t").vocab_size == 300
    r = cli("tokenizer", "encode", "hi", "--tokenizer", str(tmp_path / "missing"))
    assert r.returncode == 2 and "tokenizer not found" in r.stderr and "missing" in r.stderr
