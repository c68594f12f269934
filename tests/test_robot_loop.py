"""The control loop against the mock robot: fault injection, safe stops, chunk scheduling, async rate."""

import os
import signal
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.robot_fixtures import (
    FEATURES,
    START,
    ScriptedPolicy,
    assert_within_limits,
    constant_policy,
    random_policy,
    run_mock,
    shield_config,
)
from vla.policies.executor import ChunkExecutor
from vla.robot import ControlLoop, Fault, LoopConfig, MockRobot
from vla.robot.mock import FAULTS

HOLD = np.array([0, 0, 0, -1], np.float32)


@pytest.mark.parametrize("kind", ["latency", "drop", "stale", "nan_state"])
def test_observation_faults_hold_within_the_tick(kind):
    """A bad frame at tick 10: the command sent in that very tick is a hold, the policy never sees the
    frame, and the loop goes on once frames are good again."""
    policy = constant_policy()
    robot, report = run_mock(policy, faults=[Fault(10, kind)], hz=50, ticks=20)
    assert robot.fired == [(10, kind)]
    np.testing.assert_array_equal(robot.sent[10], HOLD)
    assert robot.sent[9][0] > 0 and robot.sent[11][0] > 0  # moving before and after
    assert [e["tick"] for e in report.events if e["kind"] != "acceleration"] == [10]
    assert report.holds == 1 and report.safe_stops == 0 and report.stopped_by == "completed"
    assert all(np.all(np.isfinite(s)) for s in policy.seen_states)


@pytest.mark.parametrize("kind", ["obs_error", "action_error", "disconnect"])
def test_robot_errors_stop_safely_within_the_tick(kind):
    """An exception or a disconnect at tick 10: a safe stop in that tick (hold where the robot still
    answers, then disconnect); nothing after it reaches the robot."""
    robot, report = run_mock(constant_policy(), faults=[Fault(10, kind)], hz=50, ticks=30)
    assert report.safe_stops == 1 and report.stopped_by == "fault" and report.ticks == 11
    assert report.events[-1]["kind"] == "safe_stop" and report.events[-1]["tick"] == 10
    assert not robot.is_connected
    moving = 10  # ticks 0-9 sent their actions
    assert all(a[0] > 0 for a in robot.sent[:moving])
    if kind != "disconnect":  # a gone robot cannot be told to hold
        np.testing.assert_array_equal(robot.sent[-1], HOLD)
        assert len(robot.sent) == moving + 1
    else:
        assert len(robot.sent) == moving


def test_policy_exception_and_nan_policy():
    def explode(i, n):
        if i == 2:
            raise RuntimeError("policy blew up")
        return np.full((n, 4), 0.001, np.float32)

    for mode in ("sync", "async"):
        robot, report = run_mock(ScriptedPolicy(explode, chunk=2), hz=50, ticks=40, mode=mode)
        assert report.safe_stops == 1 and "policy blew up" in report.stop_reason
        assert not robot.is_connected
    nan = ScriptedPolicy(lambda i, n: np.full((n, 4), np.nan, np.float32))
    robot, report = run_mock(nan, hz=50, ticks=10)
    assert all(np.array_equal(a, HOLD) for a in robot.sent) and report.holds == 10


def test_watchdog_escalates_to_a_safe_stop():
    faults = [Fault(t, "stale") for t in range(5, 100)]
    robot, report = run_mock(constant_policy(), faults=faults, hz=50, ticks=100, shield=shield_config(stop_after=0.1))
    assert report.safe_stops == 1 and "watchdog: stale_observation" in report.stop_reason
    assert 5 + 2 <= report.ticks <= 5 + 8  # ~0.1 s at 50 Hz of holding first (fewer ticks if some overran)
    assert all(np.array_equal(a, HOLD) for a in robot.sent[5:])


def test_sigterm_stops_safely_and_restores_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    robot = MockRobot(FEATURES, start=START)
    robot.connect()
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    loop = ControlLoop(robot, constant_policy(), shield_config(), LoopConfig("t", hz=50, duration=5))
    report = loop.run()
    assert report.stopped_by == "signal" and report.stop_reason == "safe stop: SIGTERM received"
    assert report.duration_s < 2.0 and not robot.is_connected  # at the next tick, not after the 5 s
    np.testing.assert_array_equal(robot.sent[-1], HOLD)
    assert signal.getsignal(signal.SIGTERM) is previous


