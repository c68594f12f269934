"""The contract every benchmark suite meets, so collection, evaluation and the robot loop treat them alike.

A suite is a plain object with:

    name: str                          "metaworld", "tabletop"
    cameras: tuple[str, ...]           every camera it can render
    default_cameras: tuple[str, ...]
    splits: tuple[str, ...]            e.g. ("train", "unseen"); `vla collect` draws `train` by default
    eval_split: str                    the split `vla eval` draws by default: one whose scenes collection
                                       with `train` never drew
    describe_split(split) -> str       what a split's scenes are, for evaluation reports
    groups: dict[str, list[str]]       named task lists, e.g. {"mt10": [...], "mt50": [...]}
    tasks() -> list[str]               every task name
    make_env(task, *, image_size=64, cameras=None, split="train", max_episode_steps=None) -> gym.Env
    make_expert(env) -> Expert         a scripted expert that reads privileged state from env.unwrapped

Every env it makes:
- has a `gymnasium.spaces.Dict` observation space holding `observation.images.<camera>` (uint8, HxWx3,
  upright) for the chosen cameras and `observation.state` (float32), and a float32 Box action space,
  all in raw units (see `vla.keys`); passes `gymnasium.utils.env_checker.check_env`;
- returns `info["instruction"]`, `info["task"]` from `reset` and `info["success"]` from every `step`;
- is reproducible: `reset(seed=s)` gives the same episode for the same s;
- exposes on `env.unwrapped`: `instruction` (str), `fps` (control rate, Hz) and `feature_specs()` ->
  dict of key -> `vla.keys.Spec` for every observation key and `action`.

An expert has `reset(seed)` (seeds its noise) and `act(obs) -> action` (float32, the env's action space).
"""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym
import numpy as np

from vla import keys
from vla.errors import UserError


class Expert(Protocol):
    def reset(self, seed: int) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


class Suite(Protocol):
    name: str
    cameras: tuple[str, ...]
    default_cameras: tuple[str, ...]
    splits: tuple[str, ...]
    eval_split: str
    groups: dict[str, list[str]]

    def tasks(self) -> list[str]: ...

    def describe_split(self, split: str) -> str: ...

    def make_env(
        self,
        task: str,
        *,
        image_size: int = keys.IMAGE_SIZE,
        cameras: tuple[str, ...] | None = None,
        split: str = "train",
        max_episode_steps: int | None = None,
    ) -> gym.Env: ...

    def make_expert(self, env: gym.Env) -> Expert: ...


def check_image_size(image_size) -> None:
    """Raise UserError unless `image_size` is an integer in [keys.MIN_IMAGE_SIZE, keys.MAX_IMAGE_SIZE]:
    every suite's env checks its frames' side here."""
    low, high = keys.MIN_IMAGE_SIZE, keys.MAX_IMAGE_SIZE
    if not isinstance(image_size, int | np.integer) or not low <= image_size <= high:
        raise UserError(f"image_size must be an integer in [{low}, {high}], got {image_size!r}")
