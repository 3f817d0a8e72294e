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


# ----------------------------------------------------------------------------- the study's tokenizer
def test_32k_test_tokenizer_round_trips_the_shared_data(tokenizer_32k, shared_data):
    from shared_helpers import shared_texts

    tok = load_tokenizer(tokenizer_32k)
    assert (tok.vocab_size, tok.eos_id, tok.token_to_id("<s>")) == (32000, 2, 1)
    texts = shared_texts(shared_data)[::97] + TRICKY
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text and tok.eos_id not in ids
        assert max(ids) < 32000
    # a large vocabulary is compact on its own corpus: ~4+ characters per token
    sample = texts[:40]
    assert sum(map(len, sample)) / sum(len(tok.encode(t)) for t in sample) > 3.5


def _fake_hub_cache(cache, repo_id: str, folder) -> None:
    """A huggingface_hub cache holding `folder`'s files as `repo_id` (a model repo)."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copyfile(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)


def test_tokenizer_by_hub_id_from_the_cache_or_exit_2_naming_the_local_alternative(tokenizer_32k, tmp_path, cli):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    r = cli("tokenizer", "encode", "hello 12", "--tokenizer", "meta-llama/Llama-2-7b-hf", env=env)
    assert r.returncode == 2 and "meta-llama/Llama-2-7b-hf" in r.stderr and "local folder" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # the same id resolves offline once the hub cache holds it (what `huggingface-cli download` leaves)
    _fake_hub_cache(tmp_path / "hf" / "hub", "meta-llama/Llama-2-7b-hf", tokenizer_32k)
    r = cli("tokenizer", "encode", "hello 12", "--tokenizer", "meta-llama/Llama-2-7b-hf", env=env)
    assert r.returncode == 0, r.stderr
    assert str(load_tokenizer(tokenizer_32k).encode("hello 12")) in r.stdout


def test_transformers_folder_without_tokenizer_json_is_converted(tmp_path, monkeypatch):
    """A slow-tokenizer folder (GPT-2 style vocab.json + merges.txt): transformers converts it."""
    from transformers import GPT2Tokenizer

    src = load_tokenizer()
    vocab = src._tok.get_vocab()
    model = json.loads(src._tok.to_str())["model"]
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), eos_token="<|endoftext|>").save_pretrained(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    monkeypatch.setenv("ECHO_NEMO_CACHE", str(tmp_path / "cache"))
    tok = load_tokenizer(folder)
    assert tok.vocab_size == src.vocab_size and tok.eos_id == src.eos_id
    text = "Tom has 3 apples and buys 12 more."
    assert tok.decode(tok.encode(text)) == text


def test_shards_record_the_tokenizer_and_pretrain_refuses_a_vocab_mismatch(tokenizer_32k, tmp_path, cli):
    import shutil

    from echo_nemo.config import load_recipe
    from echo_nemo.data.build import build_shards
    from echo_nemo.data.config import DataRecipe

    recipe = load_recipe(DataRecipe, "recipes/data/echo_tg_omi1_omi2.yaml",
                         ["echolab.num_problems=60", "echolab.num_background=0", "seq_length=64",
                          f"tokenizer={tokenizer_32k}", "num_workers=1"])
    out = tmp_path / "shards"
    m = build_shards(recipe, out, log=lambda *a: None)
    assert (m["vocab_size"], m["eos_id"], m["dtype"]) == (32000, 2, "uint16")
    assert m["tokenizer"] == str(tokenizer_32k.resolve()) and (out / "tokenizer" / "tokenizer.json").is_file()
    base = ["pretrain", "recipes/pretrain/debug.yaml", f"data.shards={out}", "train.steps=1"]
    r = cli(*base, "model.vocab_size=1024", f"run_dir={tmp_path / 'r1'}", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "model.vocab_size=1024" in r.stderr and "32000" in r.stderr, r.stderr[-2000:]
    # shards whose tokenizer was swapped for another one (1024 tokens): refused, nothing trained
    shutil.copyfile(load_tokenizer().path + "/tokenizer.json", out / "tokenizer" / "tokenizer.json")
    r = cli(*base, f"run_dir={tmp_path / 'r2'}", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "1024" in r.stderr and "32000" in r.stderr and "data build" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "r2" / "checkpoints").exists() or not any((tmp_path / "r2" / "checkpoints").iterdir())