@settings(max_examples=12, deadline=None, database=None)
@given(
    seed=st.integers(0, 10_000),
    faults=st.lists(st.tuples(st.integers(0, 24), st.sampled_from(FAULTS)), max_size=4),
    mode=st.sampled_from(["sync", "async"]),
)
def test_random_policies_and_faults_never_exceed_the_limits(seed, faults, mode):
    """Property: whatever the policy proposes and whatever fails, nothing outside the limits is sent,
    and any fault that ends the run ends it with a safe stop in the tick it happened."""
    cfg = shield_config()
    robot, report = run_mock(random_policy(seed), faults=[Fault(t, k) for t, k in faults], hz=100, ticks=25,
                             mode=mode, shield=cfg)  # fmt: skip
    assert_within_limits(robot, cfg, hz=100)
    fatal = sorted(t for t, k in robot.fired if k in ("obs_error", "action_error", "disconnect"))
    if fatal:
        assert report.safe_stops == 1 and not robot.is_connected
        assert robot.tick == fatal[0]  # nothing was read after the first fatal fault
    for tick, kind in robot.fired:
        if kind in ("latency", "drop", "stale", "nan_state") and tick < len(robot.sent) and tick not in fatal:
            np.testing.assert_array_equal(robot.sent[tick][:3], 0)


def test_async_keeps_its_rate_while_inference_is_slow():
    """20 Hz with a policy that takes 150 ms: the loop holds its rate (chunks cover the latency) and no
    tick waits for inference; sync at the same settings cannot."""
    ticks = 40
    slow = constant_policy(delay=0.15, chunk=10)
    _, report = run_mock(slow, hz=20, ticks=ticks, mode="async", n_action_steps=5)
    assert abs(report.hz_achieved - 20) <= 0.15 * 20, report
    assert report.jitter_p50_ms < 10 and report.missed_ticks <= 2
    assert report.inferences >= 3 and report.inference_p50_ms >= 150
    assert report.waiting_ticks <= 6  # only until the first chunk arrives
    _, sync = run_mock(constant_policy(delay=0.15, chunk=10), hz=20, ticks=12, mode="sync", n_action_steps=5)
    assert sync.missed_ticks > 0 or sync.jitter_p99_ms > 50  # the slow tick shows


def test_schedule_plays_actions_by_observation_time():
    s = ChunkExecutor(constant_policy(), hz=10)  # the wall clock, as the loop drives it
    s.add(np.arange(5, dtype=np.float32)[:, None], obs_time=100.0)
    assert s.pick(100.01).action[0] == 0  # due now
    assert s.pick(100.11).action[0] == 1
    pick = s.pick(100.32)  # a slot was missed: its action is dropped, never played late
    assert pick.action[0] == 3 and pick.dropped == 1
    assert s.pick(100.33).action[0] == 4  # two picks within one slot never repeat an action
    assert s.pick(100.6).action is None  # the chunk ran out
    s.add(np.full((5, 1), 10, np.float32), obs_time=100.5)  # arrives late: its first action is stale
    pick = s.pick(100.61)
    assert pick.action[0] == 10 and pick.dropped == 1 and pick.first_use_of == 100.5


def test_temporal_ensemble_weights_the_oldest_chunk_most():
    s = ChunkExecutor(constant_policy(), hz=10, temporal_ensemble=1.0)
    s.add(np.zeros((4, 1), np.float32), obs_time=0.0)
    s.add(np.ones((4, 1), np.float32), obs_time=0.1)
    action = s.pick(0.1).action[0]
    assert action == pytest.approx(np.exp(-1) / (1 + np.exp(-1)))  # weights 1 (oldest) and e^-1


def test_wall_clock_pacing_and_report_fields():
    robot, report = run_mock(constant_policy(), hz=25, ticks=25)
    d = report.to_json()
    wanted = ["ticks", "hz_target", "hz_achieved", "jitter_p50_ms", "jitter_p99_ms", "inference_p50_ms", "clamped",
              "inference_p99_ms", "obs_to_action_p50_ms", "safe_stops", "events", "mode", "duration_s"]  # fmt: skip
    assert set(wanted) <= set(d)
    assert d["ticks"] == 25 and d["duration_s"] >= 24 / 25 - 0.02  # paced: never faster than 25 Hz
    assert d["clamped"] == 0 and d["safe_stops"] == 0


