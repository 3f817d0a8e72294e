"""Preemption: finish the step, save a resume checkpoint, exit so that the job is requeued.

What stops a job early, and what reaches our processes:
- SLURM's warning before the time limit: `--signal=B:USR1@300` in slurm/*.sbatch goes to
  the batch shell, whose trap forwards USR1 to srun, which forwards it to every task;
  submitit's `--signal=USR2@90` goes to every task directly.
- `scancel --signal=USR1 JOB` (a user, or a test): USR1 to every task.
- preemption, `scancel`, the time limit: SIGTERM to every process, SIGKILL after KillWait.

`catch_signals()` (around the whole `echo-nemo pretrain` / `rl` command in echo_nemo.cli,
and around each loop for callers that run one directly) makes SIGTERM, SIGUSR1 (and,
inside a submitit job, submitit's own preemption signal, USR2 unless
SUBMITIT_PREEMPT_SIGNAL says otherwise) only set a flag: a
Python handler runs in the main thread between bytecodes, so no step is cut in half.
The loops call `stop_requested()` after every step: the flag is all-reduced (MAX) over
all ranks, so every rank stops after the same step even when the signal reached them
at different moments. The loop then writes a resume checkpoint with the same atomic
save as its periodic ones and raises `Preempted`; `echo-nemo` exits with
`EXIT_REQUEUE` (75, sysexits' EX_TEMPFAIL: "try again later"). At most the step in
flight when the signal came is finished late; nothing is lost.

Who requeues: slurm/*.sbatch run `scontrol requeue $SLURM_JOB_ID` when srun exits with
75; a sweep point (echo_nemo.launch.submit.PointJob) hands a USR1/USR2 stop to
submitit's own checkpoint-and-requeue handler. After a plain SIGTERM nobody requeues:
SLURM itself requeues a preempted job (PreemptMode=REQUEUE), and a cancelled job must
stay cancelled. The restarted command resumes from its run dir's newest checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

EXIT_REQUEUE = 75

_received: set[int] = set()
_installed: dict[int, object] = {}  # signal -> the handler ours replaced
_stopped_by: list[str] = []  # what the last stop_requested() agreed on (read after the command returns)


class Preempted(Exception):
    """Raised by a training loop after it saved a resume checkpoint because of `signal_name`."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | os.PathLike | None = None):
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(
            f"stopped by {signal_name} after step {step}; resume checkpoint {checkpoint}; "
            f"exit code {EXIT_REQUEUE} asks for a requeue, and a rerun resumes from it"
        )

    @property
    def requeue(self) -> bool:
        """A warning signal (USR1/USR2) asks to come back; SIGTERM leaves it to SLURM."""
        return self.signal_name != "SIGTERM"


def submitit_signal() -> signal.Signals:
    """submitit's preemption signal (its JobEnvironment reads the same variable)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def _signals() -> list[signal.Signals]:
    sigs = [signal.SIGTERM, signal.SIGUSR1]
    if "SUBMITIT_EXECUTOR" in os.environ and submitit_signal() not in sigs:
        sigs.append(submitit_signal())
    return sigs


def _handler(signum: int, frame: object) -> None:
    if signum not in _received:
        # os.write: print() inside a handler can re-enter a buffered write and raise
        name = signal.Signals(signum).name
        os.write(2, f"\n[echo-nemo] caught {name}: stopping after this step (a resume checkpoint is saved)\n".encode())
    _received.add(signum)


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """While inside: SIGTERM/SIGUSR1 (and submitit's signal in a submitit job) set the stop
    flag instead of ending the process. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread() or _installed:
        yield  # handlers can only be set from the main thread; nested use keeps the outer ones
        return
    _received.clear()
    _stopped_by.clear()
    for sig in _signals():
        _installed[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, previous in _installed.items():
            signal.signal(sig, previous)
        _installed.clear()


def stopped_by() -> str | None:
    """The signal the last run of this process stopped for (None: it was not stopped)."""
    return _stopped_by[-1] if _stopped_by else None


def stop_requested() -> str | None:
    """The stop signal any rank received (the same answer on every rank), or None.

    A collective when torch.distributed is initialised: call it on every rank at the same
    point of every step. A warning signal (USR1/USR2) wins over SIGTERM: it asks for a
    requeue.
    """
    # torch: loaded by the commands that train, not by every command that imports this module
    import torch
    import torch.distributed as dist

    for sig in _installed:  # put ours back if a library initialised after us replaced it
        if signal.getsignal(sig) is not _handler:
            signal.signal(sig, _handler)
    got = [float(s in _received) for s in (signal.SIGTERM, signal.SIGUSR1, submitit_signal())]
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flags = torch.tensor(got, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        got = flags.tolist()
    term, usr1, usr2 = got
    name = "SIGUSR1" if usr1 else submitit_signal().name if usr2 else "SIGTERM" if term else None
    if name:
        _stopped_by.append(name)
    return name
