"""Checkpoints and weight files: written atomically, read as untrusted input, in this
one module (the jobs, the weight loading of finetune/detect, visualize and the hub
all read through :func:`read_weights` or :func:`load_checkpoint`).

A checkpoint is a dict of tensors and plain Python values (model, optimizer and
scaler state dicts, the schedule position, the step, the RNG states), so it loads
with ``torch.load(weights_only=True)``: no pickled code runs on load.

Atomic write: the state goes to a temporary file in the same folder, is flushed
to disk, then renamed over the target (``os.replace`` is atomic on POSIX), and the
folder entry is synced. A crash or kill at any point leaves either the previous
checkpoint or the new one, never a torn file."""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import yaml


PAUSE_ENV = "LOMAR_TEST_PAUSE_CHECKPOINT_WRITE"
_writes_in_this_process = 0


def _test_pause(tmp: str) -> None:
    """Test hook, inert unless $LOMAR_TEST_PAUSE_CHECKPOINT_WRITE is N: the N-th write
    of this process stops mid-way (part of the bytes in the temporary file, none
    flushed, synced or renamed), says so on stderr and sleeps, so that a test can
    kill the process exactly there."""
    global _writes_in_this_process
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    _writes_in_this_process += 1
    if _writes_in_this_process == int(wanted):
        print(f"lomar.checkpoint: paused writing {tmp} ({PAUSE_ENV}={wanted})", file=sys.stderr,
              flush=True)
        time.sleep(600)


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a write that was killed (one writer per path: rank 0).
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            _test_pause(tmp)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding pickled objects
        raise RuntimeError(f"checkpoint {path} could not be read safely: {exc}") from exc
    if not isinstance(state, dict):
        raise RuntimeError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def rng_state() -> dict:
    """The state of every random number generator a training step draws from
    (Python, NumPy, torch CPU and every CUDA device), as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_safetensors(state_dict: dict, path: str | os.PathLike) -> Path:
    """Write model weights as a .safetensors file (tensors only, no code), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()
               if isinstance(v, torch.Tensor)}
    skipped = sorted(set(state_dict) - set(tensors))
    if skipped:
        raise ValueError(f"export_safetensors: state_dict entries must be tensors, got "
                         f"non-tensors at {skipped}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def convert_official(checkpoint: dict) -> dict:
    """A state dict for lomar.models from the authors' LoMaR checkpoint (pretraining
    or fine-tuning; the dict saved with the state dict under ``model``, or the state
    dict itself).

    Their iRPE table ``blocks.{i}.attn.rpe_k.lookup_table_weight`` is laid out
    (heads, head_dim, buckets), one head when shared: it becomes
    ``blocks.{i}.attn.rpe_table`` (buckets, head_dim), or (heads, buckets, head_dim).
    Their pretraining model's ``pos_embed`` is unused (frozen, never added) and dropped.
    Every other name is the same."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError("convert_official: expected the authors' checkpoint dict (key 'model') "
                         "or its state dict")
    out = {}
    for name, value in state.items():
        if name == "pos_embed":
            continue
        if name.endswith(OFFICIAL_RPE_SUFFIX):
            if value.dim() != 3:
                raise ValueError(f"convert_official: {name} must be (heads, head_dim, buckets), "
                                 f"got {tuple(value.shape)}")
            table = value.permute(0, 2, 1).contiguous()  # (heads, buckets, head_dim)
            out[name.replace("rpe_k.lookup_table_weight", "rpe_table")] = (
                table[0] if table.shape[0] == 1 else table)
            continue
        out[name] = value
    return out


OFFICIAL_RPE_SUFFIX = "attn.rpe_k.lookup_table_weight"


class Weights(NamedTuple):
    state: dict    # the state dict, in our names
    source: str    # "lomar" (ours) or "official" (the authors', converted)
    config: dict   # the job's config stored with it (or beside a .safetensors), or {}


def read_weights(path: str | os.PathLike) -> Weights:
    """A model's weights from any file the package accepts, read once: our
    ``checkpoint-*.pt`` (state dict under ``model``, the job's config under ``config``),
    our ``model.safetensors`` (the run's ``config.yaml`` beside it, when there is one),
    or the authors' checkpoints (recognised by their iRPE table names, converted by
    :func:`convert_official`). No pickled code runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = {}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
        beside = path.parent / "config.yaml"
        if beside.is_file():
            config = yaml.safe_load(beside.read_text()) or {}
    else:
        # The authors' files also hold their argparse options: allow that one class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = load_checkpoint(path)
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        state = state.get("model", state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path}: expected a state dict of tensors (under 'model' "
                         f"or at the top level)")
    if any(k.endswith(OFFICIAL_RPE_SUFFIX) for k in state):
        return Weights(convert_official(state), "official", {})
    return Weights(state, "lomar", config)

