"""A generation engine for OpenRLHF's agent executors, backed by a Hugging Face causal LM such
as echo-nemo's ``echo-nemo export hf`` folder (CPU or GPU, no vLLM).

OpenRLHF 0.11.2's ``SingleTurnAgentExecutor.execute`` (openrlhf/utils/agent.py) awaits
``llm_engine.generate(prompt_token_ids, sampling_params, multi_modal_data=None)`` and reads
vLLM's ``RequestOutput`` shape from the result: ``outputs[0].token_ids``, ``.text``,
``.finish_reason`` ("length" marks truncation) and, when ``sampling_params.logprobs`` is
set, ``.logprobs`` (one ``{token_id: object with .logprob}`` per generated token). The
executor deep-copies ``sampling_params`` and sets ``max_tokens`` when it is None.

transformers and torch are imported when an engine is made, not with this module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_nemo.errors import require_dir


@dataclass
class SamplingParams:
    """The fields of vLLM's SamplingParams that the executor and this engine read.
    temperature 0 is greedy decoding; logprobs None returns none (as vLLM)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = None
    logprobs: int | None = None
    seed: int | None = None


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    """vLLM's CompletionOutput: generated ids (the eos included when it ended the text),
    their text without special tokens, and why generation stopped ("stop" or "length")."""

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[dict[int, Logprob]] | None = None
    index: int = 0


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class HFGenerationEngine:
    """``await engine.generate(prompt_token_ids, params)`` -> RequestOutput, one sequence
    per call, run in a worker thread so concurrent executor calls do not block the loop."""

    def __init__(self, model_dir: str | Path, *, device: str = "cpu"):
        import torch  # with transformers: a generation engine's own dependencies
        from transformers import AutoModelForCausalLM, AutoTokenizer

        require_dir(str(model_dir), "Hugging Face model folder")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        self.device = device
        self.eos_id = self.tokenizer.eos_token_id

    async def generate(self, prompt_token_ids: list[int], sampling_params: Any, multi_modal_data: Any = None,
                       **_: Any) -> RequestOutput:  # fmt: skip
        if multi_modal_data:
            raise ValueError("HFGenerationEngine generates text only; got multi_modal_data")
        return await asyncio.to_thread(self._generate, list(prompt_token_ids), sampling_params)

    def _generate(self, prompt: list[int], params: Any) -> RequestOutput:
        """Sample up to max_tokens ids after `prompt`, stopping at eos (kept, as vLLM does)."""
        import torch

        max_tokens = params.max_tokens
        if not max_tokens or max_tokens < 1:
            raise ValueError(f"sampling_params.max_tokens must be a positive int, got {max_tokens!r}")
        temperature = float(getattr(params, "temperature", 1.0))
        seed = getattr(params, "seed", None)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        ids = torch.tensor([prompt], device=self.device)
        out: list[int] = []
        logprobs: list[dict[int, Logprob]] = []
        past = None
        with torch.inference_mode():
            for _ in range(max_tokens):
                step = self.model(ids if past is None else ids[:, -1:], past_key_values=past, use_cache=True)
                past = step.past_key_values
                logp = torch.log_softmax(step.logits[0, -1].float(), dim=-1)
                token = self._pick(logp, temperature, params, gen)
                out.append(token)
                logprobs.append({token: Logprob(logp[token].item())})
                ids = torch.cat([ids, torch.tensor([[token]], device=self.device)], dim=1)
                if token == self.eos_id:
                    break
        finish = "stop" if out and out[-1] == self.eos_id else "length"
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        wants_logprobs = getattr(params, "logprobs", None) is not None
        return RequestOutput(prompt, [CompletionOutput(out, text, finish, logprobs if wants_logprobs else None)])

    @staticmethod
    def _pick(logp: Any, temperature: float, params: Any, gen: Any) -> int:
        """Greedy at temperature 0; else a sample from softmax(logits / T) restricted to the
        top_k ids (k > 0) and the smallest set whose probability reaches top_p."""
        import torch

        if temperature == 0:
            return int(logp.argmax())
        probs = torch.softmax(logp / temperature, dim=-1)
        top_k = int(getattr(params, "top_k", 0) or 0)
        if top_k > 0:
            probs[probs < probs.topk(top_k).values[-1]] = 0
        top_p = float(getattr(params, "top_p", 1.0))
        if top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            drop = sorted_p.cumsum(0) - sorted_p >= top_p
            probs[order[drop]] = 0
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
