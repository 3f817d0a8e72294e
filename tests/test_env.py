"""echo_nemo.env: every ECHO_NEMO_* variable has one accessor with its default, and a value
it does not accept is a UserError naming the variable (exit 2 from the CLI)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from echo_nemo import env
from echo_nemo.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "echo_nemo"


@pytest.fixture(autouse=True)
def unset(monkeypatch):
    for var in env.VARIABLES:
        monkeypatch.delenv(var.name, raising=False)


def test_defaults():
    assert env.cache_dir() == Path.home() / ".cache" / "echo-nemo"
    assert (env.cpu_kernels(), env.malloc(), env.sandbox_netns()) == ("echo-nemo", "echo-nemo", True)
    assert env.threads_file() is None and env.data_dir() is None and env.peak_tflops() is None
    assert env.reward_url() is None and env.reward_tokenizer() is None
    assert 1 <= env.reward_workers() <= 4


def test_set_values(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHO_NEMO_CACHE", str(tmp_path))
    monkeypatch.setenv("ECHO_NEMO_SANDBOX_NETNS", "0")
    monkeypatch.setenv("ECHO_NEMO_REWARD_WORKERS", "7")
    monkeypatch.setenv("ECHO_NEMO_PEAK_TFLOPS", "312.5")
    monkeypatch.setenv("ECHO_NEMO_CPU_KERNELS", "")  # empty counts as unset
    assert env.cache_dir() == tmp_path and env.sandbox_netns() is False
    assert env.reward_workers() == 7 and env.peak_tflops() == 312.5 and env.cpu_kernels() == "echo-nemo"


@pytest.mark.parametrize("name,value,read", [
    ("ECHO_NEMO_CPU_KERNELS", "fast", env.cpu_kernels),
    ("ECHO_NEMO_MALLOC", "default", env.malloc),
    ("ECHO_NEMO_SANDBOX_NETNS", "off", env.sandbox_netns),
    ("ECHO_NEMO_REWARD_WORKERS", "four", env.reward_workers),
    ("ECHO_NEMO_REWARD_WORKERS", "0", env.reward_workers),
    ("ECHO_NEMO_PEAK_TFLOPS", "-1", env.peak_tflops),
])
def test_a_misspelt_value_names_the_variable(monkeypatch, name, value, read):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=name) as e:
        read()
    assert repr(value) in str(e.value)


def test_no_other_module_names_an_echo_nemo_variable():
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "env.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"ECHO_NEMO_[A-Z_]+", node.value):
                readers.add(str(path.relative_to(PACKAGE)))
    assert readers == set()
    assert env.__doc__ and all(f"`{var.name}`" in env.__doc__ for var in env.VARIABLES)  # the table
