"""Helpers for the RL tests: a real character-level tokenizer and a debug model."""

from __future__ import annotations

import string

import torch

ALPHABET = string.ascii_letters + string.digits + " \n.,:;!?+-*/=()<>_'\"#$%[]{}\\"


class CharTokenizer:
    """Character tokenizer with the EchoTokenizer interface (id 0 = EOS = pad).

    Used where a test needs exact control over ids; the full runs use the project's
    tokenizer through echo_nemo.tokenizer.load_tokenizer.
    """

    eos_id = 0
    pad_id = 0
    path = None

    def __init__(self) -> None:
        self.vocab = {c: i + 1 for i, c in enumerate(ALPHABET)}
        self.inverse = {i: c for c, i in self.vocab.items()}
        self.vocab_size = len(self.vocab) + 1

    def encode(self, text: str) -> list[int]:
        return [self.vocab[c] for c in text if c in self.vocab]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.inverse.get(int(i), "") for i in ids if int(i) != self.eos_id)


def debug_model(vocab_size: int, seed: int = 0, scale: str = "debug"):
    """A freshly initialised megatron GPT of the debug scale on the current TP group."""
    from echo_nemo.model.build import ModelConfig, build_gpt

    torch.manual_seed(seed)
    return build_gpt(ModelConfig(scale=scale, vocab_size=vocab_size), vocab_size)


class Prompt:
    """A prompt with its ground truth (the shape of echo_nemo.data.sources.Problem)."""

    def __init__(self, question: str, answer: str, id: str = "") -> None:
        self.id = id or question
        self.question = question
        self.answer = answer

    @property
    def prompt(self) -> str:
        return self.question + "\n\n"


def starts_with_reward(letters: str):
    """A trivially learnable reward: 1 when the completion starts with one of `letters`."""

    def reward_fn(completions: list[str], truths: list[str]) -> list[float]:
        return [1.0 if c[:1] and c[0] in letters else 0.0 for c in completions]

    return reward_fn
