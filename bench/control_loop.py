"""The control loop's timing: loop-period jitter and observation-to-action latency at 10, 30 and 50 Hz,
synchronous versus asynchronous inference, with a `small` policy on this machine.

    python bench/control_loop.py [--rates 10,30,50] [--seconds 6] [--robot mock|sim] [--preset small] [--compile]

The policy is an untrained `small` preset with random weights (bench/common.py): timing does not
depend on what the weights learnt. Actions only (no foresight decoding), n_action_steps 5 of a chunk
of 10, torch threads as `vla control` sets them (cores - 1, at most 4).
`--robot mock` (default) isolates the loop and the policy (a 64x64 camera costs nothing to "render");
`--robot sim` drives Meta-World's reach-v3 with its 64x64 corner camera (~15 ms a frame on a
software renderer) as `vla control --robot sim` does.

Columns: achieved rate; |period - 1/hz| p50 and p99; inference p50 (one `predict`, plus replaying
the observations since the last one in async); observation-to-action p50 and p99 (capture of an
observation -> the first action predicted from it is handed to the robot); ticks overrun (slots skipped).
Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from common import FEATURES, describe, machine, make_policy, random_observation

from vla.robot import ControlLoop, LoopConfig, MockRobot
from vla.robot.cli import default_threads
from vla.robot.config import load_robot_config

ROOT = Path(__file__).resolve().parents[1]


def make_robot(kind: str, hz: float):
    if kind == "mock":
        robot = MockRobot(FEATURES, start=[0.0, 0.0, 0.2, 1.0])
        shield = load_robot_config(ROOT / "configs/robot/mock.yaml").shield
    else:
        from vla.robot.sim import SimRobot

        robot = SimRobot("metaworld", "reach-v3", hz=hz, image_size=64, cameras=("corner",))
        shield = load_robot_config(ROOT / "configs/robot/sim-metaworld.yaml").shield
    shield.max_obs_age, shield.stop_hold = 1.0, 0.0  # measure the loop, not the watchdog
    robot.connect()
    return robot, shield


def run(policy, kind: str, hz: float, mode: str, seconds: float) -> dict:
    torch.set_num_threads(default_threads())
    robot, shield = make_robot(kind, hz)
    cfg = LoopConfig("reach the goal", hz=hz, mode=mode, duration=seconds, n_action_steps=5)
    try:
        r = ControlLoop(robot, policy, shield, cfg).run()
    finally:
        if robot.is_connected:
            robot.disconnect()
    wanted = [
        "hz_achieved",
        "jitter_p50_ms",
        "jitter_p99_ms",
        "inference_p50_ms",
        "obs_to_action_p50_ms",
        "obs_to_action_p99_ms",
        "missed_ticks",
        "dropped_actions",
        "ticks",
        "inferences",
        "safe_stops",
    ]
    return {"hz": hz, "mode": mode, **{k: getattr(r, k) for k in wanted}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--rates", default="10,30,50")
    parser.add_argument("--seconds", type=float, default=6.0, help="per rate and mode")
    parser.add_argument("--robot", default="mock", choices=["mock", "sim"])
    parser.add_argument("--history", type=int, default=4)
    parser.add_argument("--preset", default="small", help="small | gr1 (a policy slower than the tick)")
    parser.add_argument("--compile", action="store_true", help="as vla control --compile (compile_inference)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    policy = make_policy(args.preset, args.history, chunk=10, foresee=False).eval()
    if args.compile:  # compiled with the loop's threads; the first steps compile, outside the timed loop
        torch.set_num_threads(default_threads())
        policy.compile_inference()
        for observation in [random_observation(np.random.default_rng(0)) for _ in range(args.history + 1)]:
            policy.predict(observation, "reach the goal")
        policy.reset()
    load_before = round(os.getloadavg()[0], 2)
    rows = [run(policy, args.robot, float(hz), mode, args.seconds) for hz in args.rates.split(",")
            for mode in ("sync", "async")]  # fmt: skip
    info = {**machine(), "load_1min": load_before, "load_after": round(os.getloadavg()[0], 2)}  # threads: the loop's
    print(f"{args.preset} preset (random weights{', compiled' if args.compile else ''}), history {args.history}, "
          f"chunk 10, n_action_steps 5, "
          f"robot {args.robot}, {args.seconds:g} s per row; {describe(info)}")  # fmt: skip
    print(f"{'Hz':>4s} {'mode':6s} {'achieved':>8s} {'jitter p50':>10s} {'p99':>7s} {'infer p50':>9s} "
          f"{'obs->act p50':>12s} {'p99':>7s} {'overruns':>8s}")  # fmt: skip
    for r in rows:
        ms = {k: "-" if r[k] is None else f"{r[k]:.1f}ms" for k in r if k.endswith("_ms")}
        print(f"{r['hz']:4.0f} {r['mode']:6s} {r['hz_achieved']:8.2f} {ms['jitter_p50_ms']:>10s} "
              f"{ms['jitter_p99_ms']:>7s} {ms['inference_p50_ms']:>9s} {ms['obs_to_action_p50_ms']:>12s} "
              f"{ms['obs_to_action_p99_ms']:>7s} {r['missed_ticks']:8d}")  # fmt: skip
    print(json.dumps({"robot": args.robot, "preset": args.preset, "history": args.history, "compiled": args.compile,
                      "machine": info,
                      "results": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
