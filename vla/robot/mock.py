"""A scriptable robot for tests and rehearsals: a kinematic model plus injected faults.

    robot = MockRobot(features, faults=[Fault(5, "latency", 0.3), Fault(9, "disconnect")])

Ticks count `get_observation` calls from 0. A fault fires at its tick (or, with `fault_rates`, at random
with that probability per tick, from `seed`):

    latency      the frame is captured, then delivered `value` s late (default 0.3): it arrives stale
    drop         the previous frame comes again, with its old capture time (a camera that missed a frame)
    stale        a frame captured `value` s ago (default 1.0) (a buffered frame from a lagging driver)
    nan_state    the state holds NaN (a sensor glitch)
    obs_error    get_observation raises RuntimeError
    action_error send_action raises RuntimeError (once: the next write goes through)
    nan_reply    send_action moves the robot but reports NaN as what it sent (a driver glitch), this tick
    freeze       from this tick on the cameras repeat their last image (timestamps and state stay live)
    disconnect   from this tick on every call raises RobotDisconnected

The model: in `delta` mode the state's first arm dims move by the action's arm dims (the last action
dim is the gripper, the state's last dim its opening in [0, 1]); in `absolute` mode the state becomes
the action. Images are flat colours that encode the state, so a recording can be told apart by frame,
with the capture count in the corner pixel, as a live camera's noise makes every frame differ.
Every action received is kept in `sent`, so tests can check what reached the robot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from vla import keys
from vla.errors import choice_error
from vla.robot.protocol import Observation, RobotDisconnected

log = logging.getLogger(__name__)

FAULTS = ("latency", "drop", "stale", "nan_state", "obs_error", "action_error", "nan_reply", "freeze", "disconnect")
DEFAULT_VALUES = {"latency": 0.3, "stale": 1.0}


@dataclass
class Fault:
    tick: int
    kind: str  # one of FAULTS
    value: float = 0.0  # seconds for latency/stale (0: the default)

    def __post_init__(self):
        if self.kind not in FAULTS:
            raise choice_error("mock fault", self.kind, FAULTS)


def mock_features(
    cameras=("front",), image_size: int = 32, state_dim: int = 4, action_dim: int = 4
) -> dict[str, keys.Spec]:
    specs = {keys.image_key(c): keys.image_spec(c, image_size, f"mock camera {c!r}") for c in cameras}
    specs[keys.OBS_STATE] = keys.state_spec("mock: positions, then gripper opening in [0, 1]", state_dim)
    specs[keys.ACTION] = keys.action_spec("mock: position commands, then gripper in [-1, 1]", action_dim)
    return specs


class MockRobot:
    name = "mock"

    def __init__(
        self,
        features: dict[str, keys.Spec] | None = None,
        *,
        faults: list[Fault] | None = None,
        fault_rates: dict[str, float] | None = None,
        seed: int = 0,
        action_mode: str = "delta",
        start: list[float] | None = None,
    ):
        features = features or mock_features()
        self._obs_specs = {k: s for k, s in features.items() if k != keys.ACTION}
        self._action_spec = features[keys.ACTION]
        self.faults: dict[int, list[Fault]] = {}
        for f in faults or []:
            self.faults.setdefault(f.tick, []).append(f)
        for kind in fault_rates or {}:
            if kind not in FAULTS:
                raise choice_error("mock fault", kind, FAULTS)
        self.fault_rates = dict(fault_rates or {})
        self.rng = np.random.default_rng(seed)
        self.action_mode = action_mode
        state_dim = self._obs_specs[keys.OBS_STATE].shape[0]
        self.state = np.zeros(state_dim, np.float64) if start is None else np.array(start, np.float64)
        self.tick = -1
        self.sent: list[np.ndarray] = []  # every action that reached the robot, in order
        self.fired: list[tuple[int, str]] = []  # (tick, fault kind) as they happened
        self._connected = False
        self._dead = False  # after a disconnect fault
        self._frozen: dict[str, np.ndarray] | None = None  # the images a frozen camera repeats
        self._captures = 0
        self._last: Observation | None = None

    @property
    def observation_features(self) -> dict[str, keys.Spec]:
        return dict(self._obs_specs)

    @property
    def action_features(self) -> dict[str, keys.Spec]:
        return {keys.ACTION: self._action_spec}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    # --- faults ------------------------------------------------------------------------------------
    def _faults_now(self) -> dict[str, float]:
        now = {f.kind: f.value or DEFAULT_VALUES.get(f.kind, 0.0) for f in self.faults.get(self.tick, [])}
        for kind, p in self.fault_rates.items():
            if self.rng.random() < p:
                now.setdefault(kind, DEFAULT_VALUES.get(kind, 0.0))
        for kind in now:
            self.fired.append((self.tick, kind))
        return now

    def _check_alive(self) -> None:
        if self._dead or not self._connected:
            raise RobotDisconnected("mock robot is not connected")

    # --- the protocol ------------------------------------------------------------------------------
    def get_observation(self) -> Observation:
        self.tick += 1
        self._pending = self._faults_now()
        if "disconnect" in self._pending:
            self._dead = True
        self._check_alive()
        if "obs_error" in self._pending:
            raise RuntimeError(f"mock: camera read failed at tick {self.tick}")
        if "drop" in self._pending:
            if self._last is not None:
                return self._last  # the same frame, its old capture time
            self.fired.remove((self.tick, "drop"))  # nothing to repeat yet: the fault did not happen
        captured = time.monotonic()
        state = self.state.astype(np.float32)
        if "nan_state" in self._pending:
            state[:] = np.nan
        self._captures += 1
        data = {k: self._image(s) for k, s in self._obs_specs.items() if keys.is_image_key(k)}
        if "freeze" in self._pending and self._frozen is None:
            self._frozen = data  # the last live frame: every later one repeats it
        if self._frozen is not None:
            data = {k: v.copy() for k, v in self._frozen.items()}
        data[keys.OBS_STATE] = state
        if "stale" in self._pending:
            captured -= self._pending["stale"]
        if "latency" in self._pending:
            time.sleep(self._pending["latency"])
        self._last = Observation(data, captured, {"tick": self.tick})
        return self._last

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._check_alive()
        if getattr(self, "_pending", {}).pop("action_error", None) is not None:  # one failed write
            raise RuntimeError(f"mock: motor bus write failed at tick {self.tick}")
        action = np.asarray(action, np.float32).reshape(self._action_spec.shape).copy()
        self.sent.append(action)
        self._move(action.astype(np.float64))
        if getattr(self, "_pending", {}).pop("nan_reply", None) is not None:
            return np.full_like(action, np.nan)
        return action

    def _move(self, a: np.ndarray) -> None:
        n = len(self.state)
        if self.action_mode == "absolute":
            self.state[: min(n, len(a))] = a[:n]
            return
        arm = min(n - 1, len(a) - 1)
        self.state[:arm] += a[:arm]
        self.state[-1] = np.clip(0.5 - 0.5 * a[-1], 0.0, 1.0)  # gripper: +1 closes

    def _image(self, spec: keys.Spec) -> np.ndarray:
        colour = (np.tanh(self.state[:3]) * 127 + 128).astype(np.uint8) if len(self.state) >= 3 else 128
        image = np.broadcast_to(np.asarray(colour, np.uint8), spec.shape).copy()
        image[0, 0] = self._captures % 256
        return image
