"""Asynchronous inference for the control loop: a worker thread predicts chunks while the loop keeps its rate.

Chunks are executed by `vla.policies.executor.ChunkExecutor` on the wall clock, exactly as in sync
mode; only who calls the policy differs. The loop hands every valid observation to `step`; when the
newest chunk will run out within the measured inference latency (or with temporal ensembling, at every
tick the worker is free) the worker replays the observations it has not yet seen into the policy's
history and predicts from the newest, so the next chunk arrives before the current one runs out and
the tick never waits for the policy. Torch releases the GIL inside its kernels, so the two threads
overlap on separate cores.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque

import numpy as np

from vla.policies.executor import ChunkExecutor
from vla.robot.protocol import Observation

log = logging.getLogger(__name__)


class AsyncInference:
    """A worker thread that predicts chunks from the newest observation into `executor`."""

    def __init__(self, executor: ChunkExecutor, instruction: str):
        self.executor, self.instruction = executor, instruction
        self.error: BaseException | None = None  # the worker's failure, for the loop to stop on
        self._pending: deque[Observation] = deque(maxlen=executor.policy.history)  # older ones fell out of the window
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
            lead = math.ceil(self._latency() * self.executor.hz)  # ticks a prediction takes
            if self.executor.due(time.monotonic(), self.instruction, lead):
                self._busy = True
                self._wake.set()

    def _latency(self) -> float:
        """s: the median of the last few predictions (robust to one slow call)."""
        recent = self.executor.latencies[-5:]
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
                newest = observations[-1]
                past = [o.data for o in observations[:-1]]
                self.executor.predict(newest.data, self.instruction, newest.time, past)
            except BaseException as e:  # surfaced to the loop, which stops safely
                log.exception("inference worker failed")
                self.error = e
                return
            finally:
                with self._lock:
                    self._busy = False
