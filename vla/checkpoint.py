"""Checkpoints: the only module that reads or writes them. Directories, written atomically.

    <run>/checkpoint/
      policy.yaml          the PolicyConfig (with the features the policy reads and writes)
      model.safetensors    the weights used for inference (the EMA copy), normalizer included
      language.safetensors the frozen sentence encoder's embeddings of the instructions the policy met,
                           so that acting on them needs no language model at start-up (optional)
      config.yaml          the resolved run config (policy + data + train), to resume the run
      train_state          optimizer, scheduler, raw weights, RNG states, step and data position:
                           plain tensors and numbers, loaded with torch.load(weights_only=True)

    policy = load_policy("runs/quickstart/policy")        # a run directory or a checkpoint directory
    save_policy(policy, "exported/")                      # policy.yaml + model.safetensors

A policy directory is `policy.yaml` + `model.safetensors`. Checkpoints written before the policy
contract (no policy.yaml; `model`/`data`/`train` sections in config.yaml) load through
`vla.policies.config.migrate_legacy`.

A checkpoint is written to a temporary directory and renamed into place; the previous one is moved
aside first and removed last, so a crash at any point leaves a complete checkpoint to load.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vla.config import Config, config_from_tree, read_yaml, save_config
from vla.errors import UserError
from vla.policies.config import PolicyConfig, migrate_legacy

CHECKPOINT = "checkpoint"
POLICY_CONFIG = "policy.yaml"
WEIGHTS = "model.safetensors"
RUN_CONFIG = "config.yaml"
TRAIN_STATE = "train_state"
LANGUAGE = "language.safetensors"


def resolve(directory: str | Path) -> Path:
    """A run directory or a checkpoint directory -> the checkpoint directory to load.
    Raises UserError naming the directory when none of the candidates holds a policy."""
    directory = Path(directory)
    for candidate in (directory, directory / CHECKPOINT, directory / f".{CHECKPOINT}.old"):
        has_config = (candidate / POLICY_CONFIG).is_file() or (candidate / RUN_CONFIG).is_file()
        if has_config and (candidate / WEIGHTS).is_file():
            return candidate
    raise UserError(
        f"{directory} is not a checkpoint or a run directory with one (no {POLICY_CONFIG} + {WEIGHTS} in it or in "
        f"its {CHECKPOINT}/)"
    )


# --- policies -------------------------------------------------------------------------------------
def load_policy_config(directory: str | Path) -> PolicyConfig:
    """The PolicyConfig of a checkpoint (or run) directory; older checkpoints' config.yaml is migrated."""
    directory = resolve(directory)
    if (directory / POLICY_CONFIG).is_file():
        tree = read_yaml(directory / POLICY_CONFIG)
        return config_from_tree(migrate_legacy({"policy": tree})).policy
    return load_run_config(directory).policy


def load_run_config(directory: str | Path) -> Config:
    """The resolved run config a checkpoint was trained with (policy + data + train)."""
    directory = resolve(directory)
    path = directory / RUN_CONFIG
    if not path.is_file():
        raise UserError(f"{directory} has no {RUN_CONFIG}: it holds a policy, not a training run")
    return config_from_tree(migrate_legacy(read_yaml(path)))


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's model.safetensors; a truncated or corrupt file is a one-line UserError."""
    path = resolve(directory) / WEIGHTS
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} cannot be read ({e}); it is truncated or corrupt") from None


def load_policy(directory: str | Path, device: str | torch.device = "cpu", *, foresee: bool = True,
                streaming: bool = True, acting: bool = False, compile: bool = False):  # fmt: skip
    """A `VLAPolicy` in eval mode from a checkpoint directory or a run directory (its latest checkpoint).
    foresee/streaming: see `VLAPolicy`; acting: the caller will execute its actions, so a policy without an
    action head (pretrained on video or image-text alone) is refused; compile: `VLAPolicy.compile_inference`.
    Raises UserError for a missing, corrupt or mismatched checkpoint."""
    from vla.policies.vla_policy import VLAPolicy

    directory = resolve(directory)
    config = load_policy_config(directory)
    weights = load_weights(directory)
    policy = VLAPolicy(config, foresee=foresee, streaming=streaming)
    if not any(k.startswith("model.text.") for k in weights):  # saved before the text head existed
        policy.model.text = None
    if not any(k.startswith("model.contrastive.") for k in weights):  # saved before the contrastive head
        policy.model.contrastive = None
    if not any(k.startswith("model.grounding.") for k in weights):  # saved before the grounding head
        policy.model.grounding = None
    try:
        policy.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{directory / WEIGHTS} does not fit its {POLICY_CONFIG}: {first}") from None
    _remember_language(policy, directory / LANGUAGE)
    if acting and policy.model.action_head is None:
        raise UserError(f"{directory}: this checkpoint has no action head (pretrained on video/image-text); "
                        "finetune it with vla train --init-from")  # fmt: skip
    policy = policy.to(device).eval()
    return policy.compile_inference() if compile else policy


def save_policy(policy, directory: str | Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write `policy.yaml` and `model.safetensors` (the policy's own weights, or `weights`, e.g. an EMA copy)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(policy.config, directory / POLICY_CONFIG)
    weights = policy.state_dict() if weights is None else weights
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, directory / WEIGHTS)
    texts = sorted(policy.language.cache)
    if texts:
        embeddings = torch.stack([policy.language.cache[t] for t in texts]).cpu().contiguous()
        save_file({"embeddings": embeddings}, directory / LANGUAGE, metadata={"texts": json.dumps(texts)})


def _remember_language(policy, path: Path) -> None:
    """Hand the sentence embeddings a checkpoint carries (texts -> (N, dim)) to the policy's encoder."""
    if not path.is_file():
        return  # written before checkpoints carried them, or a policy that never met an instruction
    try:
        with safe_open(path, "pt") as f:
            texts, embeddings = json.loads(f.metadata()["texts"]), f.get_tensor("embeddings")
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} cannot be read ({e}); it is truncated or corrupt") from None
    if embeddings.shape != (len(texts), policy.language.dim):
        raise UserError(f"{path} holds {tuple(embeddings.shape)} embeddings for {len(texts)} texts of a "
                        f"{policy.language.dim}-wide language model; it does not belong to this policy")  # fmt: skip
    policy.language.remember(dict(zip(texts, embeddings)))


# --- training runs --------------------------------------------------------------------------------
def write(run_dir: Path, cfg: Config, policy, weights: dict, train_state: dict | None) -> Path:
    """A run's checkpoint: the policy (with `weights`) and the run config, then train_state, then the rename."""
    final, tmp, old = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.tmp", run_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_policy(policy, tmp, weights)
    save_config(cfg, tmp / RUN_CONFIG)
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
    try:
        return torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}); it is truncated or corrupt") from None


def rng_state() -> dict:
    """Every global random number generator a training step may draw from: torch (CPU and each CUDA
    device), numpy and python."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
