"""Recording runs into stores, and `vla control` end to end on the mock robot (CLI, report, errors)."""

import json

import numpy as np
import pytest
import torch

from tests.robot_fixtures import FEATURES, START, constant_policy, control, run_mock, shield_config
from vla import keys
from vla.checkpoint import save_policy
from vla.config import load_config
from vla.datasets.inspect import check_store
from vla.datasets.store import StoreError, TrajectoryStore
from vla.policies.vla_policy import VLAPolicy
from vla.robot import ControlLoop, Fault, LoopConfig, Recorder, robot_features
from vla.robot.mock import MockRobot, mock_features


def test_a_recorded_run_reads_back_with_the_actions_sent(tmp_path):
    path = tmp_path / "runs.zarr"
    features = robot_features(MockRobot(FEATURES))
    recorder = Recorder(path, features, fps=50)
    robot, report = run_mock(constant_policy((0.05, 0, 0, 2.0)), faults=[Fault(5, "nan_state")], hz=50, ticks=15,
                             recorder=recorder)  # fmt: skip
    assert recorder.write(instruction="push right", task="mock", success=True) == 0
    store = TrajectoryStore.open(path)
    episode = store.episode(0)
    # One step per tick but the NaN frame's; the hold sent after the last tick is not a step.
    sent = np.stack([a for i, a in enumerate(robot.sent[:15]) if i != 5])
    np.testing.assert_array_equal(episode[keys.ACTION], sent)
    assert np.all(episode[keys.ACTION][:, 0] <= 0.01) and np.all(episode[keys.ACTION][:, 3] == 1.0)  # clamped
    assert np.all(np.isfinite(episode[keys.OBS_STATE])) and len(episode[keys.OBS_STATE]) == 14
    meta = store.episode_meta(0)
    assert meta["source"] == "policy" and meta["instruction"] == "push right" and meta["success"]
    problems, _ = check_store(path)
    assert problems == []
    # A second run appends; a robot of another shape is refused before it moves.
    recorder = Recorder(path, features, fps=50)
    run_mock(constant_policy(), hz=50, ticks=5, recorder=recorder)
    recorder.write(instruction="again", task="mock", success=False)
    assert TrajectoryStore.open(path).num_episodes == 2
    with pytest.raises(StoreError, match="another schema than this robot.s: action: shape"):
        Recorder(path, mock_features(("front",), 8, state_dim=6, action_dim=6), fps=50)
    # A run at another rate would put steps 1/10 s apart in a store whose steps are 1/50 s apart.
    with pytest.raises(StoreError, match="holds steps at 50 fps; this run ticks at 10 Hz: pass --hz 50"):
        Recorder(path, features, fps=10)
    assert TrajectoryStore.open(path).num_episodes == 2


def test_a_run_that_records_nothing_leaves_no_store(tmp_path):
    path = tmp_path / "empty.zarr"
    Recorder(path, robot_features(MockRobot(FEATURES)), fps=50).write(instruction="x", task="mock", success=False)
    assert not path.exists()


# --- the CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained `tiny` policy shaped like the mock robot (one 16x16 camera, 4-d state and action)."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(overrides=["policy.preset=tiny", "policy.history=2", "policy.chunk=4", "policy.n_action_steps=2"])
    cfg.policy.features = {k: s.to_json() for k, s in mock_features(("front",), 16).items()}
    torch.manual_seed(0)
    save_policy(VLAPolicy(cfg.policy), out)
    return out


