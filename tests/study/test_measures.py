"""The study's measures on fixed metric files (written here, read back with read_metrics): exact numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo_nemo.metrics import read_metrics
from echo_nemo.study import measures as M


def write_rows(path: Path, rows: list[dict]) -> list[dict]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_metrics(path)


def rl_row(step: int, tg: float, code: float, text: float, acc: float | None = None) -> dict:
    row = {"step": step, "reward/mean": 0.5, "format/tinygsm/share": tg, "format/llm_code/share": code,
           "format/text/share": text, "format/other/share": round(1 - tg - code - text, 6)}
    if acc is not None:
        row["acc/echolab/pass@1"] = acc
    return row


def test_collapse_step_needs_the_share_to_stay(tmp_path):
    rows = write_rows(tmp_path / "rl", [
        rl_row(1, 0.3, 0.4, 0.3, acc=0.40),
        rl_row(2, 0.1, 0.91, 0.0),      # crosses 0.9 ...
        rl_row(3, 0.2, 0.85, 0.0, acc=0.55),  # ... but falls back: not the collapse
        rl_row(4, 0.05, 0.92, 0.0),
        rl_row(5, 0.0, 0.95, 0.0, acc=0.80),
        rl_row(6, 0.0, 0.97, 0.0, acc=0.82),
    ])
    assert M.collapse_step(rows) == 4
    # acc 0.40 -> 0.55 (+0.15) -> 0.80 (+0.25) -> 0.82: the largest rise ends at step 5
    assert M.largest_gain_step(rows, "acc/echolab/pass@1") == 5
    assert M.last_value(rows, "acc/echolab/pass@1") == 0.82


def test_no_collapse_when_the_last_share_is_below_threshold(tmp_path):
    rows = write_rows(tmp_path / "rl", [rl_row(1, 0.3, 0.4, 0.3), rl_row(2, 0.5, 0.45, 0.05),
                                        rl_row(3, 0.6, 0.35, 0.0)])
    assert M.collapse_step(rows) is None
    # `other` never counts as the top format: 70% unclassified, 20% text
    rows = write_rows(tmp_path / "other", [rl_row(1, 0.05, 0.05, 0.2)])
    assert M.collapse_step(rows, threshold=0.1) == 1 and M.collapse_step(rows) is None


def test_collapse_on_greedy_shares_and_at_first_step(tmp_path):
    rows = write_rows(tmp_path / "rl", [
        {"step": 1, "eval/format/text/share": 0.95, "eval/format/tinygsm/share": 0.05},
        {"step": 2, "format/text/share": 0.2},
        {"step": 3, "eval/format/text/share": 1.0},
    ])
    assert M.collapse_step(rows, prefix="eval/") == 1
    assert M.collapse_step(rows) is None  # the sampled shares never stay >= 0.9
    rows = write_rows(tmp_path / "untrained", [rl_row(1, 0.0, 0.0, 0.0)])  # all `other`
    assert M.collapse_step(rows, threshold=0.0) is None
    assert M.collapse_step([]) is None


def test_pass_at_k_over_steps_from_an_eval_over_steps_file(tmp_path):
    rows = write_rows(tmp_path / "eval", [
        {"step": 10, "acc/echolab/pass@1": 0.5, "acc/echolab/pass@8": 0.90, "acc/echolab/maj@8": 0.6},
        {"step": 0, "acc/echolab/pass@1": 0.3, "acc/echolab/pass@8": 0.80, "acc/echolab/maj@8": 0.4},
        {"step": 35, "acc/echolab/pass@1": 0.7, "acc/echolab/pass@8": 0.85, "acc/echolab/maj@8": 0.75},
    ])
    assert M.pass_at_k_over_steps(rows, "echolab", 8) == ([0, 10, 35], [0.80, 0.90, 0.85])
    assert M.pass_at_k_over_steps(rows, "echolab", 8, kind="maj") == ([0, 10, 35], [0.4, 0.6, 0.75])
    assert M.ks_logged(rows, "echolab") == [1, 8] and M.ks_logged(rows, "echolab", "maj") == [8]
    assert M.late_drop(M.pass_at_k_over_steps(rows, "echolab", 8)) == pytest.approx(0.05)
    assert M.late_drop(M.pass_at_k_over_steps(rows, "echolab", 1)) == 0.0
    assert M.largest_gain_step(rows, "acc/echolab/pass@8") == 10  # +0.10 from 0 to 10, then a fall
    assert M.largest_gain_step(rows, "acc/gsm8k/pass@1") is None


def test_spread_over_seeds():
    s = M.spread([4, None, 8, 6])
    assert (s.n, s.mean, s.sd, s.lo, s.hi) == (3, 6.0, 2.0, 4.0, 8.0)
    assert s.text("{:.1f}") == "6.0 ± 2.0 (n=3)"
    assert M.spread([0.5]).sd == 0.0 and M.spread([None]).n == 0 and M.spread([]).text() == "–"
