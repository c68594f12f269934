"""`vla foresight`: what the policy foresees beside what happens, as video, a PNG grid and metrics.

    vla foresight --policy runs/quickstart/policy --suite metaworld --tasks drawer-close-v3 --out runs/fs
    vla foresight --policy runs/quickstart/policy --store runs/quickstart/demos.zarr --episode 3 --out runs/fs

In a suite the policy re-plans every step (the chunk executor with n_action_steps 1: the first action
of each predicted chunk is executed, in the one rollout loop `vla.envs.rollout`) so every frame has its
foresight; a stored episode is replayed observation by observation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vla import envs, keys
from vla.datasets.store import TrajectoryStore
from vla.envs import rollout as env_rollout
from vla.errors import UserError
from vla.policies.base import Prediction
from vla.policies.executor import StepClockAct
from vla.viz import ForesightRun, run_foresight, write_media

log = logging.getLogger(__name__)


class ForesightRecorder(env_rollout.Observer):
    """Builds a `ForesightRun` from a rollout: per step the observation and the prediction behind the action.

    `prediction()` gives that Prediction; the act must predict at every step."""

    def __init__(self, offsets: list[int], fps: float, prediction: Callable[[], Prediction | None]):
        self.offsets, self.fps, self.prediction = offsets, fps, prediction
        self.run: ForesightRun | None = None

    def on_reset(self, run: env_rollout.Rollout, obs: dict, info: dict) -> None:
        self.run = ForesightRun(self.offsets, info[keys.INSTRUCTION], self.fps)

    def on_act(self, run: env_rollout.Rollout, obs: dict, action: np.ndarray) -> None:
        self.run.add(obs, self.prediction())


def rollout(policy, suite_name: str, task: str, seed: int, max_steps: int, split: str = "train"):
    """A re-planning rollout in the suite (a `ForesightRun`). The episode goes on for the farthest horizon
    + 5 steps after success, so the last foresight can come true."""
    suite = envs.get_suite(suite_name)
    image_keys = [k for k in policy.features if keys.is_image_key(k)]
    cameras = tuple(keys.camera_of(k) for k in image_keys)
    env = suite.make_env(task, image_size=policy.features[image_keys[0]].shape[0], cameras=cameras, split=split)
    try:
        offsets = policy.config.foresight_offsets
        # Re-plan at every step, so every frame has its foresight (building the act resets the policy).
        act = StepClockAct(policy, n_action_steps=1, temporal_ensemble=0.0)
        recorder = ForesightRecorder(offsets, env.unwrapped.fps, lambda: act.latest)
        env_rollout.rollout(env, act, seed, max_steps, max(offsets) + 5, [recorder])
        return recorder.run
    finally:
        env.close()


def replay(policy, store_path: str, episode: int) -> ForesightRun:
    """Replay a stored episode's observations, at the store's rate."""
    store = TrajectoryStore.open(store_path)
    missing = [k for k in policy.features if k != keys.ACTION and k not in store.specs]
    if missing:
        raise UserError(f"{store_path} lacks {', '.join(missing)}, which the policy reads")
    if not 0 <= episode < store.num_episodes:
        raise UserError(f"episode {episode} is out of range: {store_path} has {store.num_episodes} episodes")
    data = store.episode(episode, [k for k in policy.features if k != keys.ACTION])
    steps = len(next(iter(data.values())))
    observations = ({k: v[t] for k, v in data.items()} for t in range(steps))
    instruction = store.episode_meta(episode)[keys.INSTRUCTION]
    return run_foresight(policy, observations, instruction, store.fps)


def foresight(
    policy_path: str,
    out: str,
    suite: str | None = None,
    tasks: str | None = None,
    store: str | None = None,
    episode: int = 0,
    seed: int = 0,
    max_steps: int = 200,
) -> list[dict]:
    """Write media and metrics per task (suite mode) or for one stored episode; returns their summaries
    (name, instruction, steps, horizons: {steps ahead: metrics}, paths)."""
    if (suite is None) == (store is None):
        raise UserError("give either --suite and --tasks, or --store and --episode")
    from vla.checkpoint import load_policy

    policy = load_policy(policy_path, acting=store is None)  # a rollout acts; replaying a store does not
    summaries = []
    if store is not None:
        runs = [(f"episode-{episode}", replay(policy, store, episode))]
    else:
        names = envs.resolve_tasks(envs.get_suite(suite), tasks or "")
        runs = []
        for task in names:
            task_seed = envs.episode_seed(seed, suite, "foresight", task, 0)
            runs.append((task, rollout(policy, suite, task, task_seed, max_steps)))
    for name, run in runs:
        paths = write_media(run, Path(out) / name)
        summaries.append({"name": name, "instruction": run.instruction, "steps": len(run.observed),
                          "horizons": run.metrics()["horizons"],
                          "paths": {k: str(v) for k, v in paths.items()}})  # fmt: skip
    return summaries
