"""Checkpoints: megatron-core dist_checkpointing folders, written atomically.

A checkpoint is `run_dir/checkpoints/step_<N>/`:
- the megatron dist-checkpoint files (model weights as ShardedTensors, so a TP=2
  checkpoint loads at TP=1 and the reverse; AdamW moments sharded like their params),
- `common.pt` with the caller's `extra` dict (scheduler, step, anything picklable and
  identical on every rank),
- one ShardedObject per global rank with that rank's `rank_extra` (RNG states, loader
  position): restored only when the parallel layout is the same,
- `meta.json` {"step", "model": ModelConfig as dict, "tokenizer", "kind", "layout",
  "keep"}: `keep` marks a checkpoint that pruning never deletes (the study's log-spaced
  ones, explicit keep steps), whatever the config of a later, resumed run says.

Rank 0 prints a line per save and load (size, seconds): at 1b they take a while.

Atomicity: everything is written into `step_<N>.tmp/`; after all ranks finish, rank 0
writes meta.json and renames the folder. A save killed at any point leaves at most a
`.tmp` folder, which `latest_checkpoint` never returns and the next save removes.

The same format serves pretraining, RL and import (`kind` says which), so eval and
export load any of them with `load_model_for_inference`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.optimizer import (
    get_param_id_to_sharded_param_map,
    optim_state_to_sharding_state,
)
from megatron.core.dist_checkpointing.serialization import load_sharded_metadata
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from tqdm import tqdm

from echo_nemo import distributed as D
from echo_nemo.errors import UserError
from echo_nemo.model.build import ModelConfig, build_gpt
from echo_nemo.tokenizer import load_tokenizer

_STEP_DIR = re.compile(r"^step_(\d+)$")
META = "meta.json"


# ----------------------------------------------------------------------------- paths
def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / META).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (a killed save's `.tmp` never counts)."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder, a run dir, or a run's checkpoints/ dir."""
    p = Path(path)
    if (p / META).is_file():
        return p
    for run_dir in (p, p.parent):
        latest = latest_checkpoint(run_dir)
        if latest is not None and (p == run_dir or p.name == "checkpoints"):
            return latest
    if not p.exists():
        raise UserError(f"checkpoint not found: {str(p)!r} (expected a run dir or a step_<N> dir)")
    raise UserError(
        f"no complete checkpoint in {str(p)!r}: expected {META} in it, or "
        f"checkpoints/step_<N>/{META} under it"
    )


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = resolve_checkpoint(path)
    try:
        return json.loads((ckpt / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint metadata {str(ckpt / META)!r} is unreadable: {e}") from None


def model_config_from_meta(meta: dict[str, Any]) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in meta["model"].items() if k in names})


def tokenizer_path_from_meta(ckpt: Path, meta: dict[str, Any]) -> str | None:
    tok = meta.get("tokenizer")
    if tok is None:
        return None
    p = Path(tok)
    return str(p if p.is_absolute() else (ckpt / p).resolve())


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every RNG a training step can touch: torch CPU/CUDA, and megatron's tracker."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    tracker = get_cuda_rng_tracker()
    state["tracker"] = {k: v.clone() for k, v in tracker.get_states().items()}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if state.get("tracker"):
        get_cuda_rng_tracker().set_states(dict(state["tracker"]))


# ----------------------------------------------------------------------------- state dicts
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


def _layout() -> dict[str, int]:
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return {"world_size": world, "tp": D.tp_size(), "dp": D.dp_size()}


def _init_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every param zero moments so a fresh optimizer has tensors to load into."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state[p]
            if "exp_avg" not in st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _sharded_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra: dict[str, Any] | None,
    rank_extra: dict[str, Any] | None,
) -> dict[str, Any]:
    model_sd = _unwrap(model).sharded_state_dict()
    state: dict[str, Any] = {"model": model_sd, "extra": extra or {}}
    if optimizer is not None:
        osd = optimizer.state_dict()
        # AdamW keeps a scalar `step` per param; all are equal, so it lives in common state.
        steps = [float(s["step"]) for s in osd["state"].values() if "step" in s]
        # a param that has not stepped yet (the policy during PPO's critic warm-up) has no
        # moments: save zeros, what a fresh AdamW starts from and what a load expects
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            if "exp_avg" not in osd["state"].get(i, {}):
                osd["state"][i] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        id_map = get_param_id_to_sharded_param_map(model_sd, params)
        optim_state_to_sharding_state(osd, id_map, exclude_keys=("step",))
        osd["adam_step"] = max(steps) if steps else 0.0
        state["optimizer"] = osd
    if rank_extra is not None:
        lay = _layout()
        state["rank_extra"] = ShardedObject(
            "rank_extra", rank_extra, (lay["world_size"],), (_rank(),), replica_id=0
        )
    return state


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


