"""The seam between the code that runs models and an optional speed layer (no torch here).

Model code asks `ops(device_type)` for the implementations of its two hot operations on a
tensor's device, and the pretraining and RL loops call `between_steps()` at every step and
phase. With nothing installed they get torch's own operations and nothing runs between
steps. A speed layer installs its pieces by an explicit call at command start-up
(`echo_nemo.cpu.apply`, from echo_nemo.cli): the model never imports that layer, so a run
on CUDA never loads it.

    causal_attention(q [b, heads, s, d], k, v [b, groups, s, d]) -> o [b, s, heads, d]
        o = softmax(q k^T / sqrt(d) + causal mask) v   (views of any strides, d contiguous)
    linear(x [..., in], w [out, in]) -> x w^T           (no bias; decode-sized inputs)

An installed implementation must equal torch's to float rounding and decide itself where
it applies (it calls torch's operation elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Ops:
    """Implementations for one device type; None: torch's own."""

    causal_attention: Callable | None = None
    linear: Callable | None = None


NONE = Ops()
_loaders: dict[str, Callable[[], Ops]] = {}  # device type -> loads its Ops at first use
_loaded: dict[str, Ops] = {}
_step_hooks: list[Callable[[], object]] = []


def install(device_type: str, load: Callable[[], Ops]) -> None:
    """Use `load()`'s operations for tensors on `device_type` ("cpu", "cuda"). `load` runs
    at the first `ops(device_type)`, so a command that never runs a model never loads them."""
    _loaders[device_type] = load
    _loaded.pop(device_type, None)


def on_every_step(hook: Callable[[], object]) -> None:
    """Call `hook()` from every `between_steps()` (once, however often it is added)."""
    if hook not in _step_hooks:
        _step_hooks.append(hook)


def ops(device_type: str) -> Ops:
    """The installed operations for `device_type` (NONE when nothing is installed)."""
    found = _loaded.get(device_type)
    if found is None:
        load = _loaders.get(device_type)
        found = _loaded[device_type] = load() if load is not None else NONE
    return found


def between_steps() -> None:
    """What the installed layers do between training steps (e.g. follow a thread share)."""
    for hook in _step_hooks:
        hook()


def snapshot() -> tuple[dict[str, Callable[[], Ops]], list[Callable[[], object]]]:
    """What is installed, to install the same in a spawned process (`restore`). The loaders
    and hooks are module-level functions, so they pickle by name."""
    return dict(_loaders), list(_step_hooks)


def restore(state: tuple[dict[str, Callable[[], Ops]], list[Callable[[], object]]]) -> None:
    """Install exactly what `snapshot()` saw (and nothing else)."""
    loaders, hooks = state
    _loaders.clear()
    _loaded.clear()
    _step_hooks.clear()
    _loaders.update(loaders)
    _step_hooks.extend(hooks)
