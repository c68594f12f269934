"""Policy inference for the control loop: chunks on the wall clock, run in the tick or in a worker thread.

A chunk predicted from an observation captured at time t is scheduled by that time: action i is due at
t + i/hz. At each tick the loop asks `ChunkSchedule.pick(now)` for the action due now, the index
rounded to the nearest slot (so tick jitter under half a period neither repeats nor skips an action);
actions whose slot has passed are dropped and counted, an action is never played twice. With
temporal ensembling (k > 0) every chunk still covering now votes, weighted exp(-k * i) with i = 0 for
the oldest, as in ACT; otherwise the newest chunk alone decides.

`SyncInference` predicts inside the tick when the newest chunk's first `steps` actions are used up
(like `VLAPolicy.select_action`'s queue): simple, but a slow policy stretches the tick.
`AsyncInference` runs the policy in a background thread: the loop hands it every valid observation and
asks for a new chunk early enough (its measured latency ahead) that the next arrives before the current
runs out; the tick never waits for the policy. Torch releases the GIL inside its kernels, so the two
threads overlap on separate cores.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vla.robot.protocol import Observation

log = logging.getLogger(__name__)


def predict_chunk(policy, data: dict, instruction: str) -> np.ndarray:
    """(chunk, action_dim) raw actions; a policy with only `select_action` gives a chunk of one."""
    if hasattr(policy, "predict"):
        return np.asarray(policy.predict(data, instruction).actions, np.float32)
    return np.asarray(policy.select_action(data, instruction), np.float32)[None]


def policy_history(policy) -> int:
    """How many past observations the policy reads (its `data.history`), so the worker can replay them."""
    cfg = getattr(policy, "cfg", None)
    return int(getattr(getattr(cfg, "data", None), "history", 1) or 1)


@dataclass
class Chunk:
    actions: np.ndarray  # (n, action_dim) raw units
    obs_time: float  # capture time of the observation it was predicted from
    next_index: int = 0  # the first action neither played nor dropped
    used: bool = False


@dataclass
class Pick:
    action: np.ndarray | None  # None: nothing due (first chunk pending, or the chunks ran out)
    dropped: int = 0  # actions skipped because their time had passed
    first_use_of: float | None = None  # obs_time of a chunk used for the first time (observation-to-action)


@dataclass
class ChunkSchedule:
    hz: float
    ensemble: float = 0.0  # k > 0: temporal ensembling with weights exp(-k * i), oldest first
    chunks: list[Chunk] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, actions: np.ndarray, obs_time: float) -> None:
        with self.lock:
            if not self.ensemble:
                self.chunks.clear()  # the newest chunk alone decides
            self.chunks.append(Chunk(np.asarray(actions, np.float32), obs_time))

    def _slot(self, chunk: Chunk, now: float) -> int:
        return max(round((now - chunk.obs_time) * self.hz), chunk.next_index)

    def left(self, now: float, steps: int) -> int | None:
        """Actions of the newest chunk's first `steps` still to play from now (None before the first chunk)."""
        with self.lock:
            if not self.chunks:
                return None
            newest = self.chunks[-1]
            return max(0, min(steps, len(newest.actions)) - self._slot(newest, now))

    def pick(self, now: float) -> Pick:
        with self.lock:
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
            self.chunks = [c for c in self.chunks if c.next_index < len(c.actions)] or self.chunks[-1:]
            if votes:
                w = np.exp(-self.ensemble * np.arange(len(votes)))
                pick.action = ((w[:, None] * np.stack(votes)).sum(0) / w.sum()).astype(np.float32)
            return pick


class SyncInference:
    """Predict in the tick when the newest chunk's first `steps` actions are used up; otherwise observe."""

    def __init__(self, policy, instruction: str, schedule: ChunkSchedule, steps: int):
        self.policy, self.instruction, self.schedule, self.steps = policy, instruction, schedule, steps
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def step(self, obs: Observation) -> None:
        left = self.schedule.left(time.monotonic(), self.steps)
        if self.schedule.ensemble or not left:
            start = time.perf_counter()
            chunk = predict_chunk(self.policy, obs.data, self.instruction)
            self.latencies.append(time.perf_counter() - start)
            self.schedule.add(chunk, obs.time)
        elif hasattr(self.policy, "observe"):
            self.policy.observe(obs.data, self.instruction)


class AsyncInference:
    """A worker thread that predicts chunks from the newest observation while the loop keeps its rate."""

    def __init__(self, policy, instruction: str, schedule: ChunkSchedule, steps: int):
        self.policy, self.instruction, self.schedule, self.steps = policy, instruction, schedule, steps
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self._pending: deque[Observation] = deque(maxlen=policy_history(policy))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="vla-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def step(self, obs: Observation) -> None:
        """Hand over an observation; request a chunk when the current one will run out within a latency."""
        with self._lock:
            self._pending.append(obs)
            if self._busy:
                return
            left = self.schedule.left(time.monotonic(), self.steps)
            lead = math.ceil(self._latency() * self.schedule.hz)
            if self.schedule.ensemble or left is None or left <= lead:
                self._busy = True
                self._wake.set()

    def _latency(self) -> float:
        recent = self.latencies[-5:]
        return float(np.median(recent)) if recent else 0.0

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            with self._lock:
                observations = list(self._pending)
                self._pending.clear()
            try:
                start = time.perf_counter()
                # The policy's history must see every tick, not only those it predicted from.
                for past in observations[:-1]:
                    if hasattr(self.policy, "observe"):
                        self.policy.observe(past.data, self.instruction)
                chunk = predict_chunk(self.policy, observations[-1].data, self.instruction)
                self.latencies.append(time.perf_counter() - start)
                self.schedule.add(chunk, observations[-1].time)
            except BaseException as e:  # surfaced to the loop, which stops safely
                log.exception("inference worker failed")
                self.error = e
                return
            finally:
                with self._lock:
                    self._busy = False
