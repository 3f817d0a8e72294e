"""Mixture arithmetic: repeat factors, subsampling and token shares; the recipes validate."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from echo_nemo.config import load_recipe
from echo_nemo.data.config import DataRecipe
from echo_nemo.data.mixtures import expand_repeats, parse_mixture_name, repeat_counts, source_shares
from echo_nemo.errors import UserError

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "data"


def test_repeat_counts_and_picks():
    assert repeat_counts(100, 4) == (4, 0)
    assert repeat_counts(100, 0.25) == (0, 25)
    assert repeat_counts(10, 2.5) == (2, 5)
    picks = expand_repeats([10, 8, 40], [4, 1, 0.25], seed=1)
    per = Counter(src for src, _ in picks)
    assert per == {0: 40, 1: 8, 2: 10}
    assert Counter(i for s, i in picks if s == 0) == {i: 4 for i in range(10)}  # each doc 4 times
    sub = [i for s, i in picks if s == 2]
    assert len(set(sub)) == 10  # a subsample without replacement
    assert expand_repeats([10, 8, 40], [4, 1, 0.25], seed=1) == picks
    assert expand_repeats([10, 8, 40], [4, 1, 0.25], seed=2) != picks


def test_token_shares_follow_the_repeats():
    # two sources of equal size in tokens: 4x vs 1x gives 80% / 20%
    tokens = [100 * 4, 100 * 1]
    assert source_shares(tokens) == [0.8, 0.2]
    assert source_shares([0, 0]) == [0.0, 0.0]


def test_names_spell_the_mixture():
    assert parse_mixture_name("as_fm3_tg_4xomi1") == [("as", 1), ("fm3", 1), ("tg", 1), ("omi1", 4)]
    assert parse_mixture_name("echo_2xtg_omi1_omi2") == [("echo_tg", 2), ("echo_omi1", 1), ("echo_omi2", 1)]
    assert parse_mixture_name("echo_tg_omi1_4xomi2-fair") == [("echo_tg", 1), ("echo_omi1", 1), ("echo_omi2", 4)]


def test_every_recipe_validates_and_matches_its_name():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml") if not p.stem.startswith("_"))
    for paper in ["as_fm3_tg", "as_fm3_2xtg", "as_fm3_4xtg", "as_fm3_8xtg", "as_fm3_tg_omi1",
                  "as_fm3_tg_2xomi1", "as_fm3_tg_4xomi1", "as_fm3_tg_8xomi1", "as_fm3_tg_omi2",
                  "as_fm3_tg_omi1_omi2", "as_fm3_omi1", "as_fm3_omi2_mmqa", "echo_tg_omi1_omi2"]:
        assert paper in names
    for name in names:
        r = load_recipe(DataRecipe, RECIPES / f"{name}.yaml")
        assert r.name == name
        assert [(s.name, s.repeat) for s in r.sources] == parse_mixture_name(name)


def test_bad_recipes_raise_user_errors(tmp_path):
    path = RECIPES / "echo_tg_omi1_omi2.yaml"
    with pytest.raises(UserError, match="max_steps"):
        load_recipe(DataRecipe, path, ["echolab.max_steps=9"])
    with pytest.raises(UserError, match="seq_lenght"):
        load_recipe(DataRecipe, path, ["seq_lenght=5"])
    with pytest.raises(UserError, match="repeats.echo_fm3 names no source"):
        load_recipe(DataRecipe, path, ["repeats.echo_fm3=2"])
    assert load_recipe(DataRecipe, path, ["repeats.echo_omi1=4"]).sources[1].repeat == 4.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsources:\n  - {name: echo_tg}\n  - {name: nope, repeat: 2}\n")
    with pytest.raises(UserError, match=r"sources\[1\].name='nope'"):
        load_recipe(DataRecipe, bad)
    bad.write_text("name: bad\nsources:\n  - {name: echo_tg, repeat: 0}\n")
    with pytest.raises(UserError, match="repeat must be > 0"):
        load_recipe(DataRecipe, bad)
