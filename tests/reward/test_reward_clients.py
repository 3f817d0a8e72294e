"""Replays of each RL framework's exact reward call, against the real server or the adapter file.

The call shapes are read from the frameworks' current source; tests/interop/ also runs
OpenRLHF's, verl's and TRL's own code against these adapters where they are installed:
- OpenRLHF, openrlhf/utils/agent.py, SingleTurnAgentExecutor: ``query =
  hf_tokenizer.decode(prompt_ids + action_ids, skip_special_tokens=False)``; over HTTP
  (`_fetch_rewards_via_http`) one aiohttp POST per sample of ``{"query": [query],
  "prompts": [prompt], "labels": [label]}``, 180 s timeout, 5 tries, reading
  ``rewards``/``scores``/``extra_logs``; with a ``.py`` reward URL it loads the file with
  ``importlib.util.spec_from_file_location("reward_func", path)`` and calls
  ``reward_func([query], [prompt], [label])`` through ``asyncio.to_thread``
  (`_fetch_rewards_via_func`). The batched form (the study's fork, remote_rm_utils.py)
  posts whole lists and reads ``response["rewards"]``.
- verl, verl/experimental/reward_loop/reward_manager/naive.py (0.9): ``compute_score(data_source=...,
  solution_str=..., ground_truth=..., extra_info=...)`` per sample, the function loaded
  from ``reward.custom_reward_function.path`` by file location; a dict result's "score" is used.
- TRL, trl/trainer/grpo_trainer.py, ``_calculate_rewards``: ``reward_func(prompts=...,
  completions=..., completion_ids=..., **columns, trainer_state=...)`` where columns are
  the dataset's other columns as lists; conversational completions are lists of
  ``{"role": "assistant", "content": ...}``.
- slime, slime/rollout/rm_hub/__init__.py, ``remote_rm``: POST ``{"prompt":
  sample.prompt, "response": sample.response, "label": sample.label}`` to ``--rm-url``;
  the JSON reply is the reward as it is. The label is the dataset column named by
  ``--label-key``; without that flag it is null.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from echo_nemo.reward import adapters
from echo_nemo.reward.client import local_reward_server

REPO = Path(__file__).resolve().parents[2]
PROMPT = "Tom has 3 boxes of 14 apples. How many apples does he have?\n\n"
# The study's three formats, right (42) and wrong (41).
FORMATS = {
    "tinygsm": "def simple_math_problem() -> int:\n    boxes = 3\n    result = boxes * {v} // 3\n    return result\n",
    "llm_code": "Multiply.\n<llm-code>\nboxes = 3\nboxes * {v} // 3\n</llm-code>\n<llm-code-output>\n{v}\n</llm-code-output>\nSo \\boxed{{{v}}}.",
    "text": "He has 3 * 14 = {v} apples, so the answer is \\boxed{{{v}}}.",
}
# A prompt whose own few-shot text holds code with the right answer: never to be graded.
CODE_PROMPT = "Example:\ndef simple_math_problem():\n    return 42\n\nNow: Tom has 3 boxes of 14 apples. How many?\n\n"


def _cases() -> list[tuple[str, str, float]]:
    return [(fmt, body.format(v=v), 1.0 if v == 42 else 0.0) for fmt, body in FORMATS.items() for v in (42, 41)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The project's tokenizer with eos '<|custom_eos|>' (not a common literal) and bos '<s>'."""
    out = tmp_path_factory.mktemp("tok")
    shutil.copy(REPO / "tokenizer" / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|custom_eos|>", '
        '"pad_token": "<|custom_pad|>", "bos_token": "<s>", "unk_token": null}'
    )
    return out


@pytest.fixture(scope="module")
def hf_tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def url(tokenizer_dir):
    with local_reward_server(workers=2, extra_args=("--tokenizer", str(tokenizer_dir))) as url:
        yield url


def openrlhf_query(tok, prompt: str, response: str, *, bos: bool = False, pads: int = 0) -> str:
    """What OpenRLHF posts: decode(prompt ids + response ids + eos [+ pads]), specials kept."""
    ids = ([tok.bos_token_id] if bos else []) + tok(prompt, add_special_tokens=False)["input_ids"]
    ids += tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids += [tok.pad_token_id] * pads
    return tok.decode(ids, skip_special_tokens=False)


def post_one(url: str, query: str, prompt: str, label) -> dict:
    """OpenRLHF's `_fetch_rewards_via_http` for one sample (httpx in place of aiohttp)."""
    r = httpx.post(url + "/get_reward", json={"query": [query], "prompts": [prompt], "labels": [label]}, timeout=180)
    r.raise_for_status()
    return r.json()


def test_openrlhf_single_item_eos_suffixed_requests(url, hf_tok) -> None:
    for fmt, response, want in _cases():
        query = openrlhf_query(hf_tok, PROMPT, response)
        assert query.endswith("<|custom_eos|>")  # the tokenizer's own eos, removed via --tokenizer
        body = post_one(url, query, PROMPT, "42")
        assert body["rewards"] == [want] and body["scores"] == [want], (fmt, body)
        assert body["extra_logs"][f"format_{fmt}"] == [1.0]
        assert body["extra_logs"]["response_prefix"] == [1.0]


def test_openrlhf_numeric_label_leading_bos_and_trailing_pad(url, hf_tok) -> None:
    for fmt, response, want in _cases():
        for label in (42, 42.0, "#### 42"):
            query = openrlhf_query(hf_tok, PROMPT, response, bos=True, pads=3)
            assert query.startswith("<s>") and query.endswith("<|custom_pad|>" * 3)
            body = post_one(url, query, PROMPT, label)
            assert body["rewards"] == [want], (fmt, label, body)
            assert body["extra_logs"]["response_not_found"] == [0.0]


