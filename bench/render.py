"""What a camera frame costs on a software renderer, with MuJoCo's default 4x multisampling and without
it (vla's renderers: `vla.envs.render.make_renderer`), for one scene of each suite.

    MUJOCO_GL=egl python bench/render.py [--size 64] [--frames 60]

Pinned to one core, Mesa's rasteriser (llvmpipe) on one thread: the figures are per core. Prints a
table, then as its last line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe (Mesa's CPU rasteriser) on one thread

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from vla import envs  # noqa: E402

SCENES = {"metaworld": "drawer-close-v3", "tabletop": "place-in-bowl"}


def ms_per_frame(env, frames: int) -> tuple[float, np.ndarray]:
    """Median of three timings of `frames` renders of the env's first camera, in ms per frame."""
    camera = env.unwrapped.cameras[0]
    image = env.unwrapped.render_camera(camera)  # warm-up: the first frame compiles shaders
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(frames):
            image = env.unwrapped.render_camera(camera)
        times.append(1000 * (time.perf_counter() - start) / frames)
    return float(np.median(times)), image


def with_samples(env, samples: int, size: int) -> None:
    """Rebuild the env's renderer with `samples` multisamples (MuJoCo's default: 4; vla's: 0), shadows and
    reflections off as in vla's."""
    unwrapped = env.unwrapped
    model = unwrapped._renderer.model
    unwrapped._renderer.close()
    model.vis.quality.offsamples = samples
    unwrapped._renderer = mujoco.Renderer(model, size, size)
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
        unwrapped._renderer.scene.flags[flag] = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image size (pixels, square)")
    parser.add_argument("--frames", type=int, default=60, help="frames per timing")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rows = []
    for suite, task in SCENES.items():
        env = envs.get_suite(suite).make_env(task, image_size=args.size)
        env.reset(seed=0)
        row = {"suite": suite, "task": task}
        for samples in (4, 0):
            with_samples(env, samples, args.size)
            ms, image = ms_per_frame(env, args.frames)
            row[f"ms_{samples}x"] = round(ms, 2)
            row[f"image_{samples}x"] = image.astype(np.int16)
        row["speedup"] = round(row["ms_4x"] / row["ms_0x"], 2)
        row["mean_abs_diff"] = round(float(np.abs(row.pop("image_4x") - row.pop("image_0x")).mean()), 2)
        rows.append(row)
        env.close()
    print(f"{'suite':10s} {'task':18s} {'4x MSAA ms':>10s} {'no MSAA ms':>10s} {'speedup':>8s} {'mean |diff|':>11s}")
    for r in rows:
        print(f"{r['suite']:10s} {r['task']:18s} {r['ms_4x']:10.1f} {r['ms_0x']:10.1f} {r['speedup']:7.2f}x "
              f"{r['mean_abs_diff']:11.2f}")  # fmt: skip
    print(json.dumps({"image_size": args.size, "cores": 1, "scenes": rows}))


if __name__ == "__main__":
    main()
