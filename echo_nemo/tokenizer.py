"""Tokenizers: the committed echo-lab BPE, a local tokenizer folder, or a Hugging Face hub id.

`load_tokenizer(None)` loads tokenizer/ at the repository root (a byte-level BPE trained
on echo-lab text, see tokenizer/CARD.md). `load_tokenizer(x)` accepts

- a folder with ``tokenizer.json`` (any `tokenizers` tokenizer, e.g. a downloaded copy
  of Llama-2's), or the ``tokenizer.json`` file itself;
- a transformers tokenizer folder without ``tokenizer.json`` (e.g. only a SentencePiece
  ``tokenizer.model``): transformers converts it to a fast tokenizer, which is then
  written beside as ``tokenizer.json`` in a cache folder;
- a hub id such as ``meta-llama/Llama-2-7b-hf`` (the study's tokenizer: vocab 32000,
  EOS ``</s>``): its tokenizer files come from the local hub cache or the hub.
  Offline or gated -> UserError naming the id and the local-folder alternative.

EOS is appended per document by the shard builder, never by `encode`.

`train_tokenizer` builds a byte-level BPE with the `tokenizers` library: digits are
split one by one (as in Llama-2) so that a small model sees arithmetic digit by digit,
and the byte-level alphabet makes ``decode(encode(x)) == x`` for any text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from echo_nemo import env
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


_HUB_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_TRANSFORMERS_FILES = ("tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def looks_like_hub_id(name: str) -> bool:
    """'org/name' (one slash, no leading '.', '/' or '~'): how the hub spells a repository."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not name.endswith(".json")


def _hub_folder(repo_id: str) -> Path:
    """The snapshot folder holding `repo_id`'s tokenizer files (the local hub cache first)."""
    from huggingface_hub import hf_hub_download  # a hub id only

    hint = (f"If this machine is offline or the repository is gated (Llama-2 needs its license "
            f"accepted and `huggingface-cli login`), download the tokenizer where you can, e.g. "
            f"`huggingface-cli download {repo_id} tokenizer.json tokenizer_config.json --local-dir DIR`, "
            f"and set `tokenizer: DIR` (a local folder)")
    try:
        path = Path(hf_hub_download(repo_id, "tokenizer.json"))
    except Exception as e:  # offline, gated, unknown repo: the user's to fix
        raise UserError(f"tokenizer {repo_id!r} could not be loaded from the Hugging Face hub or its "
                        f"local cache ({type(e).__name__}: {str(e)[:160]}). {hint}") from None
    for name in _HUB_FILES[1:]:
        try:
            hf_hub_download(repo_id, name)  # same snapshot folder as tokenizer.json
        except Exception:  # optional files
            pass
    return path.parent


def _converted_folder(directory: Path) -> Path:
    """tokenizer.json made by transformers from a slow (e.g. SentencePiece) tokenizer folder,
    cached under $ECHO_NEMO_CACHE (default ~/.cache/echo-nemo) by the folder's path."""
    cache = env.cache_dir()
    out = cache / "tokenizers" / hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    if (out / "tokenizer.json").is_file():
        return out
    try:
        from transformers import AutoTokenizer  # optional, and seconds to import

        fast = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
        backend = fast.backend_tokenizer
    except Exception as e:
        raise UserError(f"tokenizer folder {str(directory)!r} has no tokenizer.json and transformers could "
                        f"not convert it ({type(e).__name__}: {str(e)[:160]})") from None
    out.mkdir(parents=True, exist_ok=True)
    backend.save(str(out / "tokenizer.json"))
    cfg = {"eos_token": fast.eos_token, "pad_token": fast.pad_token, "source": str(directory.resolve())}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def resolve_tokenizer(spec: str | os.PathLike | None) -> Path:
    """The local tokenizer.json that `spec` (None, folder, file or hub id) names."""
    if spec is None:
        return DEFAULT_TOKENIZER_DIR / "tokenizer.json"
    p = Path(spec).expanduser()
    if p.suffix == ".json" or (p / "tokenizer.json").is_file():
        return p if p.suffix == ".json" else p / "tokenizer.json"
    if p.is_dir():
        if any((p / f).is_file() for f in _TRANSFORMERS_FILES + ("tokenizer_config.json",)):
            return _converted_folder(p) / "tokenizer.json"
        raise UserError(f"tokenizer folder {str(p)!r} holds no tokenizer.json (nor a transformers tokenizer: "
                        f"{', '.join(_TRANSFORMERS_FILES)})")
    if isinstance(spec, str) and looks_like_hub_id(spec):
        return _hub_folder(spec) / "tokenizer.json"
    raise UserError(f"tokenizer not found: {str(spec)!r} (expected a folder with tokenizer.json, a "
                    "transformers tokenizer folder, or a Hugging Face hub id such as meta-llama/Llama-2-7b-hf)")


def load_tokenizer(path: str | os.PathLike | None = None) -> EchoTokenizer:
    """Load the default tokenizer (None), a folder / tokenizer.json file, or a hub id."""
    file = resolve_tokenizer(path)
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
                    min_frequency: int = 2, specials: tuple[str, ...] = (EOS_TOKEN,),
                    eos_token: str = EOS_TOKEN, split_digits: bool = True) -> EchoTokenizer:
    """Byte-level BPE over `texts`; `specials` take the first ids (default: EOS alone, id 0).

    Llama-style specials: ``specials=("<unk>", "<s>", "</s>"), eos_token="</s>"``.
    `split_digits=False` lets numbers merge (more distinct words: a small corpus then
    fills a large vocabulary)."""
    if vocab_size < 300:
        raise UserError(f"vocab_size must be >= 300 (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if eos_token not in specials:
        raise UserError(f"eos_token {eos_token!r} is not among the special tokens {specials}")
    result = EchoTokenizer(tok, str(out_dir) if out_dir else "", tok.token_to_id(eos_token))
    if out_dir is not None:
        result.save(out_dir)
        result.path = str(Path(out_dir).resolve())
    return result
