"""Which scenes `vla eval` rolls out: fresh ones (the default) or the policy's own demonstrations'.

`--scenes demonstrations` replays the scenes of the episodes a run trained on: the seeds its first robot
store recorded, less the episodes `vla train` held out for validation (`vla.datasets.sampler.split_episodes`
with the run's `data.val_fraction` and `train.seed`). A policy that fails there fails to imitate what it
was shown, not to generalise to new layouts; the difference between the two is the generalisation gap
(the question of DAgger's and DART's papers: compounding error shows on the training states too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla import keys
from vla.errors import UserError

SCENES = ("fresh", "demonstrations")


def demonstration_seeds(policy_path: str, suite: str, tasks: list[str], episodes: int) -> tuple[str, dict]:
    """(split, {task: seeds}) of the training episodes of the run at `policy_path`: the first `episodes`
    successful ones of each task, in store order, from the run's first robot store.

    Raises UserError when the run config is missing, its store is gone or was collected in another suite,
    or a task has no training episode there."""
    from vla.checkpoint import load_run_config
    from vla.datasets.sampler import split_episodes
    from vla.datasets.store import TrajectoryStore

    cfg = load_run_config(policy_path)
    stores = (TrajectoryStore.open(s.path) for s in cfg.data.stores if TrajectoryStore.exists(s.path))
    robot = next((s for s in stores if s.kind == "robot"), None)  # opened in turn, up to the first robot store
    if robot is None:
        wanted = ", ".join(s.path for s in cfg.data.stores)
        raise UserError(f"--scenes demonstrations needs the run's robot store; none of {wanted} is one here "
                        f"(paths are relative to where `vla train` ran)")  # fmt: skip
    collect = robot.attrs.get("collect", {})
    if collect.get("suite") != suite:
        raise UserError(f"--scenes demonstrations: {robot.path} was collected in {collect.get('suite')!r}, "
                        f"not {suite!r}")  # fmt: skip
    tasks_of = np.asarray([str(t) for t in robot.meta(keys.TASK)])
    train, _ = split_episodes(tasks_of, cfg.data.val_fraction, cfg.train.seed)
    succeeded, seeds = robot.meta(keys.SUCCESS), robot.meta(keys.SEED)
    chosen = {}
    for task in tasks:
        own = [int(seeds[e]) for e in train if tasks_of[e] == task and succeeded[e]][:episodes]
        if not own:
            raise UserError(f"--scenes demonstrations: {Path(robot.path).name} has no training episode of "
                            f"{task!r}; its tasks: {', '.join(sorted(set(tasks_of)))}")  # fmt: skip
        chosen[task] = own
    return collect.get("split", "train"), chosen
