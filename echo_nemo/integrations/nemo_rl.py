"""A NeMo-RL environment that grades with echo-nemo's reward, and a launcher for NeMo-RL's GRPO.

Written against NeMo-RL 0.6.0 (NVIDIA-NeMo/RL, commit 7ea279abfbeb of 2026-08-22):
- nemo_rl/environments/interfaces.py: ``EnvironmentInterface.step(message_log_batch,
  metadata) -> EnvironmentReturn(observations, metadata, next_stop_strings, rewards,
  terminateds, answers)`` and ``global_post_process_and_metrics(batch) -> (batch, metrics)``;
- nemo_rl/experience/rollouts.py, ``calculate_rewards``: each message log reaches ``step``
  as ``[{"role", "content"}, ...]`` (the user turn holds the whole rendered prompt, the
  assistant turn the decoded generation), metadata is the datum's ``extra_env_info``
  (``{"ground_truth": ...}`` from ``math_hf_data_processor``);
- nemo_rl/environments/utils.py, ``create_env``: the class is looked up by name in
  ``ENV_REGISTRY`` (``register_env``) and its Python executable in
  ``ACTOR_ENVIRONMENT_REGISTRY``, then started as a Ray actor (``.options(...).remote(cfg)``),
  so both registrations must happen in the process that runs ``examples/run_grpo.py``.

NeMo-RL and Ray are imported only by `register` / `main` and the actor class, so this module
and `EchoMathEnvironment` import without them.

    python -m echo_nemo.integrations.nemo_rl --prompt-file    # the prompt file's path
    python -m echo_nemo.integrations.nemo_rl [--grpo-script PATH] -- --config CFG [overrides]
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from echo_nemo.errors import EXIT_BAD_INPUT, UserError
from echo_nemo.reward.adapters import score_responses

ENV_NAME = "echo_math"
ACTOR_FQN = f"{__name__}.EchoMathEnvironmentActor"
# NeMo-RL formats each problem with this file (``prompt.format(problem)``); with a
# passthrough chat template the model sees echo-nemo's RL prompt, question + blank line.
PROMPT_FILE = Path(__file__).with_name("nemo_rl_prompt.txt")
CONFIG_FRAGMENT = Path(__file__).with_name("nemo_rl_grpo.yaml")
CONFIG_KEYS = ("num_workers", "stop_strings")


class EnvironmentReturn(NamedTuple):
    """NeMo-RL's EnvironmentReturn, field for field (used when nemo_rl is not importable)."""

    observations: list[dict[str, str]]
    metadata: list[Any]
    next_stop_strings: list[list[str] | None]
    rewards: torch.Tensor
    terminateds: torch.Tensor
    answers: list[str | None] | None


def _environment_return() -> type:
    try:  # NeMo-RL's own NamedTuple where it is installed
        from nemo_rl.environments.interfaces import EnvironmentReturn as theirs
    except ImportError:
        return EnvironmentReturn
    return theirs


def last_assistant_content(messages: Sequence[dict]) -> str:
    """The text of the last assistant message; None content (a tool call) is empty text."""
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return message.get("content") or ""
    raise UserError(f"a NeMo-RL message log without an assistant message: roles {[m.get('role') for m in messages]}")


