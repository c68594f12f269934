"""Checkpoint directories, written atomically.

    <run>/checkpoint/
      config.yaml          the resolved config (with the features the policy reads and writes)
      model.safetensors    the weights used for inference (the EMA copy), normalizer included
      train_state          optimizer, scheduler, raw weights, RNG states, step and data position:
                           plain tensors and numbers, loaded with torch.load(weights_only=True)

A checkpoint is written to a temporary directory and renamed into place; the previous one is moved
aside first and removed last, so a crash at any point leaves a complete checkpoint to load.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from vla.errors import UserError

CHECKPOINT = "checkpoint"
TRAIN_STATE = "train_state"


def resolve(directory: str | Path) -> Path:
    """A run directory or a checkpoint directory -> the checkpoint directory to load."""
    directory = Path(directory)
    for candidate in (directory, directory / CHECKPOINT, directory / f".{CHECKPOINT}.old"):
        if (candidate / "config.yaml").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise UserError(f"{directory} is not a checkpoint or a run directory with one (no config.yaml + model.safetensors)")


def write(run_dir: Path, save_policy, train_state: dict | None) -> Path:
    """`save_policy(tmp_dir)` writes config and weights; then train_state; then the rename."""
    final, tmp, old = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.tmp", run_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_policy(tmp)
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_train_state(checkpoint_dir: Path) -> dict:
    path = Path(checkpoint_dir) / TRAIN_STATE
    if not path.is_file():
        raise UserError(f"{checkpoint_dir} has no {TRAIN_STATE} to resume from")
    return torch.load(path, weights_only=True)


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
