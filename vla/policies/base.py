"""What every policy offers the evaluator, the robot loop and the foresight tools.

A policy consumes raw-unit observation dicts (the keys of `vla.keys`) plus the instruction, keeps its
own observation history, and predicts chunks of raw-unit actions. Which action of which chunk runs
when is not its business: `vla.policies.executor.ChunkExecutor` executes chunks, in evaluation and on
a robot alike.

    policy.reset()
    policy.observe(obs, instruction)                 # a tick on which no chunk is needed
    prediction = policy.predict(obs, instruction)    # (chunk, action_dim) actions + foreseen frames

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
    # steps ahead -> {image key: (H, W, 3) uint8}: the frames foreseen that many steps after the current one
    foresight: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


class Policy(Protocol):
    features: dict[str, keys.Spec]  # the observation keys it reads and `action`, as in the store it learnt from
    history: int  # observations `predict` reads (1: the current one only)
    chunk: int  # actions in each predicted chunk
    n_action_steps: int  # actions executed from each chunk before predicting again
    temporal_ensemble: float  # k > 0: ACT's temporal ensembling, weights exp(-k * i), oldest first

    def reset(self) -> None: ...  # start an episode

    def observe(self, obs: dict[str, np.ndarray], instruction: str) -> None: ...  # take an observation, no prediction

    def predict(self, obs: dict[str, np.ndarray], instruction: str) -> Prediction: ...  # observe + predict a chunk


class ZeroPolicy:
    """Chunks of zeros: the baseline a trained policy must clearly beat, and `vla control --policy zero`
    (rehearsing a robot and its shield without weights)."""

    history, temporal_ensemble = 1, 0.0

    def __init__(self, features: dict[str, keys.Spec], chunk: int = 1):
        self.features, self.chunk = features, chunk
        self.n_action_steps = chunk

    def reset(self) -> None: ...

    def observe(self, obs: dict[str, np.ndarray], instruction: str) -> None: ...

    def predict(self, obs: dict[str, np.ndarray], instruction: str) -> Prediction:
        return Prediction(np.zeros((self.chunk, *self.features[keys.ACTION].shape), np.float32))


class ExpertPolicy:
    """A suite's scripted expert behind the policy interface (privileged: it reads the env's state).
    It plans one action at a time, from the current observation alone."""

    history, chunk, n_action_steps, temporal_ensemble = 1, 1, 1, 0.0

    def __init__(self, env, expert, seed: int = 0):
        self.features = env.unwrapped.feature_specs()
        self.expert, self.seed = expert, seed

    def reset(self) -> None:
        self.expert.reset(self.seed)

    def observe(self, obs: dict[str, np.ndarray], instruction: str) -> None: ...

    def predict(self, obs: dict[str, np.ndarray], instruction: str) -> Prediction:
        return Prediction(np.asarray(self.expert.act(obs), np.float32)[None])  # (1, action_dim)
