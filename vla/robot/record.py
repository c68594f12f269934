"""Recording a control run as one episode of a trajectory store, so deployments become training data.

    recorder = Recorder("runs/deploy.zarr", robot_features(robot), fps=10)   # opens or creates; checks the schema
    ... recorder.add(obs.data, sent_action) every tick the shield accepted the observation ...
    recorder.write(instruction="open the drawer", task="drawer-close-v3", success=True)

The store is opened (or created, kind `robot`) before the robot moves, so a wrong schema (any field of
a key's spec, or the fps) or a store locked by another writer fails the run before it starts; a store
the recorder created is removed again if the run records no episode, so a failed run leaves nothing.
Each step is checked against the schema as it is added (a float frame for a uint8 camera is refused,
naming the key, not stored as black). Each step is the observation the policy saw
and the action the robot reported sending (after the shield and the robot's own clipping): what was
done, not what was asked. Ticks whose observation the watchdog rejected (stale frames, NaN state) are
left out. The episode's source is `policy`. A store recorded at another rate is refused (its steps
would not be 1/fps apart).
"""

from __future__ import annotations

import logging

import numpy as np

from vla import keys
from vla.datasets.store import StoreError, TrajectoryStore
from vla.datasets.store_schema import conform, schema_difference

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, path: str, features: dict[str, keys.Spec], fps: float):
        self.path, self.features, self.fps = str(path), dict(features), float(fps)
        for key, spec in self.features.items():  # a robot whose features break the contract records nothing
            problem = keys.spec_problem(key, spec)
            if problem:
                raise StoreError(f"cannot record into {self.path}: the robot's {problem}")
        self.created = not TrajectoryStore.exists(self.path)
        if self.created:
            self.store = TrajectoryStore.create(self.path, self.features, fps=fps, kind="robot")
        else:
            self.store = TrajectoryStore.open(self.path, mode="a")
            self._check_schema()
        self.steps: dict[str, list[np.ndarray]] = {k: [] for k in self.features}

    def _check_schema(self) -> None:
        problem = None
        if self.store.kind != "robot":
            problem = f"{self.path} holds {self.store.kind} data; a control run records robot trajectories"
        elif difference := schema_difference(self.store.specs, self.features):
            problem = f"{self.path} has another schema than this robot's: {difference}; record into another store"
        elif self.store.fps != self.fps:
            problem = (f"{self.path} holds steps at {self.store.fps:g} fps; this run ticks at {self.fps:g} Hz: "
                       f"pass --hz {self.store.fps:g} or record into another store")  # fmt: skip
        if problem:
            self.store.close()
            raise StoreError(problem)

    def add(self, data: dict[str, np.ndarray], action: np.ndarray) -> None:
        """One step: every key checked against the schema (dtype, shape, values) before any is kept."""
        step = {
            key: np.array(conform(key, spec, action if key == keys.ACTION else data[key], steps=False), copy=True)
            for key, spec in self.features.items()
        }
        for key, value in step.items():
            self.steps[key].append(value)

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