class EchoMathEnvironment:
    """NeMo-RL's environment interface, one turn per episode, graded by echo-nemo's ``score()``
    (in this process's sandbox pool, or on a reward server when ``ECHO_NEMO_REWARD_URL`` is set).

    Config (``env.echo_math`` in NeMo-RL's YAML): ``num_workers`` (NeMo-RL's usual key; the
    sandbox pool sizes itself, one worker per CPU, so it is read and not needed) and
    ``stop_strings`` (returned as the next turn's stop strings; default None).
    """

    def __init__(self, cfg: dict | None = None):
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise UserError(f"env.{ENV_NAME}: unknown keys {unknown} (expected some of {list(CONFIG_KEYS)})")
        self.stop_strings = cfg.get("stop_strings")

    def step(self, message_log_batch: list[list[dict]], metadata: list[dict]) -> Any:
        """Grade each log's last assistant message against its metadata's ``ground_truth``.

        rewards[i] = score(last assistant content_i, ground_truth_i).reward in {0, 1};
        every episode terminates (single turn); answers are the extracted answers.
        """
        if len(message_log_batch) != len(metadata):
            raise UserError(f"{len(message_log_batch)} message logs but {len(metadata)} metadata entries")
        missing = [i for i, m in enumerate(metadata) if not isinstance(m, dict) or "ground_truth" not in m]
        if missing:
            raise UserError(f"metadata entries {missing[:5]} have no 'ground_truth' (NeMo-RL's extra_env_info)")
        responses = [last_assistant_content(log) for log in message_log_batch]
        scores = score_responses(responses, [m["ground_truth"] for m in metadata])
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
        verdict = ["Environment: correct" if s.reward == 1 else "Environment: incorrect" for s in scores]
        return _environment_return()(
            observations=[{"role": "environment", "content": v} for v in verdict],
            metadata=[{**m, "extracted_answer": s.answer, "format": s.format} for m, s in zip(metadata, scores)],
            next_stop_strings=[self.stop_strings] * len(scores),
            rewards=rewards,
            terminateds=torch.ones_like(rewards),
            answers=[s.answer for s in scores],
        )

    def global_post_process_and_metrics(self, batch: Any) -> tuple[Any, dict[str, float]]:
        """Metrics over a whole rollout batch (NeMo-RL's BatchedDataDict, read as a mapping).

        accuracy = mean(reward * is_end); pass@samples_per_prompt = share of distinct prompts
        (``batch["text"]``) with at least one rewarded sample; lengths are means in tokens.
        """
        rewards = batch["rewards"].float() * batch["is_end"].float()
        by_prompt: dict[str, float] = defaultdict(float)
        for text, r in zip(batch["text"], rewards.tolist()):
            by_prompt[str(text)] = max(by_prompt[str(text)], r)
        generated = (batch["generation_lengths"] - batch["prompt_lengths"]).float()
        right = rewards == 1
        return batch, {
            "accuracy": rewards.mean().item(),
            "pass@samples_per_prompt": sum(v == 1 for v in by_prompt.values()) / max(len(by_prompt), 1),
            "fraction_of_samples_properly_ended": batch["is_end"].float().mean().item(),
            "num_problems_in_batch": int(batch["is_end"].shape[0]),
            "generation_lengths": batch["generation_lengths"].float().mean().item(),
            "prompt_lengths": batch["prompt_lengths"].float().mean().item(),
            "correct_solution_generation_lengths": generated[right].mean().item() if right.any() else 0.0,
        }

    def shutdown(self) -> None:
        """NeMo-RL's shutdown_environments calls this; the sandbox pool ends with the process."""


_ACTOR: Any = None


def __getattr__(name: str) -> Any:
    """`EchoMathEnvironmentActor`: the Ray actor class NeMo-RL's create_env starts, made on
    first access so that importing this module needs no Ray."""
    global _ACTOR
    if name != "EchoMathEnvironmentActor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _ACTOR is None:
        import ray  # optional: only a NeMo-RL run needs it

        # The options NeMo-RL's MathEnvironment is declared with (restartable, concurrent).
        _ACTOR = ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=1000)(EchoMathEnvironment)
    return _ACTOR


def register(env_name: str = ENV_NAME) -> None:
    """Register the environment with NeMo-RL in this process (idempotent)."""
    try:
        from nemo_rl.distributed.ray_actor_environment_registry import ACTOR_ENVIRONMENT_REGISTRY
        from nemo_rl.distributed.virtual_cluster import PY_EXECUTABLES
        from nemo_rl.environments.utils import ENV_REGISTRY, register_env
    except ImportError as e:
        raise UserError(f"NeMo-RL is not importable here ({e}); run this inside NeMo-RL's environment") from e
    # The environment runs in the driver's own interpreter, which has echo-nemo installed.
    ACTOR_ENVIRONMENT_REGISTRY[ACTOR_FQN] = PY_EXECUTABLES.SYSTEM
    if ENV_REGISTRY.get(env_name, {}).get("actor_class_fqn") != ACTOR_FQN:
        register_env(env_name, ACTOR_FQN)  # raises if the name is taken by another class


def default_grpo_script() -> Path:
    """examples/run_grpo.py of the NeMo-RL source checkout that nemo_rl is imported from."""
    try:
        import nemo_rl
    except ImportError as e:
        raise UserError(f"NeMo-RL is not importable here ({e}); pass --grpo-script or run inside NeMo-RL") from e
    return Path(nemo_rl.__file__).resolve().parents[1] / "examples" / "run_grpo.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m echo_nemo.integrations.nemo_rl",
        description="Register echo-nemo's NeMo-RL environment and run NeMo-RL's GRPO entry point "
        "in this process; arguments after -- go to examples/run_grpo.py.",
    )
    parser.add_argument("--grpo-script", help="NeMo-RL's examples/run_grpo.py (default: next to nemo_rl)")
    parser.add_argument("--env-name", default=ENV_NAME, help=f"name to register (default {ENV_NAME})")
    parser.add_argument("--prompt-file", action="store_true", help="print the prompt file's path and exit")
    parser.add_argument("--config-fragment", action="store_true", help="print the YAML fragment's path and exit")
    args, rest = parser.parse_known_args(argv)
    if args.prompt_file or args.config_fragment:
        print(PROMPT_FILE if args.prompt_file else CONFIG_FRAGMENT)
        return 0
    try:
        script = Path(args.grpo_script) if args.grpo_script else default_grpo_script()
        if not script.is_file():
            raise UserError(f"NeMo-RL's GRPO script not found: {str(script)!r} (expected examples/run_grpo.py)")
        register(args.env_name)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.argv = [str(script), *[a for a in rest if a != "--"]]
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
