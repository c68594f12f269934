"""Run one episode in a suite env and keep what a store needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from vla import keys


@dataclass
class Episode:
    data: dict[str, np.ndarray]  # {key: (T, *shape)}: observations seen and actions taken
    instruction: str
    task: str
    success: bool
    seed: int
    steps_to_success: int | None  # first step whose transition reported success


def run_episode(
    env: gym.Env,
    act: Callable[[dict[str, np.ndarray]], np.ndarray],
    seed: int,
    max_steps: int,
    steps_after_success: int = 10,
) -> Episode:
    """Roll out `act` from `reset(seed)`; stop `steps_after_success` steps after the first success,
    at `max_steps`, or when the env terminates or truncates."""
    obs, info = env.reset(seed=seed)
    observations: dict[str, list] = {k: [] for k in obs}
    actions = []
    success_at = None
    for t in range(max_steps):
        action = np.asarray(act(obs), dtype=np.float32)
        for k, v in obs.items():
            observations[k].append(v)
        actions.append(action)
        obs, _, terminated, truncated, step_info = env.step(action)
        if step_info[keys.SUCCESS] and success_at is None:
            success_at = t
        if terminated or truncated or (success_at is not None and t - success_at >= steps_after_success):
            break
    data = {k: np.stack(v) for k, v in observations.items()}
    data[keys.ACTION] = np.stack(actions)
    return Episode(data, info[keys.INSTRUCTION], info[keys.TASK], success_at is not None, seed, success_at)
