"""The LeRobot adapter: against LeRobot's documented Robot interface (always), and against LeRobot's own
classes (its `Robot` base class and the real SO-100 follower with a fake motor bus) where lerobot is
installed."""

import contextlib
import sys

import numpy as np
import pytest

from tests.robot_fixtures import constant_policy
from vla import keys
from vla.errors import UserError
from vla.robot import ControlLoop, LoopConfig, ShieldConfig
from vla.robot.lerobot import LeRobotAdapter, make_lerobot_robot

MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def arm_shield(**overrides) -> ShieldConfig:
    values = dict(action_mode="absolute", arm=[0, 1, 2, 3, 4], state_index=[0, 1, 2, 3, 4], gripper=5,
                  gripper_low=0.0, gripper_high=100.0, gripper_state=5, workspace_low=[-90.0] * 5,
                  workspace_high=[90.0] * 5, max_step=[2.0], max_velocity=[100.0], max_acceleration=[1e4],
                  max_obs_age=0.5, stop_hold=0.0)  # fmt: skip
    return ShieldConfig(**{**values, **overrides})


class DocumentedArm:
    """A robot exactly as LeRobot documents `Robot`: flat feature dicts (float per motor, (h, w, 3) per
    camera), `connect(calibrate)`, `get_observation() -> dict`, `send_action(dict) -> dict actually sent`
    (here clipped to 5 units from the present position, like LeRobot's `max_relative_target`). Its camera
    is live: the corner pixel counts the reads, as a real camera's noise makes every frame differ."""

    name = "documented_arm"

    def __init__(self):
        self.present = {f"{m}.pos": 0.0 for m in MOTORS}
        self.connected, self.goals, self.reads = False, [], 0

    @property
    def observation_features(self) -> dict:
        return {**{k: float for k in self.present}, "temperature": float, "front": (48, 64, 3)}

    @property
    def action_features(self) -> dict:
        return {k: float for k in self.present}

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self, calibrate: bool = True) -> None:
        self.connected = True

    def get_observation(self) -> dict:
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :8] = 255  # a bar on the left edge: cropped away by the centre crop
        self.reads += 1
        frame[0, 0] = self.reads % 256
        return {**self.present, "temperature": 31.5, "front": frame}

    def send_action(self, action: dict) -> dict:
        sent = {k: float(np.clip(v, self.present[k] - 5, self.present[k] + 5)) for k, v in action.items()}
        self.present.update(sent)  # a perfect position servo
        self.goals.append(sent)
        return sent

    def disconnect(self) -> None:
        self.connected = False


def test_features_map_to_vla_keys():
    robot = LeRobotAdapter(DocumentedArm(), image_size=16, cameras={"front": "corner"})
    obs_ft = robot.observation_features
    assert set(obs_ft) == {keys.image_key("corner"), keys.OBS_STATE}
    assert obs_ft[keys.image_key("corner")].shape == (16, 16, 3)
    assert obs_ft[keys.OBS_STATE].shape == (7,)  # the 6 motors (action order), then the temperature
    assert robot.state_names == [f"{m}.pos" for m in MOTORS] + ["temperature"]
    assert robot.action_features[keys.ACTION].shape == (6,)
    robot.connect()
    obs = robot.get_observation()
    assert obs.data[keys.image_key("corner")].shape == (16, 16, 3)
    assert obs.data[keys.image_key("corner")].max() == 0  # centre-cropped: the edge bar is gone
    assert obs.data[keys.OBS_STATE][-1] == pytest.approx(31.5)
    sent = robot.send_action(np.array([1, 2, 3, 4, 50, 60], np.float32))
    np.testing.assert_allclose(sent, [1, 2, 3, 4, 5, 5])  # what the robot reports it sent, in action order
    with pytest.raises(UserError, match="unknown lerobot:documented_arm camera 'wrist'; valid: front"):
        LeRobotAdapter(DocumentedArm(), cameras={"wrist": "wrist"})


def test_loop_drives_a_lerobot_arm_in_absolute_mode():
    """Joint targets far away: the shield walks there 2 units per tick; a disconnect stops safely."""
    arm = DocumentedArm()
    robot = LeRobotAdapter(arm)
    robot.connect()

    reach = constant_policy((40, -30, 20, 10, 0, 80), chunk=4)
    report = ControlLoop(robot, reach, arm_shield(), LoopConfig("reach", hz=50, max_ticks=10, mode="sync")).run()
    goals = np.array([[g[f"{m}.pos"] for m in MOTORS] for g in arm.goals])
    assert np.all(np.abs(np.diff(goals[:, :5], axis=0)) <= 2 + 1e-5) and np.all(np.abs(goals[0, :5]) <= 2 + 1e-5)
    assert report.clamped == 10 and goals[9][5] == 50  # the gripper: 5 per tick, the arm's own cap
    np.testing.assert_array_equal(goals[-1], goals[-2])  # the end: hold = repeat what the arm reported sent
    arm.connected = False  # the cable comes out
    robot.robot.connected = False
    report = ControlLoop(robot, reach, arm_shield(), LoopConfig("reach", hz=50, max_ticks=10, mode="sync")).run()
    assert report.safe_stops == 1 and "RobotDisconnected" in report.stop_reason


