"""Shared pieces of the robot-loop tests: scriptable policies, a mock-robot setup, limit checks."""

from __future__ import annotations

import argparse
import time

import numpy as np

from vla import keys
from vla.errors import UserError
from vla.policies.base import Prediction
from vla.robot import ControlLoop, LoopConfig, MockRobot, ShieldConfig, mock_features
from vla.robot import cli as control_cli

FEATURES = mock_features(cameras=("front",), image_size=8, state_dim=4, action_dim=4)
START = [0.0, 0.0, 0.2, 1.0]


def shield_config(**overrides) -> ShieldConfig:
    """The mock's delta-mode shield: a 1 m box around the start, 1 cm per tick."""
    values = dict(
        action_mode="delta",
        workspace_low=[-0.5, -0.5, 0.0],
        workspace_high=[0.5, 0.5, 0.5],
        max_step=[0.01],
        max_velocity=[0.5],
        max_acceleration=[10.0],
        gripper_hold=-1.0,
        max_obs_age=0.2,
        stop_after=1.0,
        stop_hold=0.0,
    )
    return ShieldConfig(**{**values, **overrides})


class ScriptedPolicy:
    """Chunks from a function of the call count; optionally slow. Records what it was given.
    Executed whole (n_action_steps = chunk) unless the loop says otherwise."""

    history, temporal_ensemble = 1, 0.0

    def __init__(self, make_chunk, delay: float = 0.0, chunk: int = 8):
        self.features = FEATURES
        self.make_chunk, self.delay, self.chunk = make_chunk, delay, chunk
        self.n_action_steps = chunk
        self.calls, self.observed = 0, 0
        self.seen_states: list[np.ndarray] = []

    def reset(self) -> None:
        self.calls = 0

    def observe(self, obs, instruction: str) -> None:
        self.observed += 1
        self.seen_states.append(np.array(obs[keys.OBS_STATE]))

    def predict(self, obs, instruction: str) -> Prediction:
        self.seen_states.append(np.array(obs[keys.OBS_STATE]))
        if self.delay:
            time.sleep(self.delay)
        actions = np.asarray(self.make_chunk(self.calls, self.chunk), np.float32)
        self.calls += 1
        return Prediction(actions)


def constant_policy(value=(0.005, 0.0, 0.0, -1.0), **kw) -> ScriptedPolicy:
    return ScriptedPolicy(lambda i, n: np.tile(np.asarray(value, np.float32), (n, 1)), **kw)


def random_policy(seed: int, scale: float = 0.1, nan_rate: float = 0.05, **kw) -> ScriptedPolicy:
    """Wild actions: up to 10x the step limit, with NaN and inf mixed in."""
    rng = np.random.default_rng(seed)

    def chunk(i, n):
        a = rng.normal(0, scale, (n, 4)).astype(np.float32)
        a[:, 3] = rng.uniform(-3, 3, n)
        bad = rng.random((n, 4)) < nan_rate
        a[bad] = rng.choice([np.nan, np.inf, -np.inf], bad.sum())
        return a

    return ScriptedPolicy(chunk, **kw)


def run_mock(policy, *, faults=(), hz=50.0, ticks=30, mode="sync", shield=None, recorder=None, **loop):
    robot = MockRobot(FEATURES, faults=list(faults), start=START)
    robot.connect()
    cfg = shield or shield_config()
    report = ControlLoop(robot, policy, cfg, LoopConfig("test", hz=hz, mode=mode, max_ticks=ticks, **loop),
                         recorder).run()  # fmt: skip
    return robot, report


def assert_within_limits(robot: MockRobot, cfg: ShieldConfig, hz: float, start=START) -> None:
    """Every command that reached the mock: finite, gripper in bounds, steps within max_step and
    velocity, the commanded position inside the workspace (delta mode, mock kinematics: position += step)."""
    pos = np.array(start[:3], np.float64)
    limit = np.minimum(cfg.per_dim("max_step"), cfg.per_dim("max_velocity") / hz) + 1e-6
    for a in robot.sent:
        assert np.all(np.isfinite(a)), a
        assert cfg.gripper_low - 1e-6 <= a[3] <= cfg.gripper_high + 1e-6, a
        step = a[:3].astype(np.float64) * cfg.delta_scale
        assert np.all(np.abs(step) <= limit), (a, limit)
        pos = pos + step
        assert np.all(pos >= np.asarray(cfg.workspace_low) - 1e-5), pos
        assert np.all(pos <= np.asarray(cfg.workspace_high) + 1e-5), pos


def control(argv: list[str]) -> int:
    """`vla control ...` as vla.cli runs it (UserError -> one line, exit 2), without vla.cli itself."""
    parser = argparse.ArgumentParser(prog="vla")
    control_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["control", *argv])
    try:
        return args.func(args)
    except UserError as e:
        print(f"vla control: error: {e}")
        return 2
