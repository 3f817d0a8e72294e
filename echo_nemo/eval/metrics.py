"""Pure evaluation metrics: unbiased pass@k and majority vote (per-format statistics:
echo_nemo.reward.format_stats).

No torch, no I/O: every function takes plain Python lists so the math can be tested
against exact enumeration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021).

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that a uniformly random k-subset of the n samples holds at least
    one correct sample. Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which equals
    the ratio of binomials without forming huge integers; it is 1 when n - c < k.
    """
    if not (0 <= c <= n) or k < 1 or k > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The same quantity with exact binomials (slow for large n; used as a check)."""
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent parsed answer; None when no sample has a parsed answer.

    Samples without a parsed answer (None) do not vote. Tie rule: among answers with
    the highest count, the one whose FIRST occurrence comes earliest in `answers`
    wins, so the result is deterministic and does not depend on string order.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    for a in answers:  # first occurrence order breaks ties
        if a is not None and votes[a] == top:
            return a
    raise AssertionError("unreachable")


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """maj@k for one problem: is the majority answer of the first k samples correct?

    `correct[i]` says whether sample i's answer matched the ground truth (the reward
    decided equivalence, e.g. "0.5" and "\\frac{1}{2}"); the majority answer is correct
    when any of the first k samples that gave it was correct. With no parsed answer
    at all, maj@k is False.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers ({len(answers)}) and correct ({len(correct)}) differ in length")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= {len(answers)} samples (got k={k})")
    first_answers, first_correct = answers[:k], correct[:k]
    winner = majority_answer(first_answers)
    if winner is None:
        return False
    return any(ok for a, ok in zip(first_answers, first_correct) if a == winner)
