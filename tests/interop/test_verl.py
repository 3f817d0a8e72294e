"""verl's own reward path calls echo-nemo's compute_score over a batch (verl 0.9.1).

verl's config (its ppo_trainer.yaml, composed with Hydra as ``verl.trainer.main_ppo``
does) takes ``reward.custom_reward_function.path/name``; its ``RewardLoopWorker`` loads the
function by path (``verl.trainer.ppo.reward.load_reward_manager`` -> ``load_extern_object``)
into the registered ``naive`` reward manager, whose ``run_single`` decodes each sample's
valid response ids (special tokens skipped) and calls ``compute_score(data_source=...,
solution_str=..., ground_truth=reward_model["ground_truth"], extra_info=...)``; the
manager's ``assemble_rm_scores`` puts each score on its response's last token. The scores
must equal ``score()`` on the decoded responses. The legacy top-level
``custom_reward_function.*`` keys go through verl's ``migrate_legacy_reward_impl``.

Runs where verl is importable: ``bash tests/interop/run_interop.sh verl``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.interop
reward_loop = pytest.importorskip("verl.experimental.reward_loop", reason="verl not installed: bash tests/interop/run_interop.sh verl")

from echo_nemo.reward import adapters  # noqa: E402
from echo_nemo.reward.score import score  # noqa: E402
from echo_nemo.tokenizer import load_tokenizer  # noqa: E402

PROMPT = "Tom has 3 boxes of 14 apples. How many apples does he have?\n\n"
RESPONSES = {
    "tinygsm": "def simple_math_problem() -> int:\n    boxes = 3\n    result = boxes * {v} // 3\n    return result\n",
    "llm_code": "Multiply.\n<llm-code>\nboxes * {v} // 3\n</llm-code>\n<llm-code-output>\n{v}\n</llm-code-output>\nSo \\boxed{{{v}}}.",
    "text": "He has 3 * 14 = {v} apples, so the answer is \\boxed{{{v}}}.",
}
TRUTHS = ("42", "Each box has 14.\n3 * 14 = <<3*14=42>>42\n#### 42", 42)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return load_tokenizer().save(tmp_path_factory.mktemp("tok"))


def verl_config(overrides: list[str]):
    """verl's ppo_trainer config with `overrides`, composed as its Hydra main does."""
    import verl
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def rollout_batch(tokenizer_dir: Path):
    """A DataProto as verl's rollout leaves it: left-padded prompts, right-padded responses
    ending in eos, the attention mask over both, and each row's reward_model.ground_truth."""
    from verl import DataProto

    tok = load_tokenizer(str(tokenizer_dir))
    samples = [(body.format(v=v), truth) for body in RESPONSES.values() for v in (42, 41) for truth in TRUTHS]
    prompt = tok.encode(PROMPT)
    responses = [tok.encode(text) + [tok.eos_id] for text, _ in samples]
    width = max(map(len, responses))
    resp = torch.full((len(samples), width), tok.pad_id)
    resp_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, ids in enumerate(responses):
        resp[i, : len(ids)] = torch.tensor(ids)
        resp_mask[i, : len(ids)] = 1
    prompts = torch.tensor([prompt] * len(samples))
    data = DataProto.from_dict(
        tensors={"prompts": prompts, "responses": resp, "input_ids": torch.cat([prompts, resp], 1),
                 "attention_mask": torch.cat([torch.ones_like(prompts), resp_mask], 1)},
        non_tensors={"data_source": np.array(["openai/gsm8k"] * len(samples), dtype=object),
                     "reward_model": np.array([{"ground_truth": t, "style": "rule"} for _, t in samples], dtype=object),
                     "extra_info": np.array([{"index": i} for i in range(len(samples))], dtype=object)},
    )  # fmt: skip
    return data, samples, [len(r) for r in responses]


def _rewards_through_verl(config, data):
    """verl's RewardLoopWorker.compute_score_batch over `data`, then assemble_rm_scores."""
    worker = reward_loop.RewardLoopWorker(config)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    scores = [o["reward_score"] for o in outputs]
    rm_scores = type(worker.reward_manager).assemble_rm_scores(data, scores)
    return worker, outputs, rm_scores


@pytest.mark.parametrize("keys", ["reward.custom_reward_function", "custom_reward_function"])
def test_naive_reward_manager_calls_compute_score(tokenizer_dir, keys) -> None:
    config = verl_config([f"{keys}.path={adapters.__file__}", f"{keys}.name=compute_score",
                          f"actor_rollout_ref.model.path={tokenizer_dir}"])  # fmt: skip
    if keys == "custom_reward_function":  # the legacy keys, moved as verl's trainer moves them
        config = reward_loop.migrate_legacy_reward_impl(config)
    assert config.reward.custom_reward_function.path == adapters.__file__
    data, samples, lengths = rollout_batch(tokenizer_dir)
    worker, outputs, rm_scores = _rewards_through_verl(config, data)

    assert type(worker.reward_manager).__name__ == "NaiveRewardManager"
    want = [s.reward for s in score([text for text, _ in samples], [truth for _, truth in samples])]
    assert sorted(set(want)) == [0.0, 1.0]
    assert [o["reward_score"] for o in outputs] == want
    assert [o["reward_extra_info"]["acc"] for o in outputs] == want
    assert rm_scores.sum(1).tolist() == want
    last = torch.tensor(lengths) - 1
    assert rm_scores[torch.arange(len(want)), last].tolist() == want  # on each response's last token
