"""Running a policy on a robot: the `Robot` protocol, backends, the safety shield and the control loop.

    from vla.robot import ControlLoop, LoopConfig, MockRobot, ShieldConfig
    robot = MockRobot()                                   # or SimRobot(...), make_lerobot_robot(...)
    robot.connect()
    report = ControlLoop(robot, policy, ShieldConfig(), LoopConfig("reach the cube", hz=10, duration=5)).run()

Backends: `vla.robot.sim.SimRobot` (a suite env paced in real time), `vla.robot.mock.MockRobot`
(scriptable faults), `vla.robot.lerobot.LeRobotAdapter` / `make_lerobot_robot` (any LeRobot robot;
lerobot is an optional extra, imported only there). `vla control` is `vla.robot.cli`.
"""

from vla.robot.loop import ControlLoop, LoopConfig
from vla.robot.mock import Fault, MockRobot, mock_features
from vla.robot.protocol import Observation, Robot, RobotDisconnected, robot_features
from vla.robot.record import Recorder
from vla.robot.report import ControlReport
from vla.robot.shield import SafetyEvent, Shield, ShieldConfig, shield_action

__all__ = [
    "ControlLoop",
    "ControlReport",
    "Fault",
    "LoopConfig",
    "MockRobot",
    "Observation",
    "Recorder",
    "Robot",
    "RobotDisconnected",
    "SafetyEvent",
    "Shield",
    "ShieldConfig",
    "mock_features",
    "robot_features",
    "shield_action",
]
