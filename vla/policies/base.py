"""What every policy offers the evaluator, the robot loop and the foresight tools.

A policy consumes raw-unit observation dicts (the keys of `vla.keys`) plus the instruction, and returns
raw-unit actions. It keeps its own observation history and action queue; `reset()` starts an episode.

    policy.reset()
    action = policy.select_action(obs, instruction)   # (action_dim,) float32, raw units
    policy.last_prediction                            # the Prediction behind that action, if the model ran

Baselines that need no weights live here too: `ZeroPolicy` (the do-nothing reference every success
table is compared with) and `ExpertPolicy` (a suite's scripted expert, to validate the evaluator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vla import keys


@dataclass
class Prediction:
    actions: np.ndarray  # (chunk, action_dim) float32, raw units, starting at the current step
    foresight: dict[str, np.ndarray] = field(default_factory=dict)  # image key -> (H, W, 3) uint8, `offset` ahead
    foresight_offset: int = 0


class Policy(Protocol):
    features: dict[str, keys.Spec]  # the observation keys it reads and `action`, as in the store it learnt from

    def reset(self) -> None: ...

    def select_action(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray: ...

    last_prediction: Prediction | None


class ZeroPolicy:
    """Always outputs zeros: the baseline a trained policy must clearly beat."""

    def __init__(self, features: dict[str, keys.Spec]):
        self.features = features
        self.last_prediction = None

    def reset(self) -> None:
        self.last_prediction = None

    def select_action(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        return np.zeros(self.features[keys.ACTION].shape, np.float32)


class ExpertPolicy:
    """A suite's scripted expert behind the policy interface (privileged: it reads the env's state)."""

    def __init__(self, env, expert, seed: int = 0):
        self.features = env.unwrapped.feature_specs()
        self.expert, self.seed = expert, seed
        self.last_prediction = None

    def reset(self) -> None:
        self.expert.reset(self.seed)

    def select_action(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        return np.asarray(self.expert.act(obs), np.float32)
