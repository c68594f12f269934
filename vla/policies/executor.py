"""Executing action chunks on a clock: one implementation for `vla eval` and `vla control`.

A policy predicts a chunk of actions from the observation captured at time t; the executor decides
which action runs at each tick. Action i of a chunk is due at t + i/hz. Two clocks drive it:

- the step clock (evaluation): hz = 1 and time is the tick index, one tick per `act` (per env step;
  with latency charged, the env steps held while the policy thinks are not ticks);
- the wall clock (a robot): time is `time.monotonic()` in seconds, hz the control rate.

    executor = ChunkExecutor(policy)                      # step clock, the policy's own settings
    executor.reset()
    action, prediction = executor.act(obs, instruction, tick)   # prediction: None on queued ticks

What it does, in order (the robot loop calls the parts: `update` or a worker's `predict`, then `pick`):

1. Queue: a new chunk is predicted when the newest one's first `n_action_steps` actions are used up
   (lerobot's action queue); in between the policy only observes, so its history sees every tick.
2. Temporal ensembling (ACT, k > 0): a chunk is predicted every tick and every chunk still covering
   now votes, weighted exp(-k * i) with i = 0 for the oldest, which smooths the jumps between chunks.
3. Stale actions: the action due now is picked by rounding to the nearest slot, so tick jitter under
   half a period neither repeats nor skips one; actions whose slot has passed (a late chunk, an
   overrun tick) are dropped and counted, and no action is ever played twice.
4. A new instruction drops the queued chunks: they were planned for another goal.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from vla.errors import UserError
from vla.policies.base import Policy, Prediction


@dataclass
class Chunk:
    actions: np.ndarray  # (chunk, action_dim) float32, raw units
    obs_time: float  # capture time of the observation it was predicted from (clock units)
    next_index: int = 0  # the first action neither played nor dropped
    used: bool = False  # some action of it has been picked


@dataclass
class Pick:
    action: np.ndarray | None  # (action_dim,) float32; None: nothing due (first chunk pending, or ran out)
    dropped: int = 0  # actions of the newest chunk skipped because their slot had passed
    first_use_of: float | None = None  # obs_time of a chunk used for the first time (observation-to-action)


class ChunkExecutor:
    """The chunks a policy predicted, and the action due at each tick. Thread-safe: a worker thread may
    `predict` while the loop `pick`s."""

    def __init__(self, policy: Policy, hz: float = 1.0, *, n_action_steps: int | None = None,
                 temporal_ensemble: float | None = None):  # fmt: skip
        """hz: ticks per clock unit (1 for the step clock). The overrides default to the policy's own."""
        self.policy, self.hz = policy, float(hz)
        if n_action_steps is not None:
            check_n_action_steps(policy, n_action_steps)
        self.n_action_steps = int(n_action_steps if n_action_steps is not None else policy.n_action_steps)
        self.temporal_ensemble = float(temporal_ensemble if temporal_ensemble is not None else policy.temporal_ensemble)
        if self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start an episode: the policy forgets its history, the executor its chunks and latencies."""
        self.policy.reset()
        self.chunks: list[Chunk] = []  # oldest first
        self.instruction: str | None = None  # what the queued chunks were predicted for
        self.latencies: list[float] = []  # s, wall time of each `predict` (observations replayed included)

    def clear(self) -> None:
        """Drop every queued chunk."""
        with self._lock:
            self.chunks = []

    # --- the schedule --------------------------------------------------------------------------------
    def _slot(self, chunk: Chunk, now: float) -> int:
        return max(round((now - chunk.obs_time) * self.hz), chunk.next_index)

    def left(self, now: float) -> int | None:
        """Actions of the newest chunk's first `n_action_steps` still to play from `now` (None: no chunk)."""
        with self._lock:
            if not self.chunks:
                return None
            newest = self.chunks[-1]
            return max(0, min(self.n_action_steps, len(newest.actions)) - self._slot(newest, now))

    def due(self, now: float, instruction: str, lead: int = 0) -> bool:
        """Whether a new chunk should be predicted now: with ensembling always; otherwise when the newest
        chunk has at most `lead` actions left (a worker asks its latency ahead), or was for another instruction."""
        if self.temporal_ensemble > 0 or instruction != self.instruction:
            return True
        left = self.left(now)
        return left is None or left <= lead

    def add(self, actions: np.ndarray, obs_time: float) -> None:
        """Queue a chunk (chunk, action_dim) predicted from the observation captured at `obs_time`."""
        with self._lock:
            if not self.temporal_ensemble:
                self.chunks.clear()  # the newest chunk alone decides
            self.chunks.append(Chunk(np.asarray(actions, np.float32), obs_time))

    def pick(self, now: float) -> Pick:
        """The action due at `now`: the newest chunk's, or with ensembling the weighted vote of every chunk
        covering now. Every chunk moves past the slot of `now`, so nothing is played twice."""
        with self._lock:
            pick, votes = Pick(None), []
            for chunk in self.chunks:
                i = self._slot(chunk, now)
                if chunk is self.chunks[-1]:
                    pick.dropped = max(0, min(i, len(chunk.actions)) - chunk.next_index)
                if i < len(chunk.actions):
                    votes.append(chunk.actions[i])
                    if not chunk.used:
                        chunk.used, pick.first_use_of = True, chunk.obs_time
                chunk.next_index = i + 1
            # Spent chunks go, but the newest stays: `left` must say 0 (predict), not None (none yet).
            self.chunks = [c for c in self.chunks if c.next_index < len(c.actions)] or self.chunks[-1:]
            if votes:
                w = np.exp(-self.temporal_ensemble * np.arange(len(votes)))  # oldest first
                pick.action = ((w[:, None] * np.stack(votes)).sum(0) / w.sum()).astype(np.float32)
            return pick

    # --- running the policy --------------------------------------------------------------------------
    def predict(self, obs: dict[str, np.ndarray], instruction: str, obs_time: float, past=()) -> Prediction:
        """Observe `past` (observations since the last call, oldest first), predict from `obs` and queue
        the chunk as captured at `obs_time`. A new instruction first drops the queued chunks."""
        start = time.perf_counter()
        for earlier in past:  # the policy's history must see every tick, not only those it predicted from
            self.policy.observe(earlier, instruction)
        prediction = self.policy.predict(obs, instruction)
        self.latencies.append(time.perf_counter() - start)
        with self._lock:
            if instruction != self.instruction:
                self.chunks = []
                self.instruction = instruction
        self.add(prediction.actions, obs_time)
        return prediction

    def update(self, obs: dict[str, np.ndarray], instruction: str, obs_time: float, now: float) -> Prediction | None:
        """Synchronous inference: predict if a chunk is due at `now`, else only observe. Returns the
        Prediction when one was made."""
        if self.due(now, instruction):
            return self.predict(obs, instruction, obs_time)
        self.policy.observe(obs, instruction)
        return None

    def act(self, obs: dict[str, np.ndarray], instruction: str, tick: int) -> tuple[np.ndarray, Prediction | None]:
        """Step clock: the action (action_dim,) for tick `tick` (0, 1, 2, ... from `reset`) from the
        observation taken at it, and the Prediction if the policy predicted at this tick."""
        prediction = self.update(obs, instruction, obs_time=tick, now=tick)
        action = self.pick(tick).action
        if action is None:
            raise ValueError(f"the policy predicted an empty chunk at tick {tick}: it has no action head")
        return action, prediction


def check_n_action_steps(policy: Policy, n_action_steps: int) -> None:
    """An n_action_steps asked of `policy` (not its own): at least 1 and at most the actions of its chunk."""
    if not 1 <= n_action_steps <= policy.chunk:
        raise UserError(f"n_action_steps must be in [1, {policy.chunk}] (the policy predicts chunks of "
                        f"{policy.chunk} actions), got {n_action_steps}")  # fmt: skip


class StepClockAct:
    """A `ChunkExecutor` on its step clock as an `act(obs, instruction) -> action` for the rollout loop
    (`vla.envs.rollout`): one tick per call (held latency steps are not ticks), and `latest`, the
    Prediction behind the latest action (None before the first). `overrides`: the executor's
    n_action_steps / temporal_ensemble; building one resets the policy."""

    def __init__(self, policy: Policy, **overrides):
        self.executor = ChunkExecutor(policy, **overrides)
        self.ticks, self.latest = 0, None

    def __call__(self, obs: dict, instruction: str) -> np.ndarray:
        action, prediction = self.executor.act(obs, instruction, tick=self.ticks)
        self.ticks += 1
        self.latest = prediction or self.latest
        return action
