"""The fixed-rate control loop: observe, infer, shield, send, on a wall-clock grid, with a report.

    loop = ControlLoop(robot, policy, ShieldConfig(...), LoopConfig("open the drawer", hz=10, duration=10))
    report = loop.run()          # the robot must be connected; a safe stop disconnects it

Tick k starts at t0 + k/hz. It reads an observation; the shield's watchdog judges it (stale or NaN ->
hold, and the policy never sees it); a valid one goes to the inference (sync: predicted in the tick;
async: handed to the worker thread, `vla.robot.inference`); the action due now (picked by the chunk
executor on the wall clock, `vla.policies.executor`) passes the shield and is sent; the robot's reply
is what gets recorded. A tick that overruns by more than a period skips the missed slots instead of
bursting to catch up; the actions of those slots are dropped.

Safe stop (hold for `stop_hold` s, then disconnect) on SIGINT or SIGTERM (handled at the next tick
boundary, so a bus write is never torn; a second signal interrupts at once), on any exception from the
robot or the policy, and when faults keep the shield holding for `stop_after` s.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from vla import keys
from vla.errors import UserError
from vla.options import check_fields, option
from vla.policies.base import Policy
from vla.policies.executor import ChunkExecutor
from vla.robot.inference import AsyncInference
from vla.robot.protocol import Robot, RobotDisconnected
from vla.robot.report import ControlReport, summarize
from vla.robot.shield import (
    CLAMP_KINDS,
    HOLD_KINDS,
    SAFE_STOP,
    FrozenFrames,
    SafetyEvent,
    Shield,
    ShieldConfig,
    check_observation,
)

log = logging.getLogger(__name__)

MODES = ("sync", "async")


@dataclass
class LoopConfig:
    """The loop's settings; `vla control` makes its flags from these fields (see `vla.options`)."""

    instruction: str
    hz: float = option(10.0, gt=0, max=1000, help="control rate")
    mode: str = option("async", choices=MODES, help="async (inference in a worker thread) | sync (in the tick)")
    duration: float | None = option(None, gt=0, help="seconds to run (default: until the episode ends)")
    max_ticks: int | None = option(None, min=1, help="ticks to run at most (default: no limit)")
    temporal_ensemble: float | None = option(None, min=0, help="k > 0: average overlapping chunks with ACT's "
                                             "weights exp(-k*i) (default: the policy's)")  # fmt: skip
    n_action_steps: int | None = option(None, min=1, help="actions played per chunk (default: the policy's)")

    def __post_init__(self):
        check_fields(self)


class SafeStop(Exception):
    """Raised inside the loop to stop safely for a reason of its own (signal, watchdog, policy failure)."""


