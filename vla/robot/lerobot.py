"""Any LeRobot robot behind the `Robot` protocol, its features mapped to vla keys.

    robot = make_lerobot_robot("so100_follower", {"port": "/dev/ttyACM0", "id": "arm",
                               "cameras": {"front": {"type": "opencv", "index_or_path": 0,
                                                     "width": 640, "height": 480, "fps": 30}}},
                               image_size=64)

LeRobot describes a robot with flat dicts: `observation_features` maps each motor reading
(`shoulder_pan.pos`, ...) to `float` and each camera to its (height, width, 3) shape; `action_features`
maps each motor command to `float`; `get_observation()` and `send_action(dict)` speak those dicts and
`send_action` returns what it actually sent. Here:

    observation.state            the float observation features stacked in a fixed order: the action's
                                 motors first (so state[i] measures action[i]), then any other floats
    observation.images.<camera>  each camera, optionally renamed (`cameras={"front": "corner"}`) and
                                 centre-cropped and resized to `image_size` (what the policy was trained on)
    action                       the action features stacked in their order, back to a dict to send

lerobot is an optional extra and is imported only by `make_lerobot_robot`; `LeRobotAdapter` itself
needs only the interface (duck typing), so it wraps LeRobot's classes or anything shaped like them.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time

import numpy as np

from vla import keys
from vla.errors import UserError, choice_error
from vla.robot.protocol import Observation, RobotDisconnected

log = logging.getLogger(__name__)

# What works today (README, Robot control): the `lerobot` extra does not resolve beside this project's torch.
INSTALL_HINT = ("lerobot is not installed here, and no lerobot release installs beside this project's torch 2.13 "
                "(lerobot 0.4.4 needs torch < 2.11): run vla with lerobot 0.4.4 in a Python 3.11 environment of "
                "their own (see the README, Robot control)")  # fmt: skip


class LeRobotAdapter:
    def __init__(self, robot, *, image_size: int | None = None, cameras: dict[str, str] | None = None,
                 calibrate: bool = True):  # fmt: skip
        self.robot, self.image_size, self.calibrate = robot, image_size, calibrate
        self.name = f"lerobot:{getattr(robot, 'name', type(robot).__name__)}"
        obs_ft, act_ft = dict(robot.observation_features), dict(robot.action_features)
        self.action_names = [k for k, v in act_ft.items() if v is float]
        if len(self.action_names) != len(act_ft):
            raise UserError(f"{self.name}: only float action features can be mapped; got {act_ft}")
        floats = [k for k, v in obs_ft.items() if v is float]
        self.state_names = [k for k in self.action_names if k in floats] + [k for k in floats
                                                                           if k not in self.action_names]  # fmt: skip
        self.camera_names = {cam: (cameras or {}).get(cam, cam) for cam, v in obs_ft.items() if isinstance(v, tuple)}
        unknown = set(cameras or {}) - set(self.camera_names)
        if unknown:
            raise choice_error(f"{self.name} camera", sorted(unknown)[0], list(self.camera_names) or ["(none)"])
        self._obs_specs = self._observation_specs(obs_ft)

    def _observation_specs(self, obs_ft: dict) -> dict[str, keys.Spec]:
        specs = {}
        for cam, vla_cam in self.camera_names.items():
            h, w, _ = obs_ft[cam]
            size = (self.image_size, self.image_size, 3) if self.image_size else (h, w, 3)
            specs[keys.image_key(vla_cam)] = keys.Spec("uint8", size, "pixel intensity 0-255, RGB, row 0 at the top",
                                                       f"LeRobot camera {cam!r} ({h}x{w})")  # fmt: skip
        specs[keys.OBS_STATE] = keys.Spec("float32", (len(self.state_names),), "the robot's own units (LeRobot)",
                                          "LeRobot readings, in order: " + ", ".join(self.state_names))  # fmt: skip
        return specs

    @property
    def observation_features(self) -> dict[str, keys.Spec]:
        return dict(self._obs_specs)

    @property
    def action_features(self) -> dict[str, keys.Spec]:
        names = ", ".join(self.action_names)
        units = "the robot's own units (LeRobot)"
        # LeRobot arms command their gripper as a position (the SO-100's 0-100), regressed like the joints.
        last = self.action_names[-1] if self.action_names else ""
        gripper = "continuous" if last.split(".")[0] == "gripper" else "none"
        spec = keys.Spec("float32", (len(self.action_names),), units, f"LeRobot goal positions, in order: {names}",
                         gripper)  # fmt: skip
        return {keys.ACTION: spec}

    @property
    def is_connected(self) -> bool:
        return bool(self.robot.is_connected)

    def connect(self) -> None:
        """Connect (LeRobot calibrates first if asked and needed); a port or camera that cannot be opened is
        the user's to fix, so it surfaces as one line naming the robot, not a traceback."""
        if self.robot.is_connected:
            return
        try:
            self.robot.connect(calibrate=self.calibrate)
        except (OSError, ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot connect to {self.name}: {' '.join(str(e).split())}") from e

    def get_observation(self) -> Observation:
        """Stamped when the read starts: a slow read then shows as an old observation to the watchdog."""
        self._check()
        captured = time.monotonic()
        raw = self.robot.get_observation()
        data = {keys.image_key(v): self._image(raw[cam]) for cam, v in self.camera_names.items()}
        data[keys.OBS_STATE] = np.array([raw[k] for k in self.state_names], np.float32)
        return Observation(data, captured)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._check()
        action = np.asarray(action, np.float32).reshape(-1)
        sent = self.robot.send_action({k: float(v) for k, v in zip(self.action_names, action)})
        # LeRobot returns what reached the motors (e.g. clipped by max_relative_target); a motor it left out
        # was not commanded, which for a position servo means it keeps its last goal.
        return np.array([sent.get(k, v) for k, v in zip(self.action_names, action)], np.float32)

    def disconnect(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()

    def _check(self) -> None:
        if not self.robot.is_connected:
            raise RobotDisconnected(f"{self.name} is not connected")

    def _image(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame, np.uint8)
        if not self.image_size:
            return frame
        from PIL import Image

        h, w = frame.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = Image.fromarray(np.ascontiguousarray(frame[top : top + side, left : left + side]))
        return np.asarray(square.resize((self.image_size, self.image_size), Image.BILINEAR), np.uint8)


def _register(package) -> None:
    """LeRobot registers a robot (camera) type when its package is imported, as its own CLI does: import
    them all, skipping those whose hardware SDKs are missing (they cannot be used here anyway)."""
    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg:
            try:
                importlib.import_module(f"{package.__name__}.{module.name}")
            except Exception as e:  # a missing SDK (cv2, dynamixel, ...) only hides that type
                log.debug("lerobot %s.%s unavailable: %r", package.__name__, module.name, e)


def make_lerobot_robot(robot_type: str, config: dict | None = None, **adapter) -> LeRobotAdapter:
    """Build LeRobot's robot of `robot_type` from a plain config dict (as in its YAML/CLI) and wrap it."""
    try:
        import draccus
        import lerobot.cameras as cameras_pkg
        import lerobot.robots as robots_pkg
        from lerobot.robots import RobotConfig, make_robot_from_config
    except ImportError as e:
        raise UserError(f"{INSTALL_HINT} ({e})") from None
    _register(robots_pkg)
    _register(cameras_pkg)
    known = RobotConfig.get_known_choices()
    if robot_type not in known:
        raise choice_error("lerobot robot type", robot_type, sorted(known))
    try:
        cfg = draccus.decode(RobotConfig.get_choice_class(robot_type), dict(config or {}))
    except Exception as e:
        raise UserError(f"bad config for lerobot robot {robot_type!r}: {' '.join(str(e).split())}") from None
    robot = LeRobotAdapter(make_robot_from_config(cfg), **adapter)
    robot.name = f"lerobot:{robot_type}"  # the type asked for (LeRobot's class name may be shared: so_follower)
    return robot
