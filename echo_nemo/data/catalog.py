"""The named pretraining sources: where each lives and how one of its rows becomes a
document. Recipes name their sources by these keys (data/config.py checks them); the
reading is in sources.py, which also holds the evaluation and prompt sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceInfo:
    """Where a source lives and how a row becomes text."""

    hf_id: str
    config: str | None = None
    split: str = "train"
    question: str | None = None  # documents: question + "\n\n" + solution
    solution: str | None = None
    text: str | None = None  # documents: a single text field
    answer: str | None = None  # problems: ground-truth field, parsed by `parse`
    parse: Callable[[object], str] | None = None
    local: str | None = None  # file under the shared data folder
    keep: Callable[[dict], bool] | None = None  # row filter (e.g. correct solutions only)
    # prompt sets only: a row whose ground truth does not parse is skipped (and counted on
    # stderr) instead of failing the load; evaluation sets keep failing loudly
    skip_unparsed: bool = False


DOCUMENT_SOURCES: dict[str, SourceInfo | None] = {
    "fm3": SourceInfo("HuggingFaceTB/finemath", "finemath-3plus", text="text"),
    "as": SourceInfo("EleutherAI/proof-pile-2", "algebraic-stack", text="text"),
    "tg": SourceInfo("TinyGSM/TinyGSM", question="question", solution="code"),
    "omi1": SourceInfo(
        "nvidia/OpenMathInstruct-1", question="question", solution="generated_solution",
        local="openmathinstruct1/openmathinstruct.test", keep=lambda r: r.get("is_correct", True) is True,
    ),
    "omi2": SourceInfo(
        "nvidia/OpenMathInstruct-2", question="problem", solution="generated_solution",
        local="openmathinstruct2/openmathinstruct2.test",
    ),
    "mmqa": SourceInfo("meta-math/MetaMathQA", question="query", solution="response"),
    # TinyGSM-style questions with GPT-4.1 solutions (the shared sample's origin).
    "tg_gpt41": SourceInfo(
        "ThomasTheMaker/TinyGSM-gpt4.1", question="user", solution="assistant",
        local="tinygsm_style/ThomasTheMaker_TinyGSM_gpt4.1_samples.json",
    ),
    # Echo-lab: generated here, no rows to read (see echolab.py).
    "echo_tg": None,
    "echo_omi1": None,
    "echo_omi2": None,
    "echo_fm3": None,
}
ECHO_FORMATS = {"echo_tg": "tinygsm", "echo_omi1": "llm_code", "echo_omi2": "text"}
