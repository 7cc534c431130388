"""Atomic training checkpoints: ``checkpoints/step-N/`` with the model, the optimizer, every rank's RNG state and
``trainer_state.json`` (written last: its presence marks a complete checkpoint).

A checkpoint is written into a temporary directory, fsynced and renamed, so a crash never leaves a half-written
``step-N``; :func:`load_checkpoint` restores weights, optimizer, schedule and RNG states exactly.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from pixelsail.train import DistEnv

log = logging.getLogger("pixelsail.train")

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"   # written last: its presence marks a complete checkpoint


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer state file), oldest first."""
    out = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(Path(output_dir) / "checkpoints")
    return found[-1][1] if found else None


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make ``tmp`` appear as ``final`` in one rename (an older ``final`` is moved aside, then deleted)."""
    _fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _without_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second name of tied parameters (safetensors refuses shared tensors)."""
    first_name: dict[int, str] = {}
    drop = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first_name:
            drop.add(name)
        else:
            first_name[id(p)] = name
    return {k: v.contiguous() for k, v in state.items() if k not in drop}


def save_model_dir(model: nn.Module, full_state: dict[str, torch.Tensor], path: Path, sharded: bool) -> None:
    """A loadable model directory: ``model.save_pretrained`` (given the gathered weights when the model is sharded:
    its own parameters are then DTensor shards); models without it (the tests' toy) get bare safetensors."""
    save = getattr(model, "save_pretrained", None)
    if save is not None and sharded:
        save(str(path), state_dict=full_state)
        return
    if save is not None:
        save(str(path))
        return
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file(_without_aliases(model, full_state), str(path / "model.safetensors"), metadata={"format": "pt"})


def load_model_weights(raw: nn.Module, wrapped: nn.Module, path: Path) -> None:
    """Load every ``*.safetensors`` under ``path`` into the model (``wrapped``: itself, DDP or FSDP-sharded)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights in this checkpoint")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    result = set_model_state_dict(wrapped, state,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True, strict=False))
    aliases: dict[int, set[str]] = {}
    for name, p in raw.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), set()).add(name)
    loaded_via_alias = {n for names in aliases.values() if len(names) > 1 and names & state.keys() for n in names}
    missing = [k for k in result.missing_keys if k not in loaded_via_alias]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: weights do not match the model: missing {missing[:8]}, "
                         f"unexpected {list(result.unexpected_keys)[:8]}")


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, raw: nn.Module, wrapped: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer_state: dict[str, Any], env: DistEnv, sharded: bool,
                    keep_last: int) -> Path:
    """Collective: every rank must call it. Rank 0 writes the shared files, every rank its RNG state.

    A failed write (a full disk, the output directory deleted under the run) raises an OSError that names the
    checkpoint and the cause, after removing the partial temporary directory; earlier checkpoints stay as they were.
    """
    import errno

    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    root = output_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    try:
        if env.is_main:
            if not output_dir.is_dir():  # not recreated: a deleted run directory means the run is gone
                raise FileNotFoundError(errno.ENOENT, f"the output directory {output_dir} was deleted during the run")
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(exist_ok=True)
            tmp.mkdir()
        env.barrier()
        torch.save(_rng_state(), tmp / f"rng_rank{env.rank}.pt")
        options = state_dict_options()
        model_state = get_model_state_dict(wrapped, options=options)
        optim_state = get_optimizer_state_dict(wrapped, optimizer, options=options)
        env.barrier()
        if env.is_main:
            save_model_dir(raw, model_state, tmp / "model", sharded)
            torch.save(optim_state, tmp / "optimizer.pt")
            state = dict(trainer_state, step=step, scheduler=scheduler.state_dict(), world_size=env.world_size)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            publish(tmp, final)
            for _, old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = f"; earlier checkpoints in {root} are unchanged" if root.is_dir() else ""
        message = f"checkpoint {final.name} not written ({e.strerror or e}){kept}"
        raise (OSError(message) if e.errno is None else OSError(e.errno, message)) from e
    env.barrier()
    return final


def load_checkpoint(path: Path, raw: nn.Module, wrapped: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    env: DistEnv) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = json.loads((path / STATE_FILE).read_text())
    load_model_weights(raw, wrapped, path / "model")
    optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    # checkpoints written before init_optimizer_state existed lack the state of parameters that had not had a
    # gradient yet (e.g. the mask head before the first batch with masks)
    set_optimizer_state_dict(wrapped, optimizer, optim_state,
                             options=replace(state_dict_options(), strict=False))
    scheduler.load_state_dict(state["scheduler"])
    rng_file = path / f"rng_rank{env.rank}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    else:
        log.warning("%s: no RNG state for rank %d (saved with world size %s); reseeding", path, env.rank,
                    state.get("world_size"))
        seed_all(state["seed"] + env.rank + state["step"])
    return state
