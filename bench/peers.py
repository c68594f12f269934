"""vla beside LeRobot's ACT and Diffusion Policy on the same Meta-World data, budget and seeds.

    bash bench/build_lerobot_env.sh lerobot-env            # once: LeRobot 0.4.4 in its own environment
    python bench/peers.py --store runs/quickstart/demos.zarr --config configs/quickstart.yaml \\
        --tasks drawer-close-v3,button-press-topdown-v3,window-close-v3,reach-v3 --episodes 20 --out runs/peers

1. vla: `vla train` of the config on the store (its `train.steps`), timed: that wall time is the budget.
   `--vla-run DIR` evaluates an already trained run instead, with `--budget-s` its training time.
2. The store is exported as a LeRobot dataset (`vla data export-lerobot`, AV1 as LeRobot records).
3. Each peer (`--peers act,diffusion`) trains on the CPU in LeRobot's environment (`--lerobot-python`,
   default $VLA_LEROBOT_PYTHON) for the same wall-clock budget: a short calibration run measures its
   seconds per step (LeRobot's logged update + data time), and the real run gets budget / that many steps.
4. All are evaluated by `vla eval` on the same tasks, seeds and held-out scenes (`--policy lerobot:DIR`
   for the peers), and the table gives success with 95% Wilson intervals (mean over the tasks), training
   time and steps, and the mean policy-step latency. Its last line is one JSON object.

Not part of the tests (minutes to hours); `--budget-s 60 --episodes 1 --max-steps 20` smoke-tests it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

PEER_ARGS = {  # LeRobot 0.4.4 policy flags for 64x64 frames on the CPU, backbones from scratch (offline)
    "act": ["--policy.type=act", "--policy.pretrained_backbone_weights=null"],
    "diffusion": ["--policy.type=diffusion", "--policy.pretrained_backbone_weights=null"],
}


def lerobot_train(python: str, dataset: Path, peer: str, steps: int, out: Path, batch: int) -> float:
    """Train `peer` for `steps` with lerobot-train in LeRobot's environment; returns the wall time (s)."""
    cmd = [python, "-m", "lerobot.scripts.lerobot_train", "--dataset.repo_id=local/peers", f"--dataset.root={dataset}",
           "--dataset.video_backend=pyav", *PEER_ARGS[peer], "--policy.device=cpu", "--policy.push_to_hub=false",
           "--wandb.enable=false", f"--steps={steps}", f"--batch_size={batch}", f"--save_freq={steps}",
           "--log_freq=1", "--eval_freq=0", "--num_workers=0", f"--output_dir={out}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_LEROBOT_HOME": str(out.parent / "lerobot-home")}
    start = time.perf_counter()
    with open(f"{out}.log", "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def seconds_per_step(log: Path) -> float:
    """LeRobot's own measure of a training step: the mean logged update + data time, the first step left out."""
    times = [float(u) + float(d) for u, d in re.findall(r"updt_s:([\d.]+) data_s:([\d.]+)", log.read_text())]
    if not times:
        raise SystemExit(f"no step times in {log}")
    return sum(times[1:] or times) / len(times[1:] or times)


def train_vla(args, out: Path) -> tuple[Path, float, int]:
    from vla.config import StoreConfig, load_config
    from vla.train import train

    cfg = load_config(args.config, [f"train.out={out / 'vla'}", "train.eval.suite=null", *args.set])
    cfg.data.stores = [StoreConfig(args.store)]
    start = time.perf_counter()
    result = train(cfg, progress=False)
    return result.out, time.perf_counter() - start, result.steps


def evaluate_policy(args, policy: str, out: Path) -> dict:
    from vla.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(policy=policy, suite="metaworld", tasks=args.tasks, episodes=args.episodes, seed=args.seed,
                     workers=args.workers, videos=0, max_steps=args.max_steps, out=str(out))  # fmt: skip
    report, _ = evaluate(cfg, progress=False)
    mean = report["means"][0]
    return {"success": mean["success_rate"], "ci95": mean["ci95"], "episodes": mean["episodes"],
            "latency_ms": 1000 * report["latency"]["mean_s"]}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| policy | success (mean over tasks) | 95% Wilson CI | training | steps | latency / step |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['policy']} | {100 * r['success']:.1f}% | {100 * lo:.1f}-{100 * hi:.1f}% | "
                     f"{r['train_s'] / 60:.1f} min | {r['steps']} | {r['latency_ms']:.1f} ms |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a Meta-World robot store (vla collect)")
    p.add_argument("--config", default="configs/quickstart.yaml", help="vla's run config (its preset: small)")
    p.add_argument("--tasks", required=True, help="evaluation tasks, as vla eval --tasks")
    p.add_argument("--peers", default="act,diffusion")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="evaluation episode limit (default: the suite's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="the peers' batch size")
    p.add_argument("--calibration-steps", type=int, default=5)
    p.add_argument("--vla-run", default=None, help="evaluate this trained run instead of training one")
    p.add_argument("--budget-s", type=float, default=None, help="the training budget (default: vla's time)")
    p.add_argument("--lerobot-python", default=os.environ.get("VLA_LEROBOT_PYTHON"))
    p.add_argument("--set", action="append", default=[], help="vla config overrides")
    p.add_argument("--out", default="runs/peers")
    args = p.parse_args()
    if not args.lerobot_python:
        raise SystemExit("give --lerobot-python or set VLA_LEROBOT_PYTHON (bash bench/build_lerobot_env.sh ENV)")
    os.environ["VLA_LEROBOT_PYTHON"] = args.lerobot_python
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.vla_run:
        vla_run, budget, vla_steps = Path(args.vla_run), args.budget_s, None
        if budget is None:
            raise SystemExit("--vla-run needs --budget-s (its training time)")
    else:
        vla_run, vla_time, vla_steps = train_vla(args, out)
        budget = args.budget_s or vla_time
    rows = [{"policy": "vla", "train_s": budget, "steps": vla_steps,
             **evaluate_policy(args, str(vla_run), out / "eval-vla")}]  # fmt: skip
    dataset = out / "lerobot"
    if not dataset.exists():
        subprocess.run(["vla", "data", "export-lerobot", args.store, "--out", str(dataset), "-q"], check=True)
    for peer in args.peers.split(","):
        calib = out / f"calibrate-{peer}"
        lerobot_train(args.lerobot_python, dataset, peer, args.calibration_steps, calib, args.batch)
        steps = max(1, int(budget / seconds_per_step(Path(f"{calib}.log"))))
        train_s = lerobot_train(args.lerobot_python, dataset, peer, steps, out / f"train-{peer}", args.batch)
        rows.append({"policy": f"LeRobot {peer}", "train_s": train_s, "steps": steps,
                     **evaluate_policy(args, f"lerobot:{out / f'train-{peer}'}", out / f"eval-{peer}")})  # fmt: skip
    print(table(rows))
    (out / "peers.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps({"budget_s": budget, "rows": rows}))


if __name__ == "__main__":
    main()
