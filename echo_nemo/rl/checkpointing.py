"""Checkpoints of an RL run: when to save, what to save, and resuming from the newest.

The policy is saved as a standard checkpoint (eval and export load it) plus the RL
resume state (step, schedules, algorithm state, every rank's RNG); each auxiliary model
as a checkpoint of its own under run_dir/<name>/. Saves happen at the study's
log-spaced steps (kept forever), every `checkpoint.every` steps (the newest
`checkpoint.keep_last` kept) and when a stop signal arrives (echo_nemo.preempt).
"""

from __future__ import annotations

from pathlib import Path

from echo_nemo import checkpoint as C
from echo_nemo import distributed as D
from echo_nemo.metrics import truncate_metrics
from echo_nemo.model.build import ModelConfig
from echo_nemo.rl.config import RLConfig
from echo_nemo.rl.models import TrainState
from echo_nemo.schedule import log_spaced_steps


class RunCheckpoints:
    """Saving and resuming one run dir's policy and auxiliary models together."""

    def __init__(self, cfg: RLConfig, run_dir: Path, total: int, model_config: ModelConfig,
                 tokenizer_path: str | None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.model_config = model_config
        self.tokenizer_path = tokenizer_path
        self.log_spaced = log_spaced_steps(total, cfg.num_checkpoints)  # the study's, kept forever

    def due(self, step: int, stop: str | None) -> bool:
        """A log-spaced step, a periodic one, or a stop signal."""
        every = self.cfg.checkpoint.every
        return step in self.log_spaced or bool(every and step % every == 0) or bool(stop)

    def step_dir(self, step: int) -> Path:
        return C.checkpoints_dir(self.run_dir) / f"step_{step}"

    def save(self, step: int, state: TrainState) -> None:
        """The policy with the resume state, then each auxiliary model; log-spaced steps are
        marked keep (never pruned), of the others the newest `checkpoint.keep_last` stay."""
        extra = {"rl_step": step, "sched": state.sched.state_dict() if state.sched else None,
                 "aux_sched": {n: a.sched.state_dict() for n, a in state.aux.items() if a.sched is not None},
                 "algo_state": dict(state.algo_state)}
        keep = {"keep_last": self.cfg.checkpoint.keep_last, "keep_steps": self.log_spaced}
        C.save_checkpoint(self.run_dir, step, state.model, state.opt, model_config=self.model_config,
                          tokenizer=self.tokenizer_path, kind="rl", extra=extra, rank_extra={"rng": C.rng_state()},
                          **keep)
        for name, a in state.aux.items():
            C.save_checkpoint(self.run_dir / name, step, a.module, a.opt, model_config=self.model_config,
                              tokenizer=self.tokenizer_path, kind=f"rl_{name}", **keep)

    def latest_complete_step(self, aux_names) -> int | None:
        """The newest step saved completely for the policy and every auxiliary model (a kill
        between the policy's save and the critic's leaves only the policy's)."""
        steps = {s for s, _ in C.complete_checkpoints(self.run_dir)}
        for name in aux_names:
            steps &= {s for s, _ in C.complete_checkpoints(self.run_dir / name)}
        return max(steps, default=None)

    def resume(self, state: TrainState) -> int:
        """Load the newest complete checkpoint of this run dir into `state`; returns its step
        (0 for a fresh start, whose metrics rows of an earlier attempt are dropped)."""
        if D.is_main():
            for d in [self.run_dir, *(self.run_dir / n for n in state.aux)]:
                C.remove_incomplete(d)  # `.tmp` folders of saves that were killed
        D.barrier()
        step = self.latest_complete_step(state.aux) if self.cfg.checkpoint.resume else None
        if step is None:
            if D.is_main():
                truncate_metrics(self.run_dir, -1)
            return 0
        loaded = self._load(self.step_dir(step), state)
        if D.is_main():
            truncate_metrics(self.run_dir, loaded.step)
        return loaded.step

    def _load(self, ckpt: Path, state: TrainState) -> C.Loaded:
        loaded = C.load_checkpoint(ckpt, state.model, state.opt)
        if loaded.extra.get("sched") and state.sched:
            state.sched.load_state_dict(loaded.extra["sched"])
        state.algo_state.update(loaded.extra.get("algo_state") or {})
        for name, a in state.aux.items():
            C.load_checkpoint(self.run_dir / name / "checkpoints" / ckpt.name, a.module, a.opt)
            aux_sched = (loaded.extra.get("aux_sched") or {}).get(name)
            if aux_sched and a.sched is not None:
                a.sched.load_state_dict(aux_sched)
        if loaded.rank_extra:
            C.set_rng_state(loaded.rank_extra["rng"])
        return loaded
