"""Robot configs (`configs/robot/*.yaml`): which backend and how, and the safety shield's limits.

    robot:                       # backend settings; only the section of the backend in use is read
      sim: {suite: metaworld, task: drawer-close-v3, seed: 0}
      mock: {faults: [{tick: 5, kind: latency, value: 0.3}], fault_rates: {drop: 0.01}, seed: 0}
      lerobot: {type: so100_follower, config: {port: /dev/ttyACM0}, image_size: 64}
    shield: {action_mode: delta, workspace_low: [...], ...}     # see vla.robot.shield.ShieldConfig

Loaded like `vla.config`: plain data checked against the dataclasses below, an unknown field is an
error naming the valid ones, and nothing in the file is executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vla import keys
from vla.config import load_dataclass  # the same checked loader as the training configs
from vla.options import check_value
from vla.robot.shield import ShieldConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "robot"  # in a source checkout


@dataclass
class SimConfig:
    suite: str = ""  # empty: the policy's train.eval.suite, else metaworld
    task: str = ""  # empty: the first of the policy's train.eval.tasks, else the suite's first task
    seed: int = 0  # picks the episode (Meta-World: the variant)
    max_steps: int = 0  # 0: the suite's own episode limit


@dataclass
class FaultConfig:
    tick: int
    kind: str
    value: float = 0.0


@dataclass
class MockConfig:
    action_mode: str = "delta"  # how the mock's kinematic model reads an action (delta | absolute)
    start: list[float] = field(default_factory=list)  # initial state; empty: zeros
    faults: list[FaultConfig] = field(default_factory=list)  # scheduled faults (see vla.robot.mock)
    fault_rates: dict = field(default_factory=dict)  # fault kind -> probability per tick
    seed: int = 0


@dataclass
class LeRobotConfig:
    type: str = ""  # LeRobot's robot type, e.g. so100_follower (`--robot lerobot:<type>` overrides)
    config: dict = field(default_factory=dict)  # LeRobot's own config fields: port, id, cameras, ...
    cameras: dict = field(default_factory=dict)  # LeRobot camera name -> vla camera name
    image_size: int = 0  # 0: keep the camera's frames; else centre-crop and resize to this square
    calibrate: bool = True  # let LeRobot calibrate on connect if the robot needs it

    def __post_init__(self):
        if self.image_size:
            check_value("robot.lerobot.image_size", self.image_size, min=keys.MIN_IMAGE_SIZE, max=keys.MAX_IMAGE_SIZE)


@dataclass
class BackendConfig:
    sim: SimConfig = field(default_factory=SimConfig)
    mock: MockConfig = field(default_factory=MockConfig)
    lerobot: LeRobotConfig = field(default_factory=LeRobotConfig)


@dataclass
class RobotConfig:
    robot: BackendConfig = field(default_factory=BackendConfig)
    shield: ShieldConfig = field(default_factory=ShieldConfig)


def load_robot_config(path: str | Path | None, overrides: list[str] | None = None) -> RobotConfig:
    """A RobotConfig from YAML (None: defaults) with dotted `section.field=value` overrides."""
    return load_dataclass(RobotConfig, path, overrides, what="robot config")


def default_config_path(name: str) -> Path | None:
    """`configs/robot/<name>.yaml` from the working directory or the source checkout, if there is one."""
    for base in (Path("configs/robot"), CONFIG_DIR):
        if (base / f"{name}.yaml").is_file():
            return base / f"{name}.yaml"
    return None
