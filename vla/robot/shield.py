"""The safety shield between the policy and the robot: every command passes through it.

The shield is pure: `shield_action(cfg, memory, proposed, state, dt)` maps the proposed action, the
measured state and what was sent last to (safe action, events, new memory), so property tests can
drive it with any sequence. `Shield` holds the memory for the loop.

Two kinds of robots, said explicitly by `action_mode`:
- `delta` (Meta-World, the tabletop suite, end-effector teleop): the `arm` dims of an action are a
  displacement (times `delta_scale` in position units). The commanded position is the measured
  position `state[state_index]` plus the displacement (`delta_from: measured`, e.g. the tabletop
  suite), or, for controllers that integrate displacements into a target that leads the hand
  (Meta-World's mocap: `delta_from: commanded`), the previous commanded position plus the displacement,
  starting from the measured one. Holding is a zero displacement.
- `absolute` (LeRobot arms: joint goal positions): the `arm` dims are target positions; the step is
  target - last target sent (or the measured position before the first). Holding repeats the last
  target, which is what keeps a position-controlled servo still.

Per tick, in this order: non-finite action -> hold; gripper clipped to its bounds; the step clipped to
`max_step` and `max_velocity * dt`; its change of velocity clipped to `max_acceleration * dt`; the
commanded position clipped to the workspace (a hard wall: it may decelerate harder than the
acceleration limit, and says so with a `workspace` event). Every intervention is an event.

Observations are judged before the policy sees them (`check_observation`): older than `max_obs_age`
(the watchdog), with a non-finite state, or from a frozen camera (`FrozenFrames`: a frame repeated on more
than `max_frozen_ticks` ticks while the arm moved more than a step, though its timestamp is new) -> hold,
and the observation is withheld from the policy.

Nothing non-finite ever reaches the robot: a non-finite proposal is replaced by a hold, and what the
robot reports it sent (`Shield.sent`) is remembered only when finite and of the action's shape; anything
else is a `bad_reply` fault (the loop holds on the next tick), so a glitching reply never becomes the
command a hold repeats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from vla import keys
from vla.errors import UserError, choice_error

ACTION_MODES = ("delta", "absolute")
DELTA_FROM = ("measured", "commanded")
CLAMP_KINDS = ("gripper", "max_step", "velocity", "acceleration", "workspace")  # action changed, still sent
# replaced by a hold (bad_reply: the robot reported a non-finite or malformed command; the next tick holds)
HOLD_KINDS = ("stale_observation", "frozen_camera", "nonfinite_state", "nonfinite_action", "bad_action", "bad_reply")
SAFE_STOP = "safe_stop"  # hold, then disconnect: signals, exceptions, disconnects, a watchdog that keeps firing
ROUNDING = 1e-6  # a change under this share of its limit is float rounding (float32 actions), not a clamp event


@dataclass
class ShieldConfig:
    action_mode: str = "delta"  # delta | absolute (see the module docstring)
    arm: list[int] = field(default_factory=lambda: [0, 1, 2])  # action dims that command positions
    state_index: list[int] = field(default_factory=lambda: [0, 1, 2])  # state dims measuring them, same order
    delta_scale: float = 1.0  # delta mode: position units per action unit (raw Meta-World actions are metres)
    delta_from: str = "measured"  # delta mode: what a displacement adds to: measured | commanded (see docstring)
    workspace_low: list[float] = field(default_factory=list)  # bounds of the commanded position; empty: none
    workspace_high: list[float] = field(default_factory=list)
    max_step: list[float] = field(default_factory=lambda: [0.01])  # per tick and arm dim (one value: every dim)
    max_velocity: list[float] = field(default_factory=lambda: [1.0])  # position units / s
    max_acceleration: list[float] = field(default_factory=lambda: [20.0])  # position units / s^2
    gripper: int | None = 3  # action dim of the gripper command; null: no gripper
    gripper_low: float = -1.0
    gripper_high: float = 1.0
    gripper_state: int | None = None  # absolute mode: state dim measuring the gripper (held before any command)
    gripper_hold: float = 0.0  # gripper command held before any was sent, when there is no gripper_state
    max_obs_age: float = 0.5  # s: an older observation makes the shield hold (the watchdog)
    max_frozen_ticks: int | None = 3  # ticks a frame may repeat while the arm moves; more: hold; null: no check
    stop_after: float = 1.0  # s of uninterrupted fault holds before a safe stop
    stop_hold: float = 0.3  # s a safe stop keeps holding before it disconnects

    def __post_init__(self):
        if self.action_mode not in ACTION_MODES:
            raise choice_error("shield action_mode", self.action_mode, ACTION_MODES)
        if self.delta_from not in DELTA_FROM:
            raise choice_error("shield delta_from", self.delta_from, DELTA_FROM)
        n = len(self.arm)
        if len(self.state_index) != n:
            raise UserError(f"shield state_index {self.state_index} must name one state dim per arm dim {self.arm}")
        if len(self.workspace_low) != len(self.workspace_high) or len(self.workspace_low) not in (0, n):
            raise UserError(f"shield workspace_low/high need {n} values each (one per arm dim) or none")
        if np.any(np.asarray(self.workspace_low) > np.asarray(self.workspace_high)):
            raise UserError(f"shield workspace_low {self.workspace_low} exceeds workspace_high {self.workspace_high}")
        for name in ("max_step", "max_velocity", "max_acceleration"):
            values = getattr(self, name)
            if len(values) not in (1, n) or min(values) <= 0:
                raise UserError(f"shield {name} must be 1 or {n} positive values, got {values}")
        if self.gripper is not None and self.gripper in self.arm:
            raise UserError(f"shield gripper dim {self.gripper} is also an arm dim {self.arm}")
        if self.gripper_low > self.gripper_high:
            raise UserError(f"shield gripper_low {self.gripper_low} exceeds gripper_high {self.gripper_high}")
        if min(self.max_obs_age, self.stop_after) <= 0 or self.stop_hold < 0 or self.delta_scale <= 0:
            raise UserError("shield max_obs_age, stop_after and delta_scale must be > 0, stop_hold >= 0")
        frozen = self.max_frozen_ticks
        if frozen is not None and (not isinstance(frozen, int) or isinstance(frozen, bool) or frozen < 1):
            raise UserError(f"shield max_frozen_ticks must be an integer >= 1 or null (no check), got {frozen!r}")

    def check_dims(self, action_dim: int, state_dim: int) -> None:
        """Every action dim must be shielded (arm or gripper); indices must exist."""
        dims = sorted([*self.arm, *([] if self.gripper is None else [self.gripper % action_dim])])
        if dims != list(range(action_dim)):
            raise UserError(
                f"shield arm {self.arm} + gripper {self.gripper} must cover the {action_dim} action dims exactly once"
            )
        used = [*self.state_index, *([] if self.gripper_state is None else [self.gripper_state])]
        if used and not all(-state_dim <= i < state_dim for i in used):
            raise UserError(f"shield state indices {used} are out of range for a state of {state_dim} dims")

    def per_dim(self, name: str) -> np.ndarray:
        return np.broadcast_to(np.asarray(getattr(self, name), np.float64), (len(self.arm),))


@dataclass
class SafetyEvent:
    tick: int
    time: float  # seconds since the loop started
    kind: str  # one of CLAMP_KINDS, HOLD_KINDS, SAFE_STOP
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ShieldMemory:
    last_action: np.ndarray | None = None  # the last command sent
    last_velocity: np.ndarray | None = None  # its arm velocity (position units / s); zero after a hold
    target: np.ndarray | None = None  # the commanded arm position (delta mode: the sum of the displacements)


def hold_action(cfg: ShieldConfig, memory: ShieldMemory, state: np.ndarray, action_dim: int) -> np.ndarray | None:
    """The command that keeps the robot where it is; None when there is nothing safe to send (absolute
    mode before any command, with an unreadable state): a position servo then keeps its last goal."""
    action = np.zeros(action_dim, np.float64)
    last = memory.last_action
    if last is not None and not np.all(np.isfinite(last)):
        last = None  # never repeat a non-finite command (the memory never keeps one; this is a second line)
    if cfg.action_mode == "absolute":
        if last is not None:
            return last.astype(np.float32)
        pos = np.asarray(state, np.float64)[cfg.state_index]
        gripper_known = cfg.gripper is None or cfg.gripper_state is not None
        if not np.all(np.isfinite(pos)) or not gripper_known:
            return None
        action[cfg.arm] = pos
        if cfg.gripper is not None:
            action[cfg.gripper] = np.clip(state[cfg.gripper_state], cfg.gripper_low, cfg.gripper_high)
        return action.astype(np.float32)
    if cfg.gripper is not None:
        action[cfg.gripper] = last[cfg.gripper] if last is not None else cfg.gripper_hold
    return action.astype(np.float32)


def shield_action(
    cfg: ShieldConfig, memory: ShieldMemory, proposed: np.ndarray, state: np.ndarray, dt: float
) -> tuple[np.ndarray | None, list[tuple[str, str]], ShieldMemory]:
    """(proposed raw action, measured state) -> (action to send or None, [(kind, detail)], new memory)."""
    action_dim = len(proposed)
    pos = np.asarray(state, np.float64)[cfg.state_index]
    if not np.all(np.isfinite(proposed)):
        return _held(cfg, memory, state, action_dim, [("nonfinite_action", f"proposed {np.asarray(proposed)}")])
    if not np.all(np.isfinite(pos)):
        return _held(cfg, memory, state, action_dim, [("nonfinite_state", f"state {np.asarray(state)}")])
    a = np.asarray(proposed, np.float64).copy()
    events: list[tuple[str, str]] = []
    if cfg.gripper is not None:
        g = float(np.clip(a[cfg.gripper], cfg.gripper_low, cfg.gripper_high))
        if abs(g - a[cfg.gripper]) > ROUNDING * max(abs(cfg.gripper_low), abs(cfg.gripper_high), 1e-12):
            events.append(("gripper", f"{a[cfg.gripper]:.6g} -> {g:.6g}"))
        a[cfg.gripper] = g
    if cfg.action_mode == "delta":
        integrate = cfg.delta_from == "commanded" and memory.target is not None
        ref, step = (memory.target if integrate else pos), a[cfg.arm] * cfg.delta_scale
    else:
        last = memory.last_action
        ref = np.asarray(last, np.float64)[cfg.arm] if last is not None else pos
        step = a[cfg.arm] - ref
    step = _limit_step(cfg, memory, step, dt, events)
    if cfg.workspace_low:
        target = np.clip(ref + step, cfg.workspace_low, cfg.workspace_high)
        moved = np.flatnonzero(np.abs(target - (ref + step)) > 1e-12)
        if len(moved):
            events.append(("workspace", _dims(moved, ref + step, target)))
            # From outside the box (a drifting measurement) move back in, but no faster than allowed.
            limit = np.minimum(cfg.per_dim("max_step"), cfg.per_dim("max_velocity") * dt)
            step = np.clip(target - ref, -limit, limit)
    a[cfg.arm] = step / cfg.delta_scale if cfg.action_mode == "delta" else ref + step
    return a.astype(np.float32), events, ShieldMemory(a.astype(np.float32), step / dt, ref + step)


def _limit_step(cfg: ShieldConfig, memory: ShieldMemory, step: np.ndarray, dt: float, events: list) -> np.ndarray:
    """Clip the per-tick step by max_step and max_velocity, then its velocity change by max_acceleration."""
    max_step, by_velocity = cfg.per_dim("max_step"), cfg.per_dim("max_velocity") * dt
    limit = np.minimum(max_step, by_velocity)
    clipped = np.clip(step, -limit, limit)
    over = np.flatnonzero(np.abs(clipped - step) > ROUNDING * limit)
    if len(over):
        kind = "max_step" if np.all(max_step[over] <= by_velocity[over]) else "velocity"
        events.append((kind, _dims(over, step, clipped)))
    v_prev = memory.last_velocity if memory.last_velocity is not None else np.zeros_like(step)
    dv = cfg.per_dim("max_acceleration") * dt
    v = clipped / dt
    v_new = v_prev + np.clip(v - v_prev, -dv, dv)
    over = np.flatnonzero(np.abs(v_new - v) > ROUNDING * dv)
    if len(over):
        events.append(("acceleration", _dims(over, clipped, v_new * dt)))
    return v_new * dt


def _held(cfg, memory, state, action_dim, events):
    action = hold_action(cfg, memory, state, action_dim)
    last = memory.last_action if action is None else action
    return action, events, ShieldMemory(last, None, memory.target)  # a hold commands no displacement


def _dims(idx: np.ndarray, before: np.ndarray, after: np.ndarray) -> str:
    return ", ".join(f"dim {i}: {before[i]:.6g} -> {after[i]:.6g}" for i in idx)


def check_observation(
    cfg: ShieldConfig, data: dict[str, np.ndarray], age: float, since_last: float = math.inf
) -> list[tuple[str, str]]:
    """Watchdog and sanity check of one observation: [] if the policy may see it, else why to hold.

    `age`: now - its capture time; `since_last`: its capture time - that of the last accepted one
    (<= 0: the same frame again, i.e. the robot dropped one, however young it still looks)."""
    if not math.isfinite(age) or age > cfg.max_obs_age:
        return [("stale_observation", f"age {age * 1000:.0f} ms > {cfg.max_obs_age * 1000:.0f} ms")]
    if since_last <= 0:
        return [("stale_observation", f"not newer than the last frame ({since_last * 1000:.0f} ms)")]
    state = data.get(keys.OBS_STATE)
    if state is not None and not np.all(np.isfinite(state)):
        return [("nonfinite_state", f"state {np.asarray(state)}")]
    return []


class FrozenFrames:
    """Per camera, how many observations in a row repeated the same frame, and how far the arm moved
    meanwhile. A live camera's frames differ (sensor noise, a scene that moves with the arm); a frozen one
    keeps delivering one image under fresh timestamps, which the age check cannot see. An arm at rest, or
    pressing against something, in a still scene (a sim twin) repeats frames legitimately, so repeats are
    a fault only once the measured position has moved by more than one tick's `max_step` on some dim."""

    def __init__(self):
        self.first: dict[str, tuple[np.ndarray, np.ndarray | None, int]] = {}  # key -> (frame, position then, repeats)

    def check(self, cfg: ShieldConfig, data: dict[str, np.ndarray]) -> list[tuple[str, str]]:
        """Record this observation's frames; [("frozen_camera", why)] if one repeated on more than
        `cfg.max_frozen_ticks` ticks while the arm moved, else [] (always [] where that is None)."""
        if cfg.max_frozen_ticks is None:
            return []
        state = data.get(keys.OBS_STATE)
        pos = None if state is None else np.asarray(state, np.float64)[cfg.state_index]
        problems = []
        for key, frame in data.items():
            if not keys.is_image_key(key):
                continue
            frame = np.asarray(frame)
            seen = self.first.get(key)
            if seen is None or seen[0].shape != frame.shape or not np.array_equal(seen[0], frame):
                self.first[key] = (frame.copy(), pos, 0)
                continue
            repeats = seen[2] + 1
            self.first[key] = (seen[0], seen[1], repeats)
            if repeats <= cfg.max_frozen_ticks or pos is None or seen[1] is None:
                continue
            moved = np.abs(pos - seen[1])
            if np.any(moved > cfg.per_dim("max_step")):  # NaN compares False: a NaN state is judged elsewhere
                problems.append(("frozen_camera", f"{key} repeated one frame on {repeats} ticks while the arm "
                                 f"moved {moved.max():.4g} (limit {cfg.max_frozen_ticks} ticks)"))  # fmt: skip
        return problems


