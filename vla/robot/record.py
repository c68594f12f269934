"""Recording a control run as one episode of a trajectory store, so deployments become training data.

    recorder = Recorder("runs/deploy.zarr", robot_features(robot), fps=10)   # opens or creates; checks the schema
    ... recorder.add(obs.data, sent_action) every tick the shield accepted the observation ...
    recorder.write(instruction="open the drawer", task="drawer-close-v3", success=True)

The store is opened (or created, kind `robot`) before the robot moves, so a wrong schema or a store
locked by another writer fails the run before it starts. Each step is the observation the policy saw
and the action the robot reported sending (after the shield and the robot's own clipping): what was
done, not what was asked. Ticks whose observation the watchdog rejected (stale frames, NaN state) are
left out. The episode's source is `policy`. A store recorded at another rate is refused (its steps
would not be 1/fps apart), and a store created for a run that recorded nothing is removed again.
"""

from __future__ import annotations

import logging

import numpy as np

from vla import keys
from vla.datasets.store import StoreError, TrajectoryStore

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, path: str, features: dict[str, keys.Spec], fps: float):
        self.path, self.features = str(path), dict(features)
        self.created = not TrajectoryStore.exists(self.path)
        if self.created:
            self.store = TrajectoryStore.create(self.path, self.features, fps=fps, kind="robot")
        else:
            self.store = TrajectoryStore.open(self.path, mode="a")
            self._check_schema(fps)
        self.steps: dict[str, list[np.ndarray]] = {k: [] for k in self.features}

    def _check_schema(self, fps: float) -> None:
        have = self.store.specs
        if self.store.kind != "robot":
            self.store.close()
            raise StoreError(f"{self.path} holds {self.store.kind} data; a control run records robot trajectories")
        if self.store.fps != fps:
            self.store.close()
            raise StoreError(f"{self.path} holds {self.store.fps:g} fps episodes and this run records at {fps:g} Hz; "
                             f"run at --hz {self.store.fps:g} or record into another store")  # fmt: skip
        mismatched = [k for k in set(have) | set(self.features) if k not in have or k not in self.features
                      or tuple(have[k].shape) != tuple(self.features[k].shape)]  # fmt: skip
        if mismatched:
            self.store.close()
            raise StoreError(
                f"{self.path} has keys {sorted(have)} with other shapes or names than this robot's "
                f"{sorted(self.features)} (differ: {', '.join(sorted(mismatched))}); record into another store"
            )

    def add(self, data: dict[str, np.ndarray], action: np.ndarray) -> None:
        for key in self.features:
            value = action if key == keys.ACTION else data[key]
            self.steps[key].append(np.array(value, dtype=self.features[key].dtype, copy=True))

    def __len__(self) -> int:
        return len(self.steps[keys.ACTION])

    def write(self, *, instruction: str, task: str, success: bool, seed: int = 0) -> int | None:
        """Append the run as one episode and commit it; returns its index (None if no step was recorded)."""
        try:
            if not len(self):
                log.warning("nothing recorded: no tick had a valid observation and a sent action")
                return None
            episode = {k: np.stack(v) for k, v in self.steps.items()}
            return self.store.add_episode(episode, instruction=instruction, task=task, success=bool(success),
                                          seed=int(seed), source="policy")  # fmt: skip
        finally:
            self.close()

    def close(self) -> None:
        self.store.close_or_remove(self.created)
