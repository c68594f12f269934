"""`vla foresight`: what the policy foresees beside what happens, as video, a PNG grid and metrics.

    vla foresight --policy runs/quickstart/policy --suite metaworld --tasks drawer-close-v3 --out runs/fs
    vla foresight --policy runs/quickstart/policy --store runs/quickstart/demos.zarr --episode 3 --out runs/fs

In a suite the policy re-plans every step (the first action of each predicted chunk is executed) so
every frame has its foresight; a stored episode is replayed observation by observation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vla import envs, keys
from vla.collect import episode_seed
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError
from vla.viz import ForesightRun, run_foresight, write_media

log = logging.getLogger(__name__)


def _policy(path: str):
    from vla.policies.vla_policy import VLAPolicy

    return VLAPolicy.from_pretrained(path)


def rollout(policy, suite_name: str, task: str, seed: int, max_steps: int, split: str = "train"):
    """A re-planning rollout in the suite; returns the run and the env's control rate."""
    suite = envs.get_suite(suite_name)
    image_keys = [k for k in policy.features if keys.is_image_key(k)]
    cameras = tuple(keys.camera_of(k) for k in image_keys)
    env = suite.make_env(task, image_size=policy.features[image_keys[0]].shape[0], cameras=cameras, split=split)
    try:
        obs, info = env.reset(seed=seed)
        state = {"obs": obs, "done": False, "after": None}

        def observations():
            for _ in range(max_steps):
                if state["done"]:
                    return
                yield state["obs"]

        def act(action: np.ndarray) -> None:
            obs, _, terminated, truncated, step_info = env.step(action)
            state["obs"] = obs
            if step_info[keys.SUCCESS] and state["after"] is None:
                state["after"] = 0
            if state["after"] is not None:
                state["after"] += 1  # keep going long enough for the last foresight to come true
            state["done"] = terminated or truncated or (state["after"] or 0) > policy.cfg.data.foresight_offset + 5

        run = run_foresight(policy, observations(), info[keys.INSTRUCTION], act)
        return run, env.unwrapped.fps
    finally:
        env.close()


def replay(policy, store_path: str, episode: int) -> tuple[ForesightRun, float]:
    """Replay a stored episode's observations; returns the run and the store's rate."""
    store = TrajectoryStore.open(store_path)
    missing = [k for k in policy.features if k != keys.ACTION and k not in store.specs]
    if missing:
        raise UserError(f"{store_path} lacks {', '.join(missing)}, which the policy reads")
    data = store.episode(episode, [k for k in policy.features if k != keys.ACTION])
    steps = len(next(iter(data.values())))
    observations = ({k: v[t] for k, v in data.items()} for t in range(steps))
    instruction = store.episode_meta(episode)[keys.INSTRUCTION]
    return run_foresight(policy, observations, instruction), store.fps


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
    """Write media and metrics per task (suite mode) or for one stored episode; returns their summaries."""
    if (suite is None) == (store is None):
        raise UserError("give either --suite and --tasks, or --store and --episode")
    policy = _policy(policy_path)
    summaries = []
    if store is not None:
        runs = [(f"episode-{episode}", *replay(policy, store, episode))]
    else:
        names = envs.resolve_tasks(envs.get_suite(suite), tasks or "")
        runs = []
        for task in names:
            task_seed = episode_seed(seed, suite, "foresight", task, 0)
            runs.append((task, *rollout(policy, suite, task, task_seed, max_steps)))
    for name, run, fps in runs:
        paths = write_media(run, Path(out) / name, fps)
        summaries.append({"name": name, "instruction": run.instruction, "steps": len(run.observed),
                          "mean": run.metrics()["mean"], "paths": {k: str(v) for k, v in paths.items()}})  # fmt: skip
    return summaries
