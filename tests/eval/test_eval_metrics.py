"""The pure metrics against exact enumeration and hand-built cases."""

from __future__ import annotations

import itertools
import random

import pytest

from echo_nemo.eval.metrics import (
    maj_at_k,
    majority_answer,
    pass_at_k,
    pass_at_k_exact,
)
from echo_nemo.reward.format_stats import dominant_format, format_metrics, format_stats
from echo_nemo.reward.formats import FORMATS


def enumerate_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = enumerate_pass_at_k(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
            assert pass_at_k_exact(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_monotone():
    # n=64 as in the study: exact binomials agree with the product form
    for c in (0, 1, 7, 32, 63, 64):
        values = [pass_at_k(64, c, k) for k in range(1, 65)]
        assert values == sorted(values)
        for k in (1, 8, 64):
            assert pass_at_k(64, c, k) == pytest.approx(pass_at_k_exact(64, c, k), abs=1e-12)
    assert pass_at_k(64, 16, 1) == pytest.approx(16 / 64)


def test_pass_at_k_rejects_impossible_inputs():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


def test_majority_answer_counts_and_ignores_unparsed():
    assert majority_answer(["3", None, "5", "5", None, None]) == "5"
    assert majority_answer([None, None]) is None
    assert majority_answer([]) is None


def test_majority_answer_tie_goes_to_first_occurrence():
    assert majority_answer(["7", "2", "2", "7"]) == "7"
    assert majority_answer(["2", "7", "7", "2"]) == "2"
    assert majority_answer([None, "b", "a", "a", "b"]) == "b"


def test_maj_at_k_uses_first_k_and_correctness():
    answers = ["4", "5", "5", "4", "4"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, 3) is False  # 5 wins among the first three
    assert maj_at_k(answers, correct, 5) is True  # 4 wins with three votes
    assert maj_at_k(answers, correct, 4) is True  # 2-2 tie, "4" occurred first
    assert maj_at_k([None, None], [False, False], 2) is False
    with pytest.raises(ValueError):
        maj_at_k(answers, correct, 6)


def test_maj_at_k_random_against_bruteforce():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        correct = [a == "2" for a in answers]
        k = rng.randint(1, n)
        votes = {a: answers[:k].count(a) for a in answers[:k] if a is not None}
        if not votes:
            expected = False
        else:
            top = max(votes.values())
            first = next(a for a in answers[:k] if a is not None and votes[a] == top)
            expected = first == "2"
        assert maj_at_k(answers, correct, k) is expected


def test_format_stats_on_fixed_completions():
    formats = ["tinygsm", "text", "llm_code", "text", "tinygsm", "weird", "other", "text"]
    correct = [True, False, True, True, False, False, False, False]
    s = format_stats(formats, correct)
    assert set(s) == set(FORMATS)
    assert s["tinygsm"] == {"count": 2, "share": 2 / 8, "acc": 0.5}
    assert s["text"] == {"count": 3, "share": 3 / 8, "acc": 1 / 3}
    assert s["llm_code"] == {"count": 1, "share": 1 / 8, "acc": 1.0}
    assert s["other"] == {"count": 2, "share": 2 / 8, "acc": 0.0}  # unknown name -> other
    assert sum(v["share"] for v in s.values()) == pytest.approx(1.0)

    m = format_metrics("", ["text", "text"], [True, False])
    assert m["format/text/share"] == 1.0 and m["format/text/acc"] == 0.5
    assert m["format/tinygsm/share"] == 0.0 and "format/tinygsm/acc" not in m
    assert format_stats([], [])["text"] == {"count": 0, "share": 0.0, "acc": None}


def test_dominant_format():
    assert dominant_format({"text": 0.2, "llm_code": 0.7, "tinygsm": 0.1}) == ("llm_code", 0.7)
    assert dominant_format({"text": 0.5, "tinygsm": 0.5})[0] == "tinygsm"
