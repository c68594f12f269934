"""A suite env behind the `Robot` protocol, paced at wall-clock rate: a digital twin to rehearse on.

    robot = SimRobot("metaworld", "drawer-close-v3", hz=10, image_size=64, cameras=("corner",))

Each `send_action` is one env step, so a command moves the scene exactly as the same action did in
the training data. A step is 1/hz of wall-clock time: `send_action` sleeps until the step is due, so
the twin never runs ahead of real time even when driven by a script that does not pace itself, and a
slow controller shows up as a robot that received no command (as on hardware), not as a fast-forward.
(At an `hz` other than the env's own fps the twin runs at hz/fps of the env's native speed.)

The sim's state does not change between steps, so the frame rendered after the last step is current
whenever it is read: an observation is stamped with the time `get_observation` is called.
`info` carries the env's `success` (sticky: once reached it stays) and `done` (the env truncated).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from vla import envs, keys
from vla.robot.protocol import Observation, RobotDisconnected

log = logging.getLogger(__name__)


class SimRobot:
    def __init__(
        self,
        suite: str,
        task: str,
        *,
        hz: float,
        image_size: int = keys.IMAGE_SIZE,
        cameras: tuple[str, ...] | None = None,
        seed: int = 0,
        max_steps: int | None = None,
    ):
        self.suite = envs.get_suite(suite)
        (self.task,) = envs.resolve_tasks(self.suite, task)
        self.name = f"sim:{suite}/{self.task}"
        self.hz, self.seed = float(hz), seed
        self.env = self.suite.make_env(self.task, image_size=image_size, cameras=cameras, max_episode_steps=max_steps)
        self._specs = self.env.unwrapped.feature_specs()
        space = self.env.action_space
        self._low, self._high = space.low.astype(np.float32), space.high.astype(np.float32)
        self._obs: dict | None = None
        self.info: dict = {}
        self.instruction = ""
        self.steps = 0
        self._due: float | None = None

    @property
    def observation_features(self) -> dict[str, keys.Spec]:
        return {k: s for k, s in self._specs.items() if k != keys.ACTION}

    @property
    def action_features(self) -> dict[str, keys.Spec]:
        return {keys.ACTION: self._specs[keys.ACTION]}

    @property
    def is_connected(self) -> bool:
        return self._obs is not None

    def connect(self) -> None:
        """Reset the env to the episode `seed` picks; its instruction is the default one."""
        if self.env is None:
            raise RobotDisconnected(f"{self.name} was closed; make a new SimRobot")
        self._obs, info = self.env.reset(seed=self.seed)
        self.instruction = info[keys.INSTRUCTION]
        self.info = {keys.SUCCESS: False, "done": False}
        self.steps = 0
        self._due = None  # the first step may run at once

    def get_observation(self) -> Observation:
        if self._obs is None:
            raise RobotDisconnected(f"{self.name} is not connected")
        return Observation(dict(self._obs), time.monotonic(), dict(self.info))

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Step the env once with `action` (clipped to its action space); returns the clipped action."""
        if self._obs is None:
            raise RobotDisconnected(f"{self.name} is not connected")
        sent = np.clip(np.asarray(action, np.float32), self._low, self._high)
        self._pace()
        self._obs, _, terminated, truncated, info = self.env.step(sent)
        self.steps += 1
        self.info = {
            keys.SUCCESS: self.info[keys.SUCCESS] or bool(info[keys.SUCCESS]),
            "done": bool(terminated or truncated),
        }
        return sent

    def _pace(self) -> None:
        """Steps on a grid 1/hz apart: wait for this step's slot (half a period early is allowed, so a
        loop pacing itself on its own grid never waits here); when behind, re-anchor instead of racing."""
        period, now = 1.0 / self.hz, time.monotonic()
        if self._due is None or now - self._due > period:
            self._due = now
        elif self._due - period / 2 > now:
            time.sleep(self._due - period / 2 - now)
        self._due += period

    def disconnect(self) -> None:
        """Close the env (once); the twin cannot be reconnected after."""
        self._obs = None
        if self.env is not None:
            self.env.close()
            self.env = None