# ----------------------------------------------------------------------------- save
def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    model_config: ModelConfig,
    tokenizer: str | os.PathLike | None = None,
    kind: str = "pretrain",
    extra: dict[str, Any] | None = None,
    rank_extra: dict[str, Any] | None = None,
    keep_last: int | None = None,
    keep_steps: tuple[int, ...] | list[int] = (),
) -> Path:
    """Write `run_dir/checkpoints/step_<step>/` atomically; every rank must call this.

    `extra` must be identical on all ranks (scheduler state, counters); `rank_extra` is
    per rank (RNG, loader position). `model_config.vocab_size` must be the tokenizer's
    vocab. A step in `keep_steps` is marked `keep` in its meta.json. After the rename,
    deletes complete checkpoints that are neither among the newest `keep_last` nor
    marked `keep` (keep_last None: deletes nothing).
    """
    if not model_config.vocab_size:
        raise ValueError("save_checkpoint needs model_config.vocab_size")
    root = checkpoints_dir(run_dir)
    final = root / f"step_{int(step)}"
    tmp = root / f"step_{int(step)}.tmp"
    t0 = time.perf_counter()
    if _rank() == 0:
        _progress(f"saving {_where(final)} ...")
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a killed save
        tmp.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(_sharded_state(model, optimizer, extra, rank_extra), str(tmp))
    _barrier()
    if _rank() == 0:
        meta = {
            "step": int(step),
            "kind": kind,
            "model": dataclasses.asdict(model_config),
            "tokenizer": _tokenizer_ref(tokenizer, run_dir, final),
            "layout": _layout(),
            "keep": int(step) in set(keep_steps),
        }
        _publish(tmp, final, meta)
        _progress(f"saved {_where(final)}: {_size(final)} in {time.perf_counter() - t0:.1f} s")
        _prune(run_dir, keep_last, set(keep_steps) | {int(step)})
    _barrier()
    return final


def _tokenizer_ref(tokenizer: str | os.PathLike | None, run_dir: str | os.PathLike, final: Path) -> str | None:
    """The tokenizer as meta.json names it: relative to the checkpoint when it lives in the
    run dir (so the run dir can move), else absolute."""
    if tokenizer is None:
        return None
    tok_path = Path(tokenizer).resolve()
    try:
        tok = os.path.relpath(tok_path, final.resolve())
    except ValueError:  # another drive
        return str(tok_path)
    if tok.startswith("../../..") or not str(tok_path).startswith(str(Path(run_dir).resolve())):
        return str(tok_path)
    return tok


