"""Tokenizers: load the committed echo-lab BPE or any Hugging Face tokenizer directory.

`load_tokenizer(None)` loads tokenizer/ at the repository root (a byte-level BPE trained
on echo-lab text, see tokenizer/CARD.md); `load_tokenizer(path)` loads any folder with a
``tokenizer.json`` (e.g. Llama-2's, as the paper used). EOS is appended per document by
the shard builder, never by `encode`.

`train_tokenizer` builds a byte-level BPE with the `tokenizers` library: digits are
split one by one (as in Llama-2) so that a small model sees arithmetic digit by digit,
and the byte-level alphabet makes ``decode(encode(x)) == x`` for any text.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from echo_nemo.errors import UserError

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "tokenizer"
EOS_TOKEN = "<|endoftext|>"
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")


class EchoTokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` with the ids the trainer needs."""

    def __init__(self, tok, path: str, eos_id: int, pad_id: int | None = None) -> None:  # noqa: ANN001
        self._tok = tok
        self.path = path
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips character offsets, which we never use (about 2x faster).
        fast = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; EOS (and other special tokens) are skipped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json and a transformers-compatible tokenizer_config.json."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        eos = self._tok.id_to_token(self.eos_id)
        pad = self._tok.id_to_token(self.pad_id)
        cfg_path = out / "tokenizer_config.json"
        src_cfg = Path(self.path) / "tokenizer_config.json"
        if src_cfg.is_file() and src_cfg.resolve() != cfg_path.resolve():
            shutil.copyfile(src_cfg, cfg_path)
        elif not cfg_path.is_file():
            cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
                   "bos_token": None, "unk_token": None, "model_max_length": 1_000_000,
                   "clean_up_tokenization_spaces": False}
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        return out

    def __repr__(self) -> str:
        return f"EchoTokenizer(path={self.path!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _token_name(v: object) -> str | None:
    if isinstance(v, dict):  # {"content": "</s>", ...} in some tokenizer_config.json files
        v = v.get("content")
    return v if isinstance(v, str) else None


def load_tokenizer(path: str | os.PathLike | None = None) -> EchoTokenizer:
    """Load the default tokenizer (None) or a folder / tokenizer.json file by path."""
    from tokenizers import Tokenizer

    directory = Path(path) if path is not None else DEFAULT_TOKENIZER_DIR
    file = directory if directory.suffix == ".json" else directory / "tokenizer.json"
    if not file.is_file():
        raise UserError(f"tokenizer not found: {str(file)!r} (expected a folder with tokenizer.json)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:
        raise UserError(f"tokenizer {str(file)!r} could not be read: {e}") from None
    cfg_file = file.parent / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    names = [_token_name(cfg.get("eos_token"))] + list(_EOS_CANDIDATES)
    eos_id = next((tok.token_to_id(n) for n in names if n and tok.token_to_id(n) is not None), None)
    if eos_id is None:
        raise UserError(f"tokenizer {str(file)!r} has no EOS token (looked for {', '.join(_EOS_CANDIDATES)} "
                        "and tokenizer_config.json's eos_token)")
    pad_name = _token_name(cfg.get("pad_token"))
    pad_id = tok.token_to_id(pad_name) if pad_name else None
    return EchoTokenizer(tok, str(file.parent.resolve()), eos_id, pad_id)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike | None = None,
                    min_frequency: int = 2) -> EchoTokenizer:
    """Byte-level BPE over `texts` with one special token, EOS, at id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise UserError(f"vocab_size must be >= 300 (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    result = EchoTokenizer(tok, str(out_dir) if out_dir else "", tok.token_to_id(EOS_TOKEN))
    if out_dir is not None:
        result.save(out_dir)
        result.path = str(Path(out_dir).resolve())
    return result
