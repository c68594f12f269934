"""The sim backend: a Meta-World env paced in real time, driven by the loop and by `vla control`."""

import json
import time

import numpy as np
import pytest
import torch

from tests.robot_fixtures import constant_policy, control, shield_config
from vla import keys
from vla.checkpoint import save_policy
from vla.config import load_config
from vla.datasets.inspect import check_store
from vla.datasets.store import TrajectoryStore
from vla.policies.vla_policy import VLAPolicy
from vla.robot import ControlLoop, LoopConfig, Recorder, robot_features
from vla.robot.config import load_robot_config
from vla.robot.sim import SimRobot


@pytest.fixture
def sim():
    robot = SimRobot("metaworld", "reach-v3", hz=40, cameras=())  # no cameras: physics only, fast
    robot.connect()
    yield robot
    robot.disconnect()


def test_sim_moves_as_commanded_and_never_outruns_the_clock(sim):
    start = sim.get_observation()
    assert sim.name == "sim:metaworld/reach-v3" and sim.instruction
    assert start.info == {"success": False, "done": False}
    t0 = time.monotonic()
    for _ in range(12):
        sim.send_action(np.array([0.01, 0, 0, 0.5], np.float32))
    elapsed = time.monotonic() - t0
    assert elapsed >= 11 / 40 - 0.5 / 40  # paced: 12 steps of 1/40 s, the first one at once
    moved = sim.get_observation().data[keys.OBS_STATE][:3] - start.data[keys.OBS_STATE][:3]
    assert 0.05 < moved[0] < 0.13 and np.all(np.abs(moved[1:]) < 0.02)  # +x, as commanded
    np.testing.assert_allclose(sim.send_action(np.array([5, 0, 0, 9], np.float32)), [0.01, 0, 0, 1])  # clipped


def test_loop_drives_the_sim_behind_the_shield_and_records(sim, tmp_path):
    cfg = load_robot_config("configs/robot/sim-metaworld.yaml").shield
    cfg.stop_hold = 0.0
    recorder = Recorder(tmp_path / "sim.zarr", robot_features(sim), fps=40)
    policy = constant_policy((0.03, 0.0, 0.0, -1.0))  # 3x the step limit
    x0 = sim.get_observation().data[keys.OBS_STATE][0]
    report = ControlLoop(sim, policy, cfg, LoopConfig(sim.instruction, hz=40, max_ticks=10, mode="sync"),
                         recorder).run()  # fmt: skip
    assert report.ticks == 10 and report.clamped == 10 and report.safe_stops == 0 and report.success is False
    assert 0.03 < sim.get_observation().data[keys.OBS_STATE][0] - x0 < 0.12
    recorder.write(instruction=sim.instruction, task=sim.name, success=bool(report.success))
    episode = TrajectoryStore.open(tmp_path / "sim.zarr").episode(0)
    assert np.all(episode[keys.ACTION][:, 0] <= 0.01 + 1e-7) and check_store(tmp_path / "sim.zarr")[0] == []


def test_shield_workspace_stops_the_hand_at_the_wall(sim):
    """Meta-World's mocap integrates displacements and leads the hand: bounding the measured position +
    step lets the hand overshoot by the lag; bounding the commanded (integrated) position does not."""
    z0 = float(sim.get_observation().data[keys.OBS_STATE][2])
    cfg = shield_config(workspace_low=[-0.5, 0.3, 0.0], workspace_high=[0.5, 1.0, z0 + 0.03], max_velocity=[10.0],
                        max_acceleration=[1e3], max_obs_age=1.0, delta_from="commanded")  # fmt: skip
    up = constant_policy((0.0, 0.0, 0.01, -1.0))
    report = ControlLoop(sim, up, cfg, LoopConfig("up", hz=40, max_ticks=20, mode="sync")).run()
    assert any(e["kind"] == "workspace" for e in report.events)
    for _ in range(10):  # let the hand settle onto the mocap
        sim.send_action(np.array([0, 0, 0, -1], np.float32))
    assert sim.get_observation().data[keys.OBS_STATE][2] <= z0 + 0.03 + 0.002


def test_cli_sim_run_with_a_checkpoint(tmp_path, capsys):
    """`vla control --robot sim`: the sim is shaped from the policy (camera, image size), the instruction
    defaults to the task's, the run is recorded with the sim's success label."""
    cfg = load_config(overrides=["policy.preset=tiny", "policy.history=2", "policy.chunk=4", "policy.n_action_steps=2"])
    probe = SimRobot("metaworld", "reach-v3", hz=10, image_size=16, cameras=("corner",))
    cfg.policy.features = {k: s.to_json() for k, s in robot_features(probe).items()}
    probe.disconnect()
    torch.manual_seed(0)
    save_policy(VLAPolicy(cfg.policy), tmp_path / "ckpt")
    store, out = str(tmp_path / "s.zarr"), str(tmp_path / "r.json")
    rc = control(["--policy", str(tmp_path / "ckpt"), "--robot", "sim", "--task", "reach-v3", "--hz", "10",
                  "--duration", "1", "-q", "--record", store, "--report", out])  # fmt: skip
    assert rc == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["robot"] == "sim:metaworld/reach-v3" and report["ticks"] + report["missed_ticks"] == 10
    assert report["recorded"]["success"] is False and report["instruction"]
    store = TrajectoryStore.open(tmp_path / "s.zarr")
    assert store.specs[keys.image_key("corner")].shape == (16, 16, 3)
    assert store.episode_meta(0)["task"] == "reach-v3"  # the task name, as collected stores label it
