"""Tabletop suite throughput on one CPU core: rendering both cameras, physics, and whole env steps.

    MUJOCO_GL=egl python bench/tabletop_render.py [--size 64] [--seconds 3]

A "frame" is one camera image: a step with both cameras renders two frames. The process is pinned
to one core and Mesa's software rasteriser to one thread, so the figures are per core. Prints a
table, then as its last line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe (Mesa's CPU rasteriser) on one thread

import numpy as np  # noqa: E402

from vla.envs.tabletop.env import TabletopEnv  # noqa: E402
from vla.envs.tabletop.experts import TabletopExpert  # noqa: E402
from vla.envs.tabletop.scene import N_SUBSTEPS  # noqa: E402


def rate(fn, seconds: float) -> float:
    """Calls of `fn` per second, timed over about `seconds` after a short warm-up."""
    for _ in range(5):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--size", type=int, default=64, help="image size (pixels, square)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--task", default="place-in-bowl")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    env = TabletopEnv(args.task, image_size=args.size, cameras=("static", "wrist"))
    expert = TabletopExpert(env)
    expert.reset(0)
    obs, _ = env.reset(seed=0)
    cams = env.cameras

    def render_both() -> None:
        for cam in cams:
            env.render_camera(cam)

    def physics() -> None:
        env.scene.command(np.zeros(3), 0.0)
        env.scene.step()

    state = {"obs": obs}

    def env_step() -> None:
        obs, _, terminated, truncated, _ = env.step(expert.act(state["obs"]))
        if terminated or truncated:
            expert.reset(0)
            obs, _ = env.reset(seed=0)
        state["obs"] = obs

    render_rate = rate(render_both, args.seconds)  # both cameras per call
    step_rate = rate(env_step, args.seconds)
    physics_rate = rate(physics, args.seconds)
    env.close()
    figures = {
        "image_size": args.size,
        "cores": 1,
        "render_frames_per_s": round(render_rate * len(cams), 1),  # one frame = one camera image
        "render_both_cameras_per_s": round(render_rate, 1),
        "physics_control_steps_per_s": round(physics_rate, 1),
        "physics_steps_per_s": round(physics_rate * N_SUBSTEPS, 1),
        "env_steps_per_s": round(step_rate, 1),  # physics + both cameras + expert
        "realtime_factor": round(physics_rate / env.fps, 1),
    }
    print(f"tabletop on one core, {args.size}x{args.size}, cameras {', '.join(cams)}")
    print(f"  {'rendering':28s} {figures['render_frames_per_s']:9.1f} frames/s (one camera image each)")
    print(f"  {'rendering both cameras':28s} {figures['render_both_cameras_per_s']:9.1f} pairs/s")
    print(
        f"  {'physics, control steps':28s} {figures['physics_control_steps_per_s']:9.1f} steps/s ({N_SUBSTEPS} x 2 ms)"
    )
    print(f"  {'env.step with both cameras':28s} {figures['env_steps_per_s']:9.1f} steps/s (expert acting)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