def test_openrlhf_batched_form_and_common_literals(url) -> None:
    """The study's fork posts whole lists; queries carry common literals (</s>, <pad>, ...)."""
    cases = _cases()
    queries = ["<s>" + PROMPT + resp + "</s>" + "<pad>" * i for i, (_, resp, _) in enumerate(cases)]
    r = httpx.post(url + "/get_reward", json={"query": queries, "prompts": [PROMPT] * len(cases),
                                              "labels": [42] * len(cases)}, timeout=180)  # fmt: skip
    assert r.status_code == 200
    assert r.json()["rewards"] == [want for _, _, want in cases]


def test_prompt_text_is_never_graded(url) -> None:
    wrong = FORMATS["text"].format(v=41)
    right = FORMATS["text"].format(v=42)
    # the prompt (with code returning 42) not a prefix: pad text in front, re-spaced, truncated
    variants = {
        "prompt_inside": "[PAD][PAD]" + CODE_PROMPT,
        "whitespace": CODE_PROMPT.replace("\n\n", "\n \n"),
        "prompt_end": CODE_PROMPT[len(CODE_PROMPT) // 2 :],  # left-truncated, as OpenRLHF does
    }
    for how, shown in variants.items():
        for response, want in ((wrong, 0.0), (right, 1.0), ("", 0.0)):
            body = post_one(url, shown + response + "</s>", CODE_PROMPT, 42)
            assert body["rewards"] == [want], (how, response, body)
            assert body["extra_logs"][f"response_{how}"] == [1.0], (how, body["extra_logs"])
    body = post_one(url, "an unrelated query\ndef simple_math_problem():\n    return 42\n", CODE_PROMPT, 42)
    assert body["rewards"] == [0.0] and body["extra_logs"]["response_not_found"] == [1.0]


def _load_by_path(name: str):
    """How OpenRLHF and verl load a reward file: by its path, as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, adapters.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openrlhf_reward_file(hf_tok, tokenizer_dir, monkeypatch) -> None:
    monkeypatch.setenv(adapters.TOKENIZER_ENV, str(tokenizer_dir))
    reward_func = _load_by_path("reward_func").reward_func
    cases = _cases()

    async def replay():  # `_fetch_rewards_via_func`: one thread per sample, all at once
        return await asyncio.gather(*(
            asyncio.to_thread(reward_func, [openrlhf_query(hf_tok, PROMPT, resp, bos=True)], [PROMPT], [label])
            for _, resp, _ in cases for label in ("42", 42)
        ))  # fmt: skip

    infos = asyncio.run(replay())
    want = [w for _, _, w in cases for _ in range(2)]
    assert [float(i["rewards"][0]) for i in infos] == want
    assert all(isinstance(i["rewards"], torch.Tensor) and i["rewards"].shape == (1,) for i in infos)
    assert float(infos[0]["extra_logs"]["format_tinygsm"][0]) == 1.0
    assert all(float(i["extra_logs"]["response_prefix"][0]) == 1.0 for i in infos)
    # keyword arguments a caller adds are accepted
    query = openrlhf_query(hf_tok, PROMPT, FORMATS["text"].format(v=42))
    assert float(reward_func([query], [PROMPT], ["42"], step=3, metadata=None)["rewards"][0]) == 1.0


def test_verl_compute_score() -> None:
    compute_score = _load_by_path("custom_module").compute_score
    gsm8k_answer = "Each box has 14.\n3 * 14 = <<3*14=42>>42\n#### 42"
    for fmt, response, want in _cases():
        for truth in ("42", gsm8k_answer, 42):
            got = compute_score(data_source="openai/gsm8k", solution_str=response + "<|endoftext|>",
                                ground_truth=truth, extra_info={"split": "test", "index": 7})  # fmt: skip
            assert got == want, (fmt, truth)


def test_trl_reward_function_plain_and_conversational() -> None:
    cases = _cases()
    prompts = [PROMPT] * len(cases)
    completions = [resp for _, resp, _ in cases]
    want = [w for _, _, w in cases]
    got = adapters.trl_reward(prompts=prompts, completions=completions, completion_ids=[[1]] * len(cases),
                              answer=["#### 42"] * len(cases), trainer_state=None)  # fmt: skip
    assert got == want
    conv_prompts = [[{"role": "user", "content": PROMPT}]] * len(cases)
    conv = [[{"role": "assistant", "content": c}] for c in completions]
    fn = adapters.make_trl_reward("ground_truth")
    assert fn(prompts=conv_prompts, completions=conv, ground_truth=[42] * len(cases), trainer_state=None) == want
    with pytest.raises(KeyError, match="ground_truth"):
        fn(prompts=prompts, completions=completions, answer=["42"] * len(cases))


def test_slime_remote_rm_request(url) -> None:
    for fmt, response, want in _cases():
        for prompt in (PROMPT, [{"role": "user", "content": PROMPT}]):
            r = httpx.post(url + "/reward", json={"prompt": prompt, "response": response + "<|custom_eos|>",
                                                 "label": "42"}, timeout=120)  # fmt: skip
            r.raise_for_status()
            assert r.json() == want, (fmt, prompt)
    # slime without --label-key posts "label": null: the reply is a 0, not a failed request
    right = FORMATS["text"].format(v=42)
    r = httpx.post(url + "/reward", json={"prompt": PROMPT, "response": right, "label": None}, timeout=120)
    assert r.status_code == 200 and r.json() == 0.0
    bad = httpx.post(url + "/reward", json={"prompt": PROMPT, "label": "42"})
    assert bad.status_code == 422 and "response" in bad.json()["detail"]


def test_tokenizer_option_bad_folder_exits_2(cli, tmp_path) -> None:
    r = cli("reward", "serve", "--tokenizer", str(tmp_path / "nope"), timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