class Shield:
    """`ShieldConfig` + the memory of what was sent, for a loop running at `hz`."""

    def __init__(self, cfg: ShieldConfig, action_dim: int, state_dim: int, hz: float):
        cfg.check_dims(action_dim, state_dim)
        self.cfg, self.action_dim, self.dt = cfg, action_dim, 1.0 / hz
        self.memory = ShieldMemory()

    def filter(self, proposed: np.ndarray, state: np.ndarray) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
        proposed = np.asarray(proposed, np.float64).reshape(-1)
        if proposed.shape != (self.action_dim,):
            return self.hold(state, [("bad_action", f"shape {proposed.shape}, expected ({self.action_dim},)")])
        action, events, self.memory = shield_action(self.cfg, self.memory, proposed, state, self.dt)
        return action, events

    def hold(self, state: np.ndarray, events: list | None = None) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
        action, _, self.memory = _held(self.cfg, self.memory, state, self.action_dim, [])
        return action, list(events or [])

    def sent(self, reply: np.ndarray | None) -> list[tuple[str, str]]:
        """The robot reports what it actually sent (it may clip further): remember that, not our command, if
        it is a finite action; anything else is a fault ([("bad_reply", why)]) and our own command stays."""
        if reply is None:
            return []
        values = np.asarray(reply)
        if values.shape != (self.action_dim,) or values.dtype.kind not in "fiu":
            return [("bad_reply", f"send_action returned {values.dtype} {values.shape}, expected ({self.action_dim},)")]
        if not np.all(np.isfinite(values)):
            return [("bad_reply", f"send_action returned {values}")]
        if self.memory.last_action is not None:
            self.memory.last_action = values.astype(np.float32)
        return []