def _publish(tmp: Path, final: Path, meta: dict) -> None:
    """meta.json into the written `tmp`, then `tmp` renamed to `final` (replacing an older
    save of the same step, e.g. after a resume): a checkpoint that exists is whole."""
    with open(tmp / META, "w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _progress(line: str) -> None:
    """One line on stderr (beside the progress bars; stdout stays the commands' output)."""
    tqdm.write(f"[checkpoint] {line}", file=sys.stderr)
    sys.stderr.flush()


def _where(ckpt: Path) -> str:
    """`<run dir name>/checkpoints/step_N` (or the aux model's `<run>/<name>/checkpoints/...`)."""
    parts = Path(ckpt).parts
    return str(Path(*parts[-4:])) if len(parts) >= 4 else str(ckpt)


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if total >= div:
            return f"{total / div:.2f} {unit}"
    return f"{total} B"


def remove_incomplete(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the `.tmp` folders of saves that were killed (call on rank 0 at start-up)."""
    root = checkpoints_dir(run_dir)
    stale = sorted(root.glob("step_*.tmp")) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def is_kept(ckpt: Path) -> bool:
    """True when the checkpoint's meta.json marks it `keep` (never pruned)."""
    try:
        return bool(json.loads((Path(ckpt) / META).read_text()).get("keep", False))
    except (OSError, json.JSONDecodeError):
        return True  # unreadable: never delete what we cannot classify


def prunable(steps: list[int], keep_last: int, keep: set[int]) -> list[int]:
    """The steps pruning deletes: all but the newest `keep_last` and those in `keep`."""
    newest = set(sorted(steps)[-keep_last:]) if keep_last > 0 else set()
    return [s for s in sorted(steps) if s not in newest and s not in keep]


def _prune(run_dir: str | os.PathLike, keep_last: int | None, keep: set[int]) -> None:
    if keep_last is None:
        return
    done = dict(complete_checkpoints(run_dir))
    for s in prunable(list(done), keep_last, keep):
        if not is_kept(done[s]):
            shutil.rmtree(done[s], ignore_errors=True)


# ----------------------------------------------------------------------------- load
@dataclass
class Loaded:
    step: int
    meta: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    rank_extra: dict[str, Any] | None = None  # None when the parallel layout changed


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    load_rank_extra: bool = True,
) -> Loaded:
    """Load a checkpoint (dir or run dir) into `model` (and `optimizer`) at the current TP.

    Tensors are resharded to the current TP size; per-rank state (`rank_extra`) comes
    back only when the saved layout equals the current one.
    """
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    t0 = time.perf_counter()
    if _rank() == 0:
        _progress(f"loading {_where(ckpt)} ({_size(ckpt)}) ...")
    same_layout = meta.get("layout") == _layout()
    if optimizer is not None:
        _init_adam_state(optimizer)
    want_rank = load_rank_extra and same_layout and _has_rank_extra(ckpt)
    sharded = _sharded_state(model, optimizer, None, {} if want_rank else None)
    sharded.pop("extra")  # common state comes back from common.pt as saved
    try:
        loaded = dist_checkpointing.load(sharded, str(ckpt))
    except Exception as e:  # a shape/key mismatch is the user's to fix (wrong scale, bad dir)
        raise UserError(f"cannot load checkpoint {str(ckpt)!r} into this model: {e}") from e
    _unwrap(model).load_state_dict(loaded["model"], strict=True)
    if optimizer is not None:
        osd = loaded["optimizer"]
        adam_step = osd.pop("adam_step", 0.0)
        for st in osd["state"].values():
            st["step"] = torch.tensor(float(adam_step))
        optimizer.load_state_dict(osd)
    if _rank() == 0:
        _progress(f"loaded {_where(ckpt)} in {time.perf_counter() - t0:.1f} s")
    return Loaded(
        step=int(meta["step"]),
        meta=meta,
        extra=loaded.get("extra", {}),
        rank_extra=loaded.get("rank_extra") if want_rank else None,
    )


def _has_rank_extra(ckpt: Path) -> bool:
    try:
        return any(k.startswith("rank_extra") for k in load_sharded_metadata(str(ckpt)))
    except Exception:
        return False


def load_model_for_inference(
    path: str | os.PathLike,
    tp: int | None = None,
    params_dtype: torch.dtype | None = None,
    parallel_output: bool = True,
):
    """(model in eval mode, tokenizer, ModelConfig) from a checkpoint dir or a run dir.

    Initialises distributed state when nobody has (a 1-process group at TP=`tp` or 1);
    otherwise builds at the current TP size, whatever TP the checkpoint was saved with.
    Weights are fp32 on CPU and bf16 on GPU unless `params_dtype` says otherwise.
    """
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    cfg = model_config_from_meta(meta)
    if not torch.distributed.is_initialized():
        D.init_distributed(tp=tp or 1)
    elif tp is not None and tp != D.tp_size():
        raise UserError(f"asked for tp={tp} but the process group runs at tp={D.tp_size()}")
    if params_dtype is None:
        params_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = build_gpt(cfg, cfg.vocab_size, params_dtype=params_dtype, parallel_output=parallel_output)
    load_checkpoint(ckpt, model, None, load_rank_extra=False)
    model.eval()
    tok_path = tokenizer_path_from_meta(ckpt, meta)
    tokenizer = load_tokenizer(tok_path)
    return model, tokenizer, cfg