# --- nothing non-finite reaches the robot; frozen cameras hold (issue 15.4, 15.5) ------------------------
def _absolute_run(policy, faults, ticks=12, **shield):
    """The mock in absolute mode (the action is the target position), behind an absolute-mode shield."""
    robot = MockRobot(FEATURES, faults=faults, start=START, action_mode="absolute")
    robot.connect()
    # Ages are not what these tests judge: a loaded machine must not add stale-frame holds.
    cfg = shield_config(action_mode="absolute", gripper_state=3, **{"max_obs_age": 30.0, **shield})
    report = ControlLoop(robot, policy, cfg, LoopConfig("t", hz=50, mode="sync", max_ticks=ticks)).run()
    return robot, report


def test_a_nan_reply_is_a_fault_and_never_the_command_a_hold_repeats():
    """Issue 15.4: the robot's reply holds NaN at tick 3 (absolute mode). That reply is logged as a fault,
    the next tick holds the last finite command, then the run goes on; nothing non-finite is ever sent."""
    target = (0.1, 0.0, 0.2, -1.0)  # 10 cm away: the shield steps 1 cm a tick towards it
    robot, report = _absolute_run(constant_policy(target), [Fault(3, "nan_reply")])
    assert robot.fired == [(3, "nan_reply")]
    assert all(np.all(np.isfinite(a)) for a in robot.sent)
    faults = [(e["tick"], e["kind"]) for e in report.events if e["kind"] not in ("max_step", "acceleration")]
    assert faults == [(3, "bad_reply"), (4, "bad_reply")]  # the reply, then the hold it caused
    np.testing.assert_array_equal(robot.sent[4], robot.sent[3])  # held at the last finite target
    assert robot.sent[5][0] > robot.sent[4][0]  # then moving on
    assert report.holds == 2 and report.safe_stops == 0 and report.stopped_by == "completed"


def test_replies_that_stay_nan_end_in_a_safe_stop():
    faults = [Fault(t, "nan_reply") for t in range(3, 200)]
    robot, report = _absolute_run(constant_policy((0.1, 0.0, 0.2, -1.0)), faults, ticks=200, stop_after=0.1)
    assert report.safe_stops == 1 and "watchdog: bad_reply" in report.stop_reason and not robot.is_connected
    assert all(np.all(np.isfinite(a)) for a in robot.sent)


def test_a_nonfinite_policy_output_holds_in_absolute_mode():
    nan = ScriptedPolicy(lambda i, n: np.full((n, 4), np.nan if i % 2 else 0.05, np.float32), chunk=2)
    robot, report = _absolute_run(nan, [], ticks=10)
    assert all(np.all(np.isfinite(a)) for a in robot.sent)
    assert report.holds >= 4 and {e["kind"] for e in report.events} >= {"nonfinite_action"}


def test_the_last_line_refuses_a_nonfinite_command():
    """Should the shield ever let one through, the loop's one path to the robot refuses it: a safe stop."""
    robot = MockRobot(FEATURES, start=START)
    robot.connect()
    loop = ControlLoop(robot, constant_policy(), shield_config(), LoopConfig("t", hz=50, mode="sync", max_ticks=5))
    loop.shield.filter = lambda proposed, state: (np.full(4, np.nan, np.float32), [])  # a broken shield
    report = loop.run()
    assert report.safe_stops == 1 and "refused to send" in report.stop_reason
    assert all(np.all(np.isfinite(a)) for a in robot.sent)


@pytest.mark.parametrize("limit, first_hold", [(3, 9), (1, 8)])  # 5 mm a tick: past max_step (1 cm) at tick 8
def test_a_frozen_camera_holds_like_a_stale_one(limit, first_hold):
    """Issue 15.5: from tick 5 the camera repeats its frame under fresh timestamps while the arm moves;
    past `max_frozen_ticks` repeats, once the arm has moved more than a step, every tick holds, as stale
    frames do."""
    shield = shield_config(max_frozen_ticks=limit, max_obs_age=30.0, stop_after=60.0)  # frozen frames only
    robot, report = run_mock(constant_policy(), faults=[Fault(5, "freeze")], hz=50, ticks=15, shield=shield)
    frozen = sorted({e["tick"] for e in report.events if e["kind"] == "frozen_camera"})
    assert frozen == list(range(first_hold, 15))
    assert all(np.array_equal(a, HOLD) for a in robot.sent[first_hold:15])
    assert robot.sent[first_hold - 1][0] > 0  # moving until then
    assert report.safe_stops == 0


def test_a_frozen_camera_escalates_to_a_safe_stop():
    robot, report = run_mock(constant_policy(), faults=[Fault(2, "freeze")], hz=50, ticks=100,
                             shield=shield_config(stop_after=0.1))  # fmt: skip
    assert report.safe_stops == 1 and "watchdog: frozen_camera" in report.stop_reason
