"""Training throughput: samples/s and achieved FLOP/s against the matmul peak measured in the same run.

    python bench/train_throughput.py [--preset small] [--batch 32] [--history 4] [--steps 10] [--repeats 5]
        [--profile]

FLOPs per step are counted by torch's FlopCounterMode over one forward and backward (matmuls,
convolutions, attention); the peak is the best of large square matmuls timed here, in bf16 where the
device has it natively (as `vla train` autocasts) and in fp32 elsewhere. Peak and training alternate
`--repeats` times; the fraction of the peak is the median of the repeats' own ratios (a ratio measured
in one run holds across machines and loads better than either figure). Prints a table with the machine
and its load and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from common import describe, machine, make_policy, random_batch
from torch.utils.flop_counter import FlopCounterMode

from vla.train_device import native_bf16


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, size: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """Best FLOP/s of a (size x size) @ (size x size) matmul in `dtype`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def train_step(policy, opt, batch, device: str, bf16: bool) -> None:
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = policy(batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--history", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timings of the peak and of training")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (also off where bf16 is not native)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the policy (as train.compile)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators over 3 steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--language-model", default="minilm", help="minilm (the wheel's) or a local model directory")
    args = parser.parse_args()
    # As `vla train` does: bf16 autocast only where the device computes bf16 natively.
    device = args.device
    info = machine()
    bf16 = not args.fp32 and native_bf16(torch.device(device))
    dtype, size = torch.bfloat16 if bf16 else torch.float32, 8192 if device.startswith("cuda") else 2048
    policy = make_policy(
        args.preset, args.history, args.chunk, device=device, language_model=args.language_model
    ).train()
    model = torch.compile(policy) if args.compile else policy
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=device.startswith(("cpu", "cuda")))  # as vla train
    batch = random_batch(args.batch, args.history, args.chunk)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        train_step(policy, opt, batch, device, bf16)
    flops = counter.get_total_flops()
    for _ in range(3):  # warm-up
        train_step(model, opt, batch, device, bf16)
    peaks, step_seconds = [], []
    for _ in range(args.repeats):
        peaks.append(matmul_peak(device, size, dtype))
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(model, opt, batch, device, bf16)
        sync(device)
        step_seconds.append((time.perf_counter() - start) / args.steps)
    info["load_after"] = round(os.getloadavg()[0], 2)
    seconds, peak = float(np.median(step_seconds)), float(np.median(peaks))
    result = {
        "device": device,
        "preset": args.preset,
        "batch": args.batch,
        "history": args.history,
        "bf16": bf16,
        "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 2),
        "step_ms": round(1000 * seconds, 1),
        "samples_per_s": round(args.batch / seconds, 1),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_tflops": round(flops / seconds / 1e12, 3),
        "peak_tflops": round(peak / 1e12, 3),
    }
    result["fraction_of_peak"] = round(float(np.median([flops / t / p for t, p in zip(step_seconds, peaks)])), 3)
    result["repeats"], result["machine"] = args.repeats, info
    print(f"{'bf16' if bf16 else 'fp32'}, median of {args.repeats} repeats; {describe(info)}")
    print(
        f"{'preset':8s} {'batch':>5s} {'step ms':>8s} {'samples/s':>10s} {'TFLOP/s':>8s} {'peak':>7s} {'of peak':>8s}"
    )
    r = result
    print(f"{args.preset:8s} {args.batch:5d} {r['step_ms']:8.1f} {r['samples_per_s']:10.1f} "
          f"{r['achieved_tflops']:8.3f} {r['peak_tflops']:7.2f} {r['fraction_of_peak']:8.1%}")  # fmt: skip
    if args.profile:
        print_profile(model, opt, batch, device, bf16)
    print(json.dumps(result))


def print_profile(model, opt, batch, device: str, bf16: bool, steps: int = 3, top: int = 15) -> None:
    """Where a training step's time goes: torch.profiler's operators by their own time over `steps` steps,
    as a share of the whole."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(model, opt, batch, device, bf16)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"torch.profiler, {steps} steps: operators by own CPU time")
    for e in ops[:top]:
        print(f"  {e.key[:60]:60s} {e.self_cpu_time_total / total:6.1%} {e.count // steps:5d} calls/step")


if __name__ == "__main__":
    main()
