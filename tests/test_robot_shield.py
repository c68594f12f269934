"""The safety shield as a pure function: property-based over wild action sequences, both action modes."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.robot_fixtures import shield_config
from vla import keys
from vla.errors import UserError
from vla.robot.config import load_robot_config
from vla.robot.shield import (
    CLAMP_KINDS,
    HOLD_KINDS,
    Shield,
    ShieldConfig,
    ShieldMemory,
    check_observation,
    hold_action,
    shield_action,
)

HZ = 20.0
wild = st.floats(allow_nan=True, allow_infinity=True, width=32)
actions = st.lists(st.lists(wild, min_size=4, max_size=4), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, database=None)
@given(actions, st.lists(st.floats(-0.4, 0.4), min_size=3, max_size=3), st.sampled_from(["measured", "commanded"]))
def test_delta_mode_never_sends_outside_the_limits(proposals, start, delta_from):
    """Any proposed sequence, executed by a robot that moves as commanded: every command is finite,
    within step, velocity and gripper limits, lands inside the workspace, and only a hold or the
    workspace wall changes velocity faster than the acceleration limit."""
    # max_velocity binds below max_step at 20 Hz: both limits get exercised
    cfg = shield_config(max_velocity=[0.15], delta_from=delta_from)
    memory, pos, dt = ShieldMemory(), np.array([*start[:2], 0.2]), 1 / HZ
    v_prev = np.zeros(3)
    for proposed in proposals:
        state = np.array([*pos, 0.5], np.float32)
        action, events, memory = shield_action(cfg, memory, np.array(proposed), state, dt)
        kinds = {k for k, _ in events}
        assert kinds <= set(CLAMP_KINDS) | set(HOLD_KINDS)
        assert action is not None and np.all(np.isfinite(action))
        assert -1 <= action[3] <= 1
        step = action[:3].astype(np.float64)
        assert np.all(np.abs(step) <= min(0.01, 0.15 * dt) + 1e-7)
        if kinds & set(HOLD_KINDS):
            assert np.all(step == 0)
        elif "workspace" not in kinds:
            assert np.all(np.abs(step / dt - v_prev) <= 10.0 * dt + 1e-5)
        if not np.all(np.isfinite(proposed)):
            assert "nonfinite_action" in kinds
        pos = state[:3].astype(np.float64) + step
        assert np.all(pos >= [-0.5, -0.5, 0.0 - 1e-6]) and np.all(pos <= [0.5, 0.5, 0.5 + 1e-6])
        v_prev = step / dt


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.lists(st.floats(-200, 200) | wild, min_size=3, max_size=3), min_size=1, max_size=30))
def test_absolute_mode_steps_from_the_last_target(proposals):
    """Joint targets (LeRobot arms): each target within max_step of the last one and inside the joint
    limits; NaN holds the last target; before any command, the first step starts from the measurement."""
    cfg = ShieldConfig(action_mode="absolute", arm=[0, 1], state_index=[0, 1], gripper=2, gripper_low=0.0,
                       gripper_high=100.0, gripper_state=2, workspace_low=[-90, -90], workspace_high=[90, 90],
                       max_step=[5.0], max_velocity=[1000.0], max_acceleration=[1e6])  # fmt: skip
    shield = Shield(cfg, action_dim=3, state_dim=3, hz=HZ)
    state = np.array([10.0, -20.0, 50.0], np.float32)
    last = state.copy()
    for proposed in proposals:
        action, events = shield.filter(np.array(proposed), state)
        assert np.all(np.isfinite(action)) and 0 <= action[2] <= 100
        assert np.all(np.abs(action[:2] - last[:2]) <= 5.0 + 1e-4)
        assert np.all(np.abs(action[:2]) <= 90 + 1e-4)
        if not np.all(np.isfinite(proposed)):
            np.testing.assert_array_equal(action, last)  # hold = the last target
        last = action


def test_hold_before_any_command():
    delta = shield_config()
    assert hold_action(delta, ShieldMemory(), np.zeros(4), 4).tolist() == [0, 0, 0, -1]
    absolute = ShieldConfig(action_mode="absolute", arm=[0, 1], state_index=[0, 1], gripper=2, gripper_state=2,
                            gripper_low=0, gripper_high=100)  # fmt: skip
    np.testing.assert_allclose(hold_action(absolute, ShieldMemory(), np.array([3.0, 4.0, 40.0]), 3), [3, 4, 40])
    # An unreadable state and nothing sent yet: nothing safe to send; the servo keeps its goal.
    assert hold_action(absolute, ShieldMemory(), np.array([np.nan, 4.0, 40.0]), 3) is None


def test_observation_checks():
    cfg = shield_config(max_obs_age=0.1)
    ok = {"observation.state": np.zeros(4, np.float32)}
    assert check_observation(cfg, ok, 0.05) == []
    assert check_observation(cfg, ok, 0.3)[0][0] == "stale_observation"
    assert check_observation(cfg, ok, 0.01, since_last=0.0)[0][0] == "stale_observation"  # the same frame again
    bad = {"observation.state": np.array([0, np.nan, 0, 0], np.float32)}
    assert check_observation(cfg, bad, 0.01)[0][0] == "nonfinite_state"


def test_config_errors_name_the_value():
    with pytest.raises(UserError, match="action_mode 'velocity'; valid: delta, absolute"):
        ShieldConfig(action_mode="velocity")
    with pytest.raises(UserError, match="must cover the 5 action dims"):
        ShieldConfig().check_dims(action_dim=5, state_dim=4)
    with pytest.raises(UserError, match="max_step"):
        ShieldConfig(max_step=[0.0])


@pytest.mark.parametrize("path", sorted(Path("configs/robot").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_robot_configs_load(path):
    cfg = load_robot_config(path)
    dims = {"delta": (4, 4), "absolute": (6, 6)}[cfg.shield.action_mode]
    cfg.shield.check_dims(*dims)


def test_float_rounding_at_a_limit_is_no_clamp_event():
    """A float32 action a rounding error above the 1 cm step limit ("0.01 -> 0.01") is clipped silently; an
    action over the limit by a real margin is a clamp event."""
    cfg = shield_config()
    state = np.array([0.0, 0.0, 0.2, 0.5], np.float32)
    rounding = np.float32(0.01) + np.float32(1e-9)  # 0.010000000475 as float32
    action, events, _ = shield_action(cfg, ShieldMemory(), np.array([rounding, 0, 0, 0], np.float32), state, 1 / HZ)
    assert events == [] and action[0] <= 0.01
    _, events, _ = shield_action(cfg, ShieldMemory(), np.array([0.0115, 0, 0, 0]), state, 1 / HZ)
    assert [kind for kind, _ in events] == ["max_step"] and "0.0115 -> 0.01" in events[0][1]


def test_repeated_frames_are_a_fault_only_once_the_arm_moved():
    """An arm at rest, or pressing against something, in a still scene (a sim twin) repeats frames
    legitimately; a camera whose frame stays while the arm moves more than a step is frozen."""
    from vla.robot.shield import FrozenFrames

    cfg = ShieldConfig(max_frozen_ticks=2, max_step=[0.01])
    frame = np.zeros((4, 4, 3), np.uint8)
    obs = lambda x: {keys.image_key("cam"): frame, keys.OBS_STATE: np.array([x, 0, 0, 1], np.float32)}  # noqa: E731
    watch = FrozenFrames()
    assert all(watch.check(cfg, obs(0.0)) == [] for _ in range(10))  # at rest: no fault however long
    assert all(watch.check(cfg, obs(0.001 * i)) == [] for i in range(5))  # creeping less than a step
    problems = watch.check(cfg, obs(0.02))
    assert problems and problems[0][0] == "frozen_camera" and "observation.images.cam" in problems[0][1]
    frame = frame + 1  # a new frame: the count starts again
    assert [watch.check(cfg, obs(0.02 * i)) for i in range(2, 5)] == [[], [], []]
    assert watch.check(cfg, obs(0.1))[0][0] == "frozen_camera"


def test_the_frozen_camera_check_can_be_turned_off_and_is_off_for_the_tabletop_twin():
    """null: no frozen-camera check (a renderer cannot freeze; the tabletop's wrist camera over the plain
    table renders one frame while the arm moves); 0, negatives and booleans are refused in one line."""
    from vla.robot.shield import FrozenFrames

    frame = np.zeros((4, 4, 3), np.uint8)
    obs = lambda x: {keys.image_key("cam"): frame, keys.OBS_STATE: np.array([x, 0, 0, 1], np.float32)}  # noqa: E731
    watch, cfg = FrozenFrames(), ShieldConfig(max_frozen_ticks=None, max_step=[0.01])
    assert all(watch.check(cfg, obs(0.05 * i)) == [] for i in range(20))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(UserError, match="max_frozen_ticks must be an integer >= 1 or null"):
            ShieldConfig(max_frozen_ticks=bad)
    root = Path(__file__).resolve().parents[1] / "configs/robot"
    assert load_robot_config(root / "sim-tabletop.yaml").shield.max_frozen_ticks is None
    assert load_robot_config(root / "sim-metaworld.yaml").shield.max_frozen_ticks == 3


def test_a_bad_reply_is_never_remembered():
    shield = Shield(ShieldConfig(action_mode="absolute", arm=[0, 1], state_index=[0, 1], gripper=2, gripper_low=0.0,
                                 gripper_high=100.0), 3, 3, hz=10)  # fmt: skip
    action, _ = shield.filter(np.array([0.005, 0.0, 50.0]), np.zeros(3))
    assert shield.sent(np.array([np.nan, 0.0, 50.0], np.float32))[0][0] == "bad_reply"
    assert shield.sent(np.zeros(2, np.float32))[0][0] == "bad_reply"
    np.testing.assert_array_equal(shield.memory.last_action, action)
    hold, _ = shield.hold(np.zeros(3))
    np.testing.assert_array_equal(hold, action)
    assert shield.sent(np.array([0.004, 0.0, 50.0], np.float32)) == []  # a finite reply is what was sent
    np.testing.assert_allclose(shield.memory.last_action, [0.004, 0.0, 50.0])