def test_make_lerobot_robot_without_lerobot(monkeypatch):
    monkeypatch.setitem(sys.modules, "lerobot", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "lerobot.robots", None)
    with pytest.raises(UserError) as e:
        make_lerobot_robot("so100_follower", {"port": "/dev/null"})
    # The advice is what works (README: lerobot 0.4.4 in an environment of its own), not the extra that
    # does not resolve.
    assert "lerobot 0.4.4 in a Python 3.11 environment" in str(e.value) and "pip install" not in str(e.value)


# --- against LeRobot's own classes (skipped where lerobot is not installed) -------------------------
class FakeFeetechBus:
    """Stands in for LeRobot's FeetechMotorsBus (no serial port): the calls SO100Follower makes."""

    def __init__(self, motors):
        self.motors, self.is_connected, self.is_calibrated = motors, False, True
        self.present = {m: 0.0 for m in motors}
        self.goals = []

    def connect(self, *a, **kw):
        self.is_connected = True

    def disconnect(self, disable_torque=True):
        self.is_connected = False

    @contextlib.contextmanager
    def torque_disabled(self, *a, **kw):
        yield

    def configure_motors(self, *a, **kw): ...

    def write(self, *a, **kw): ...

    def sync_read(self, register, *a, **kw):
        assert register == "Present_Position"
        return dict(self.present)

    def sync_write(self, register, values, *a, **kw):
        assert register == "Goal_Position"
        self.goals.append(dict(values))
        self.present.update(values)


def test_real_so100_follower_through_the_adapter(tmp_path):
    pytest.importorskip("lerobot")
    robot = make_lerobot_robot("so100_follower", {"port": "/dev/null", "id": "t", "calibration_dir": str(tmp_path),
                                                  "max_relative_target": 3.0}, calibrate=False)  # fmt: skip
    from lerobot.robots import Robot

    assert isinstance(robot.robot, Robot) and type(robot.robot).__name__ == "SOFollower"
    assert robot.action_names == [f"{m}.pos" for m in MOTORS] == robot.state_names
    robot.robot.bus = bus = FakeFeetechBus(robot.robot.bus.motors)
    robot.connect()
    sent = robot.send_action(np.array([10, -10, 1, 0, 0, 50], np.float32))
    np.testing.assert_allclose(sent, [3, -3, 1, 0, 0, 3])  # LeRobot's max_relative_target clipped it
    robot.robot.config.max_relative_target = None

    reach = constant_policy((60, -60, 20, 10, 0, 40), chunk=4)
    report = ControlLoop(robot, reach, arm_shield(), LoopConfig("reach", hz=50, max_ticks=8, mode="sync")).run()
    goals = np.array([[g[m] for m in MOTORS] for g in bus.goals])
    assert report.ticks == 8 and np.all(np.abs(np.diff(goals[:, :5], axis=0)) <= 2 + 1e-5)
    robot.disconnect()
    assert not bus.is_connected
    with pytest.raises(UserError, match="unknown lerobot robot type 'ur5'; valid: .*so100_follower"):
        make_lerobot_robot("ur5", {})


def test_a_minimal_lerobot_robot_subclass(tmp_path):
    """LeRobot's abstract `Robot` subclassed with fake motors and a camera, wrapped and driven."""
    pytest.importorskip("lerobot")
    from dataclasses import dataclass

    from lerobot.robots import Robot, RobotConfig

    @dataclass
    class TwoJointConfig(RobotConfig):
        pass

    class TwoJoint(Robot):
        config_class, name = TwoJointConfig, "two_joint"

        def __init__(self, config):
            super().__init__(config)
            self.q, self.connected, self.reads = {"a.pos": 0.0, "b.pos": 0.0}, False, 0

        observation_features = property(lambda self: {"a.pos": float, "b.pos": float, "cam": (20, 30, 3)})
        action_features = property(lambda self: {"a.pos": float, "b.pos": float})
        is_connected = property(lambda self: self.connected)
        is_calibrated = property(lambda self: True)

        def connect(self, calibrate=True):
            self.connected = True

        def calibrate(self): ...

        def configure(self): ...

        def get_observation(self):  # a live camera: every frame differs (a frozen one makes the shield hold)
            self.reads += 1
            return {**self.q, "cam": np.full((20, 30, 3), self.reads % 256, np.uint8)}

        def send_action(self, action):
            self.q.update(action)
            return dict(action)

        def disconnect(self):
            self.connected = False

    robot = LeRobotAdapter(TwoJoint(TwoJointConfig(id="x", calibration_dir=tmp_path)), image_size=8)
    robot.connect()
    cfg = ShieldConfig(action_mode="absolute", arm=[0, 1], state_index=[0, 1], gripper=None,
                       workspace_low=[-1, -1], workspace_high=[1, 1], max_step=[0.1], max_velocity=[100.0],
                       max_acceleration=[1e4], stop_hold=0.0)  # fmt: skip

    class Far:
        def predict(self, obs, instruction):
            from vla.policies.base import Prediction

            assert obs[keys.image_key("cam")].shape == (8, 8, 3)
            return Prediction(np.full((4, 2), 5.0, np.float32))

    report = ControlLoop(robot, Far(), cfg, LoopConfig("go", hz=50, max_ticks=15, mode="sync")).run()
    assert report.clamped == 15 and robot.robot.q == {"a.pos": pytest.approx(1.0), "b.pos": pytest.approx(1.0)}
    assert any(e["kind"] == "workspace" for e in report.events)  # 0.1 per tick, stopped at the joint limit
