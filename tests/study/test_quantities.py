"""The per-run quantities the pre-registered expectations name, on hand-made run records."""

from __future__ import annotations

import pytest

from echo_nemo.study import quantities as Q


def _results(greedy: dict[str, float], sampled: dict[str, float] | None = None, acc: float = 0.5) -> dict:
    def stats(sh):
        return {f: {"share": sh.get(f, 0.0), "count": 0, "acc": None} for f in ("tinygsm", "llm_code", "text", "other")}
    return {"benchmarks": {"echolab": {"pass@1": acc, "greedy_formats": stats(greedy), "formats": stats(sampled or greedy)}}}


BEFORE = _results({"tinygsm": 0.3, "llm_code": 0.3, "text": 0.3, "other": 0.1}, acc=0.4)
AFTER = _results({"tinygsm": 0.05, "llm_code": 0.1, "text": 0.8, "other": 0.05},
                 {"tinygsm": 0.2, "llm_code": 0.5, "text": 0.3}, acc=0.7)


def test_before_after_quantities():
    assert Q.share_change(BEFORE, AFTER, "echolab", "text") == pytest.approx(0.5)
    assert Q.share_change(BEFORE, AFTER, "echolab", "text", mode="sampled") == pytest.approx(0.0)
    assert Q.top_share_final(AFTER, "echolab") == 0.8
    assert Q.top_share_change(BEFORE, AFTER, "echolab") == pytest.approx(0.5)
    assert Q.minority_share_final(AFTER, "echolab") == pytest.approx(0.15)  # `other` not counted
    assert Q.wins(AFTER, "echolab", "text") == 1.0 and Q.wins(AFTER, "echolab", "llm_code", "sampled") == 1.0
    assert Q.acc_change(BEFORE, AFTER, "echolab") == pytest.approx(0.3) and Q.acc_final(AFTER, "echolab") == 0.7


def _rows(path: list[tuple[int, float, float]]) -> list[dict]:
    """(step, text share, accuracy) rows of greedy held-out evals during RL."""
    return [{"step": s, "eval/format/text/share": t, "eval/format/llm_code/share": 1 - t, "acc/echolab/pass@1": a}
            for s, t, a in path]


def test_collapse_epoch_and_the_two_sided_window():
    # 16 prompts a step over a 160-prompt set: 10 steps an epoch
    rows = _rows([(0, 0.3, 0.2), (5, 0.4, 0.25), (10, 0.6, 0.3), (15, 0.92, 0.6), (20, 0.95, 0.62), (25, 0.97, 0.63)])
    assert Q.collapse_epoch(rows, 16, 160) == pytest.approx(1.5)
    assert Q.collapse_window(rows) == (10, 15)
    assert Q.gain_window_distance(rows, "echolab", 16, 160) == 0.0  # the gain (10 -> 15) is inside
    early = _rows([(0, 0.3, 0.2), (5, 0.4, 0.6), (10, 0.6, 0.62), (15, 0.92, 0.63), (20, 0.95, 0.64)])
    assert Q.gain_window_distance(early, "echolab", 16, 160) == pytest.approx(0.5)  # 5 steps before the window
    late = _rows([(0, 0.3, 0.2), (5, 0.6, 0.25), (10, 0.95, 0.3), (15, 0.96, 0.3), (25, 0.97, 0.7)])
    assert Q.gain_window_distance(late, "echolab", 16, 160) == pytest.approx(1.5)  # 15 steps after it
    never = _rows([(0, 0.3, 0.2), (10, 0.5, 0.4), (20, 0.6, 0.5)])
    assert Q.collapse_epoch(never, 16, 160) == pytest.approx(3.0)  # its 2 epochs + 1
    assert Q.gain_window_distance(never, "echolab", 16, 160) is None and Q.collapse_epoch([], 16, 160) is None
    with pytest.raises(ValueError, match="set_size"):
        Q.epochs(3, 16, 0)


def test_pass_at_k_late_drop_and_share_instability():
    over = [{"step": s, "acc/echolab/pass@8": v, "acc/echolab/pass@1": 0.5} for s, v in [(0, 0.7), (10, 0.8), (20, 0.75)]]
    assert Q.passk_late_drop(over, "echolab") == pytest.approx(0.05)
    assert Q.passk_late_drop([{"step": 0}], "echolab") is None
    steady = _rows([(0, 0.3, 0.2), (5, 0.5, 0.2), (10, 0.7, 0.2), (15, 0.9, 0.2)])
    zigzag = _rows([(0, 0.3, 0.2), (5, 0.9, 0.2), (10, 0.3, 0.2), (15, 0.9, 0.2)])
    assert Q.share_instability(steady) == pytest.approx(0.2)
    assert Q.share_instability(zigzag) == pytest.approx(0.6) and Q.share_instability(steady[:1]) is None


def test_the_registry_reads_each_quantity_from_a_run_record():
    """Every name the expectations use, from one RunRecord: the final eval's results before
    and after RL, the RL rows, an eval over steps; a missing eval or benchmark gives None."""
    rows = _rows([(0, 0.3, 0.2), (5, 0.4, 0.25), (10, 0.6, 0.3), (15, 0.92, 0.6), (20, 0.95, 0.62), (25, 0.97, 0.63)])
    over = [{"step": s, "acc/echolab/pass@8": v} for s, v in [(0, 0.7), (10, 0.8), (20, 0.75)]]
    rec = Q.RunRecord("1x", 1, 2, rows, after={"final": AFTER}, before={"final": BEFORE},
                      over_steps={"steps": over}, prompts_per_step=16, set_size=160)
    got = {name: Q.quantity(name, rec, "final", "echolab") for name in Q.QUANTITIES}
    assert got == pytest.approx({
        "top_share_final": 0.8, "minority_share_final": 0.15, "text_wins": 1.0, "acc_final": 0.7,
        "top_share_change": 0.5, "text_share_change": 0.5, "hard_acc_change": 0.3,
        "passk_late_drop": None, "collapse_epoch": 1.5, "gain_window_distance": 0.0, "share_instability": 0.134,
    }, abs=1e-3)
    assert got["passk_late_drop"] is None  # no eval over steps labelled `final`
    assert Q.quantity("passk_late_drop", rec, "steps", "echolab") == pytest.approx(0.05)
    assert Q.quantity("acc_final", rec, "hard", "echolab") is None  # no such eval
    assert Q.quantity("acc_final", rec, "final", "echolab_step4") is None  # not measured on that benchmark
    rec.before = {}
    assert Q.quantity("text_share_change", rec, "final", "echolab") is None  # no eval of the pretrained model
    assert Q.quantity("acc_final", rec, "final", "echolab") == 0.7
