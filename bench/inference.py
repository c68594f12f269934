"""Per-step inference latency: streaming (KV cache, one new timestep per call) versus recomputing the
whole window, at history 10, for the `small` and `gr1` presets; and the largest difference between
the actions the two produce on the same observations.

    python bench/inference.py [--presets small,gr1] [--steps 40] [--repeats 5] [--device cpu] [--compile]

Each step is one `policy.predict` on a new observation: the action chunk, plus the foreseen frame
when --foresight is given. The two paths alternate, `--repeats` times; each figure is the median over
repeats of the median step once the window is full, and the speedup is the median of the repeats' own
ratios (a ratio measured in one run holds across machines and loads better than either time). Prints
a table with the machine and its load and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from common import describe, machine, make_policy, random_observation

HISTORY = 10


def run(policy, observations, device: str) -> tuple[list[float], np.ndarray]:
    policy.reset()
    times, actions = [], []
    for obs in observations:
        start = time.perf_counter()
        prediction = policy.predict(obs, "press the button from the top")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        actions.append(prediction.actions)
    return times, np.stack(actions)


def bench_preset(preset: str, steps: int, repeats: int, device: str, foresight: bool, language_model: str,
                 compile: bool = False) -> dict:  # fmt: skip
    # The same seeded weights twice: one policy streams, the other recomputes the window every step.
    policy, full = (make_policy(preset, HISTORY, device=device, language_model=language_model, foresee=foresight,
                                streaming=streaming).eval() for streaming in (True, False))  # fmt: skip
    if compile:
        policy.compile_inference()
    rng = np.random.default_rng(0)
    observations = [random_observation(rng) for _ in range(steps)]
    start = time.perf_counter()
    run(policy, observations[:HISTORY], device)  # warm-up: kernels, caches, the sentence encoder, compiling
    warmup_s = time.perf_counter() - start
    run(full, observations[:HISTORY], device)
    steady = slice(HISTORY, None)  # once the window is full, the cost a controller pays every step
    stream_ms, full_ms, diffs = [], [], []
    for _ in range(repeats):
        stream_t, stream_a = run(policy, observations, device)
        full_t, full_a = run(full, observations, device)
        stream_ms.append(1000 * float(np.median(stream_t[steady])))
        full_ms.append(1000 * float(np.median(full_t[steady])))
        diffs.append(float(np.abs(stream_a - full_a).max()))
    return {
        "preset": preset,
        "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
        "stream_ms": float(np.median(stream_ms)),
        "full_ms": float(np.median(full_ms)),
        "speedup": float(np.median(np.array(full_ms) / np.array(stream_ms))),
        "max_abs_diff": max(diffs),
        "compiled": compile,
        "warmup_s": round(warmup_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--presets", default="small,gr1")
    parser.add_argument("--steps", type=int, default=40, help="policy steps per path and repeat")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of the two paths")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--language-model", default="minilm", help="minilm (the wheel's) or a local model directory")
    parser.add_argument("--foresight", action="store_true", help="also decode the foreseen frame every step")
    parser.add_argument(
        "--compile", action="store_true", help="compile the streaming step (compile_inference: AOTInductor on a CPU)"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    info = machine()
    rows = [
        bench_preset(p, args.steps, args.repeats, args.device, args.foresight, args.language_model, args.compile)
        for p in args.presets.split(",")
    ]
    info["load_after"] = round(os.getloadavg()[0], 2)
    print(f"history {HISTORY}, device {args.device}, foresight {'on' if args.foresight else 'off'}, streaming "
          f"{'compiled' if args.compile else 'eager'}, median of {args.repeats} repeats; {describe(info)}")  # fmt: skip
    print(f"{'preset':8s} {'params':>8s} {'stream ms':>10s} {'full ms':>9s} {'speedup':>8s} {'max |diff|':>11s} "
          f"{'warm-up s':>10s}")  # fmt: skip
    for r in rows:
        print(f"{r['preset']:8s} {r['params_m']:7.1f}M {r['stream_ms']:10.2f} {r['full_ms']:9.2f} "
              f"{r['speedup']:7.1f}x {r['max_abs_diff']:11.2e} {r['warmup_s']:10.1f}")  # fmt: skip
    print(json.dumps({"device": args.device, "history": HISTORY, "repeats": args.repeats, "machine": info,
                      "results": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