def test_cli_mock_run_records_and_reports(tiny_checkpoint, tmp_path, capsys):
    store, report = tmp_path / "deploy.zarr", tmp_path / "report.json"
    rc = control(["--policy", str(tiny_checkpoint), "--robot", "mock", "--hz", "20", "--duration", "1",
                  "--instruction", "reach the cube", "--record", str(store), "--success", "yes",
                  "--report", str(report), "--mode", "sync", "-q", "--set", "robot.mock.faults=[]"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert f"mock: {data['ticks']} ticks" in out and "recorded episode 0" in out
    # 20 ticks on time; fewer when a loaded machine overran some (their slots are skipped, not burst through)
    assert data["ticks"] + data["missed_ticks"] == 20 and data["mode"] == "sync" and data["inference_p50_ms"] > 0
    assert data["recorded"] == {"store": str(store), "episode": 0, "success": True}
    s = TrajectoryStore.open(store)
    assert s.num_episodes == 1 and s.episode_meta(0)["instruction"] == "reach the cube"
    assert len(s.episode(0)[keys.ACTION]) == data["ticks"] and check_store(store)[0] == []


def test_cli_fault_run_exits_1_with_the_safe_stop(tiny_checkpoint, tmp_path, capsys):
    rc = control(["--policy", str(tiny_checkpoint), "--robot", "mock", "--hz", "20", "--duration", "2",
                  "--instruction", "x", "-q", "--set", "robot.mock.faults=[{tick: 3, kind: disconnect}]"])  # fmt: skip
    assert rc == 1
    assert "safe_stop: RobotDisconnected" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--robot", "ur5"], "unknown robot 'ur5'; valid: sim, mock, lerobot:<type>"),
        (["--hz", "0"], "--hz must be in (0, 1000], got 0.0"),
        (["--mode", "fast"], "unknown --mode 'fast'; valid: sync, async"),
        (["--policy", "no/such/dir"], "--policy 'no/such/dir' is neither zero nor a checkpoint directory"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, capsys):
    base = {"--policy": "zero", "--robot": "mock", "--instruction": "x", "--duration": "1"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    rc = control([item for pair in base.items() for item in pair])
    out = capsys.readouterr().out.strip()
    assert rc == 2 and message in out and "\n" not in out


def test_cli_n_action_steps_beyond_the_chunk_is_one_line(tiny_checkpoint, tmp_path, capsys):
    """The checkpoint predicts chunks of 4: 99 actions per chunk is refused before the robot moves or a store
    is made (the zero policy's chunk is 10)."""
    store = tmp_path / "s.zarr"
    for policy, chunk in ((str(tiny_checkpoint), 4), ("zero", 10)):
        rc = control(["--policy", policy, "--robot", "mock", "--instruction", "x", "--duration", "1",
                      "--n-action-steps", "99", "--record", str(store)])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 2 and out.count("\n") == 1
        assert f"n_action_steps must be in [1, {chunk}] (the policy predicts chunks of {chunk} actions), got 99" in out
    assert not store.exists()


def test_clamps_are_summed_up_in_one_line():
    """27 clamps are one line by kind (every event stays in the JSON report); holds are listed one by one."""
    from vla.robot.report import ControlReport, format_report

    report = ControlReport("sync", 10.0, ticks=30, clamped=27)
    report.events = [{"tick": t, "time": t / 10, "kind": "max_step", "detail": "dim 0: 0.0115 -> 0.01"}
                     for t in range(25)]  # fmt: skip
    report.events += [{"tick": t, "time": t / 10, "kind": "acceleration", "detail": "dim 1: 0.02 -> 0.01"}
                      for t in (25, 26)]  # fmt: skip
    report.events.append({"tick": 29, "time": 2.9, "kind": "stale_observation", "detail": "age 600 ms > 500 ms"})
    lines = format_report(report, "sim:metaworld/reach-v3").splitlines()
    assert "  clamps by kind: max_step 25, acceleration 2 (each in the report's events)" in lines
    assert [line for line in lines if "event tick" in line] == [
        "  event tick 29 (+2.90 s) stale_observation: age 600 ms > 500 ms"
    ]


def test_zero_policy_rehearsal_on_the_mock(capsys):
    assert control(["--policy", "zero", "--robot", "mock", "--instruction", "x", "--duration", "0.5", "-q",
                    "--set", "robot.mock.faults=[]", "--set", f"robot.mock.start={START}"]) == 0  # fmt: skip
    assert "safe stops 0" in capsys.readouterr().out


# --- what a recorder writes fits the schema; a refused run writes nothing (issue 15.1, 15.12) --------------
class FloatCameraRobot(MockRobot):
    """A driver that hands over frames as floats in [0, 1]: stored as uint8 they would all be 0."""

    def get_observation(self):
        obs = super().get_observation()
        obs.data = {k: (v / 255.0).astype(np.float32) if keys.is_image_key(k) else v for k, v in obs.data.items()}
        return obs


def test_float_frames_are_refused_by_the_recorder_and_nothing_is_left(tmp_path):
    path = tmp_path / "runs.zarr"
    robot = FloatCameraRobot(FEATURES, start=START)
    recorder = Recorder(path, robot_features(robot), fps=50)
    robot.connect()
    report = ControlLoop(robot, constant_policy(), shield_config(), LoopConfig("t", hz=50, mode="sync", max_ticks=5),
                         recorder).run()  # fmt: skip
    assert report.safe_stops == 1
    assert "observation.images.front given as float32" in report.stop_reason and "spec says uint8" in report.stop_reason
    assert recorder.write(instruction="t", task="mock", success=False) is None
    assert not path.exists()  # the store the recorder made for this run is gone with it


def test_a_recorder_keeps_an_existing_store_it_did_not_write_to(tmp_path):
    path = tmp_path / "runs.zarr"
    features = robot_features(MockRobot(FEATURES))
    Recorder(path, features, fps=50).close()
    assert not path.exists()
    recorder = Recorder(path, features, fps=50)
    recorder.add({k: np.zeros(s.shape, s.dtype) for k, s in features.items()}, np.zeros(4, np.float32))
    assert recorder.write(instruction="t", task="mock", success=False) == 0
    Recorder(path, features, fps=50).close()  # opened, nothing written: an existing store stays
    assert TrajectoryStore.open(path).num_episodes == 1
    with pytest.raises(StoreError, match="holds steps at 50 fps; this run ticks at 10 Hz"):
        Recorder(path, features, fps=10)


@pytest.mark.parametrize("instruction", ["", "   "])
def test_a_refused_control_run_writes_nothing(tmp_path, capsys, instruction):
    store = tmp_path / "ctl.zarr"
    rc = control(["--policy", "zero", "--robot", "mock", "--instruction", instruction, "--record", str(store)])
    out = capsys.readouterr().out
    assert rc == 2 and f"--instruction is required for robot 'mock' (got {instruction!r})" in out
    assert not store.exists()


def test_a_schema_message_names_what_differs(tmp_path, capsys):
    """Issue 15.12: a store recorded from the mock, then collected into: the two schemas' action keys have
    the same dtype and shape but other descriptions, and the message says so."""
    from vla.cli import main

    store = tmp_path / "ctl.zarr"
    assert control(["--policy", "zero", "--robot", "mock", "--instruction", "reach", "--record", str(store),
                    "--duration", "0.3", "-q", "--set", "robot.mock.faults=[]"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["collect", "--suite", "metaworld", "--tasks", "reach-v3", "--episodes-per-task", "1",
                 "--image-size", "32", "--cameras", "corner", "-q", "--append", "--out", str(store)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "another schema: action: description 'mock: position commands" in err
    assert "in the store, 'end-effector displacement x, y, z in metres per step" in err
    assert "observation.images.corner is missing from the store" in err
    assert "float32(4,) in the store, float32(4,) here" not in err