class ControlLoop:
    def __init__(self, robot: Robot, policy: Policy, shield_cfg: ShieldConfig, cfg: LoopConfig, recorder=None,
                 progress: bool = False):  # fmt: skip
        self.robot, self.policy, self.cfg, self.recorder, self.progress = robot, policy, cfg, recorder, progress
        self.shield_cfg = shield_cfg
        action_dim = robot.action_features[keys.ACTION].shape[0]
        state_dim = robot.observation_features[keys.OBS_STATE].shape[0]
        self.shield = Shield(shield_cfg, action_dim, state_dim, cfg.hz)
        self.executor = ChunkExecutor(policy, cfg.hz, n_action_steps=cfg.n_action_steps,
                                      temporal_ensemble=cfg.temporal_ensemble)  # fmt: skip
        self.worker = AsyncInference(self.executor, cfg.instruction) if cfg.mode == "async" else None
        self.period = 1.0 / cfg.hz
        self.report = ControlReport(cfg.mode, cfg.hz)
        self.starts: list[float] = []
        self.obs_to_action: list[float] = []
        self.last_state = np.zeros(state_dim, np.float32)
        self.fault_since: float | None = None
        self.last_obs_time = -math.inf  # capture time of the last observation the policy saw
        self.frames = FrozenFrames()  # the frozen-camera watch
        self.bad_reply: str | None = None  # the robot's last reply was a fault: hold on the next tick
        self.signal_name: str | None = None
        self.done = False
        self.t0 = 0.0

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> ControlReport:
        self.executor.reset()
        old_handlers, old_switch = self._install_signals(), sys.getswitchinterval()
        sys.setswitchinterval(0.001)  # the GIL changes hands within 1 ms, not 5: the tick waits less on the worker
        total = round(self.cfg.duration * self.cfg.hz) if self.cfg.duration else self.cfg.max_ticks
        bar = tqdm(total=total, unit="tick", desc="control", disable=not self.progress)
        self.t0, k = time.monotonic(), 0
        try:
            self._warm_up()
            bar.reset(total=total)  # its rate from the clock's start: the warm-up may build a compiled step
            if self.worker is not None:
                self.worker.start()
            self.t0 = time.monotonic()
            while not self._should_end(k):
                self._sleep_until(self.t0 + k * self.period)
                if self.signal_name:
                    raise SafeStop(f"{self.signal_name} received")
                self._tick()
                bar.update(1)
                k = self._next_tick(k)
            self.shield.memory.last_velocity = None
            action, _ = self.shield.hold(self.last_state)
            if action is not None:
                self._send(action)  # leave the robot holding, not mid-motion
        except (Exception, KeyboardInterrupt) as e:
            self._safe_stop(e)
        finally:
            if self.worker is not None:
                self.worker.stop()
            bar.close()
            sys.setswitchinterval(old_switch)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return self._finish()

    def _warm_up(self) -> None:
        """Predictions on blank observations before the clock starts: first calls pay for lazy work (the
        instruction's embedding, allocator and kernel caches, the window's first slide) that would
        otherwise overrun the first ticks. The policy and the executor are reset after."""
        start = time.perf_counter()
        blank = {k: np.zeros(s.shape, s.dtype) for k, s in self.robot.observation_features.items()}
        for _ in range(self.policy.history + 1):  # past a full window: the sliding path runs too
            self.policy.observe(blank, self.cfg.instruction)
            chunk = np.asarray(self.policy.predict(blank, self.cfg.instruction).actions)
        if chunk.ndim != 2 or chunk.shape[1] != self.shield.action_dim:
            raise UserError(f"the policy predicts chunks of shape {chunk.shape}; the robot takes "
                            f"{self.shield.action_dim}-d actions")  # fmt: skip
        self.executor.reset()
        self.report.warmup_s = round(time.perf_counter() - start, 3)

    def _should_end(self, k: int) -> bool:
        cfg, r = self.cfg, self.report
        if cfg.duration is not None and k >= round(cfg.duration * cfg.hz):
            r.stop_reason = "duration"
        elif cfg.max_ticks is not None and r.ticks >= cfg.max_ticks:
            r.stop_reason = "max_ticks"
        elif self.done:
            r.stop_reason = "episode_end"
        return bool(r.stop_reason)

    def _sleep_until(self, deadline: float) -> None:
        wait = deadline - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _next_tick(self, k: int) -> int:
        k += 1
        late = time.monotonic() - (self.t0 + k * self.period)
        if late > self.period:  # overran: skip the slots that passed rather than burst through them
            skip = int(late // self.period)
            if self.cfg.duration is not None:  # slots past the end were never going to run
                skip = max(0, min(skip, round(self.cfg.duration * self.cfg.hz) - k))
            self.report.missed_ticks += skip
            k += skip
        return k

    def _tick(self) -> None:
        """One tick; events carry its index among the ticks run (slots skipped after an overrun don't count)."""
        k = self.report.ticks
        self.starts.append(time.monotonic())
        self.report.ticks += 1
        if self.worker is not None and self.worker.error is not None:
            raise SafeStop(f"policy failed: {self.worker.error!r}")
        obs = self.robot.get_observation()
        state = obs.data.get(keys.OBS_STATE)
        if state is not None and np.all(np.isfinite(state)):
            self.last_state = state
        since_last = obs.time - self.last_obs_time
        problems = check_observation(self.shield_cfg, obs.data, time.monotonic() - obs.time, since_last)
        frozen = self.frames.check(self.shield_cfg, obs.data)  # every frame is watched, stale or not
        problems = problems or frozen
        if self.bad_reply is not None:
            problems = [*problems, ("bad_reply", f"holding after the robot's bad reply ({self.bad_reply})")]
            self.bad_reply = None
        pick = None
        if problems:
            action, events = self.shield.hold(self.last_state, problems)
        else:
            self.last_obs_time = obs.time
            if self.worker is not None:
                self.worker.step(obs)
            else:  # sync: a slow prediction stretches this tick, and the pick below drops what it overran
                self.executor.update(obs.data, self.cfg.instruction, obs.time, time.monotonic())
            pick = self.executor.pick(time.monotonic())
            self.report.dropped_actions += pick.dropped
            if pick.action is None:
                self.report.waiting_ticks += 1
                action, events = self.shield.hold(self.last_state)
            else:
                action, events = self.shield.filter(pick.action, self.last_state)
        self._log(k, events)
        self._watchdog(events)
        if action is not None:
            if pick is not None and pick.first_use_of is not None:  # measured as the command is issued
                self.obs_to_action.append(time.monotonic() - pick.first_use_of)
            sent = self._send(action)
            reply = self.shield.sent(sent)
            if reply:  # logged on this tick; the next one holds, and a reply that stays bad escalates
                self.bad_reply = reply[0][1]
                self._log(k, reply)
                self._watchdog([*events, *reply])
            elif self.recorder is not None and not problems:
                self.recorder.add(obs.data, sent)
        if obs.info.get(keys.SUCCESS):
            self.report.success = True
        elif self.report.success is None and keys.SUCCESS in obs.info:
            self.report.success = False
        self.done = bool(obs.info.get("done"))

    # --- safety ------------------------------------------------------------------------------------
    def _send(self, action: np.ndarray) -> np.ndarray:
        """The one path to the robot: a command that is not a finite action of the robot's shape is never
        sent (the shield holds first, so this is the last line, and a bug if it fires)."""
        values = np.asarray(action)
        if values.shape != (self.shield.action_dim,) or not np.all(np.isfinite(values)):
            raise SafeStop(f"refused to send {values!r}: not a finite ({self.shield.action_dim},) action")
        return self.robot.send_action(values.astype(np.float32, copy=False))

    def _log(self, k: int, events: list[tuple[str, str]]) -> None:
        kinds = {kind for kind, _ in events}
        self.report.clamped += bool(kinds & set(CLAMP_KINDS))
        self.report.holds += bool(kinds & set(HOLD_KINDS))
        for kind, detail in events:
            event = SafetyEvent(k, round(time.monotonic() - self.t0, 4), kind, detail)
            self.report.events.append(event.to_json())
            level = logging.INFO if kind in CLAMP_KINDS else logging.WARNING
            log.log(level, "tick %d: %s: %s", k, kind, detail)

    def _watchdog(self, events: list[tuple[str, str]]) -> None:
        """Faults that keep the shield holding for `stop_after` s escalate to a safe stop."""
        faults = [kind for kind, _ in events if kind in HOLD_KINDS]
        if not faults:
            self.fault_since = None
            return
        now = time.monotonic()
        if self.fault_since is None:
            self.fault_since = now
        elif now - self.fault_since >= self.shield_cfg.stop_after:
            raise SafeStop(f"watchdog: {faults[0]} for {now - self.fault_since:.2f} s")

    def _safe_stop(self, error: BaseException) -> None:
        """Hold for `stop_hold` s (unless the robot is gone), then disconnect; log why."""
        if isinstance(error, SafeStop):
            reason = str(error)
        else:
            reason = f"{type(error).__name__}: {error}".rstrip(": ")
        self.report.safe_stops += 1
        self.report.stop_reason = f"safe stop: {reason}"
        signalled = isinstance(error, KeyboardInterrupt) or reason.startswith(("SIGINT", "SIGTERM"))
        self.report.stopped_by = "signal" if signalled else "fault"
        self._log(max(0, self.report.ticks - 1), [(SAFE_STOP, reason)])
        try:
            if not isinstance(error, RobotDisconnected):
                self._hold_for(self.shield_cfg.stop_hold)
        finally:
            try:
                self.robot.disconnect()
            except Exception as e:  # already gone: nothing more to do, but say so
                log.warning("disconnect after safe stop failed: %r", e)

    def _hold_for(self, seconds: float) -> None:
        self.shield.memory.last_velocity = None
        end = time.monotonic() + seconds
        while True:
            try:
                action, _ = self.shield.hold(self.last_state)
                if action is not None:
                    self._send(action)
            except Exception as e:
                log.warning("hold during safe stop failed: %r", e)
                return
            if time.monotonic() + self.period > end:
                return
            time.sleep(self.period)

    def _install_signals(self) -> dict:
        """SIGINT/SIGTERM set a flag the next tick obeys; only the main thread may install handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            raise KeyboardInterrupt(f"second {name}")
        self.signal_name = name

    # --- the report --------------------------------------------------------------------------------
    def _finish(self) -> ControlReport:
        self.report.duration_s = round(float(time.monotonic() - self.t0), 3)
        return summarize(self.report, self.starts, self.period, self.executor.latencies, self.obs_to_action)
