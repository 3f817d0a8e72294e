"""`echo-nemo pretrain` and `rl` catch the stop signals for the whole command (not only
inside their loops); other commands keep the default, so SIGTERM still ends them."""

from __future__ import annotations

import importlib
import os
import signal

import pytest

from echo_nemo import preempt
from echo_nemo.cli import main


@pytest.mark.parametrize("command, module", [("pretrain", "echo_nemo.train.cli"), ("rl", "echo_nemo.rl.cli")])
def test_a_signal_after_the_loop_does_not_kill_a_finished_run(monkeypatch, command, module):
    before = signal.getsignal(signal.SIGUSR1)
    seen = {}

    def finished_run(args):  # stands for the command after its last step: no stop_requested() follows
        seen["handler"] = signal.getsignal(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # the default action would end this process
        return 0

    monkeypatch.setattr(importlib.import_module(module), "_run", finished_run)
    assert main([command, "recipe.yaml"]) == 0
    assert seen["handler"] is preempt._handler
    assert signal.getsignal(signal.SIGUSR1) is before  # put back when the command returns


def test_other_commands_keep_the_default_handlers(monkeypatch):
    seen = {}

    def run(args):
        seen["handler"] = signal.getsignal(signal.SIGTERM)
        return 0

    monkeypatch.setattr(importlib.import_module("echo_nemo.eval.cli"), "_run", run)
    assert main(["eval", "--checkpoint", "x"]) == 0
    assert seen["handler"] is not preempt._handler
