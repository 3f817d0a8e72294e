"""Options and `key=value` overrides in any order, on every command that takes overrides,
through the real parser and the real `echo-nemo` entry point; a misspelt option still
stops the command with exit 2."""

from __future__ import annotations

import pytest

from echo_nemo.cli import build_parser, main
from echo_nemo.cli_args import is_override, parse_command_line

RL = "recipes/rl/quickstart_smoke.yaml"
PRETRAIN = "recipes/pretrain/quickstart_smoke.yaml"


def parse(*argv: str):
    return parse_command_line(build_parser(), list(argv))


def test_is_override():
    assert is_override("steps=20") and is_override("model.init=/a/b=c") and is_override("kl.coef=-0.1")
    assert not is_override("--out=DIR") and not is_override("=5") and not is_override("recipe.yaml")


@pytest.mark.parametrize("argv, overrides, out", [
    # the issue's line: options between overrides
    (["rl", RL, "model.init=X", "--out", "D", "steps=20"], ["model.init=X", "steps=20"], "D"),
    (["rl", RL, "--out", "D", "a=1", "b=2"], ["a=1", "b=2"], "D"),
    (["rl", "--out", "D", RL, "a=1"], ["a=1"], "D"),
    (["rl", RL, "a=1", "b=2"], ["a=1", "b=2"], None),
    # a later override of the same key stays later (it wins in the recipe loader)
    (["pretrain", PRETRAIN, "train.steps=1", "--out", "D", "train.steps=2"], ["train.steps=1", "train.steps=2"], "D"),
    (["pretrain", PRETRAIN, "--out", "D", "train.steps=2"], ["train.steps=2"], "D"),
])
def test_overrides_before_and_after_options(argv, overrides, out):
    args = parse(*argv)
    assert (args.overrides, args.out) == (overrides, out)


@pytest.mark.parametrize("argv, key, value", [
    (["config", RL, "steps=3"], "recipe", RL),
    (["data", "build", "recipes/data/echo_tg_omi1.yaml", "seq_length=64", "--force", "num_workers=1"],
     "force", True),
    (["eval", "recipes/eval/echolab_tiny_cpu.yaml", "limit=5", "--label", "x", "sampling.n=2"], "label", "x"),
    (["sweep", "recipes/sweeps/echolab_cpu_rl.yaml", "a=1", "--dry-run", "b=2"], "dry_run", True),
    (["study", "recipes/study/echolab.yaml", "a=1", "--dry-run", "b=2"], "dry_run", True),
])
def test_every_command_with_overrides_takes_them_after_its_options(argv, key, value):
    args = parse(*argv)
    assert getattr(args, key) == value
    assert args.overrides == [w for w in argv if "=" in w]


@pytest.mark.parametrize("argv", [
    ["rl", RL, "model.init=X", "--outt", "D", "steps=20"],  # misspelt option
    ["pretrain", PRETRAIN, "train.steps=1", "--out"],  # option without its value
    ["config", RL, "--bogus"],
    ["report", "some_dir", "--title", "x", "steps=3"],  # a command without overrides refuses them
])
def test_a_misspelt_option_still_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and ("unrecognized arguments" in err or "expected one argument" in err)


@pytest.mark.parametrize("argv, named", [
    (["rl", RL, "model.init=X", "--out", "{tmp}/run", "steps=twenty"], "steps"),
    (["pretrain", PRETRAIN, "--out", "{tmp}/run", "train.stepz=2"], "train.stepz"),
])
def test_a_late_override_reaches_the_recipe(argv, named, tmp_path, capsys):
    """Through `echo-nemo`'s entry point: the override after `--out` is the one the recipe
    loader refuses (exit 2, naming it), so it was read as an override, not left over."""
    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert named in err and "unrecognized arguments" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_config_prints_the_late_override(capsys):
    assert main(["config", RL, "steps=7"]) == 0
    assert "\nsteps: 7\n" in "\n" + capsys.readouterr().out


def test_the_issues_command_line_in_a_fresh_process(cli, tmp_path):
    r = cli("rl", RL, "model.init=X", "--out", tmp_path / "run", "steps=0")
    assert r.returncode == 2, r.stderr
    assert "unrecognized arguments" not in r.stderr and "steps" in r.stderr
