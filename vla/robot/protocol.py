"""The `Robot` protocol every backend meets, shaped like LeRobot's `Robot` so the two map one to one.

    robot.connect()
    obs = robot.get_observation()        # Observation: data {vla key: array}, capture time, backend info
    sent = robot.send_action(action)     # (action_dim,) float32 raw units -> what the robot actually got
    robot.disconnect()

`observation_features` and `action_features` describe the keys as `vla.keys.Spec`s (LeRobot describes
them as `float` or a shape tuple; `vla.robot.lerobot` translates), so a recorded run is a store with the
same schema as collected data and a policy's features can be checked against a robot before it moves.

Every observation carries the `time.monotonic()` instant its data was captured: the loop's watchdog
judges staleness by it, and the asynchronous scheduler times a predicted chunk's actions from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vla import keys
from vla.errors import UserError


@dataclass
class Observation:
    data: dict[str, np.ndarray]  # vla keys (observation.images.<camera>, observation.state), raw units
    time: float  # capture instant, time.monotonic() seconds
    info: dict = field(default_factory=dict)  # backend extras: the sim's {"success", "done"}; never policy input


class RobotDisconnected(RuntimeError):
    """The robot went away (cable, power, network): the loop stops safely instead of retrying."""


class Robot(Protocol):
    name: str

    @property
    def observation_features(self) -> dict[str, keys.Spec]: ...

    @property
    def action_features(self) -> dict[str, keys.Spec]:  # {"action": Spec}
        ...

    @property
    def is_connected(self) -> bool: ...

    def connect(self) -> None: ...

    def get_observation(self) -> Observation: ...

    def send_action(self, action: np.ndarray) -> np.ndarray: ...

    def disconnect(self) -> None: ...


def robot_features(robot: Robot) -> dict[str, keys.Spec]:
    """Observation and action specs together: the schema of a store recorded from `robot`."""
    return {**robot.observation_features, **robot.action_features}


def check_policy_fits(policy_features: dict[str, keys.Spec], robot: Robot) -> None:
    """Raise `UserError` naming the key if the robot does not provide what the policy reads and writes."""
    have = robot_features(robot)
    for key, spec in policy_features.items():
        if key not in have:
            raise UserError(f"the policy uses {key!r}, which robot {robot.name!r} lacks; it has {', '.join(have)}")
        if tuple(have[key].shape) != tuple(spec.shape):
            raise UserError(
                f"the policy expects {key} of shape {tuple(spec.shape)}, robot {robot.name!r} gives {have[key].shape}"
            )
