"""vla beside LeRobot's ACT and Diffusion Policy on the same Meta-World data, budget and seeds.

    bash bench/build_lerobot_env.sh lerobot-env            # once: LeRobot 0.4.4 in its own environment
    python bench/peers.py --store runs/quickstart/demos.zarr --config configs/quickstart.yaml \\
        --tasks drawer-close-v3,button-press-topdown-v3,window-close-v3,reach-v3 --episodes 10 --workers 2 \\
        --peers act,act-cpu,diffusion-cpu --out runs/peers

1. vla: `vla train` of the config on the store (its `train.steps`), timed: that wall time is the budget.
   `--vla-run DIR` evaluates an already trained run instead, with `--budget-s` its training time.
2. The store is exported as a LeRobot dataset (`vla data export-lerobot`, AV1 as LeRobot records).
3. Each peer (`--peers`, from PEER_ARGS below: LeRobot's architectures and ones sized for a CPU budget)
   trains on the CPU in LeRobot's environment (`--lerobot-python`, default $VLA_LEROBOT_PYTHON) for the
   same wall-clock budget: a short calibration run measures its seconds per step (LeRobot's logged update +
   data time), and the real run gets budget / that many steps.
4. All are evaluated by `vla eval` on the same tasks, seeds and held-out scenes (`--policy lerobot:DIR`
   for the peers), and the table gives parameters, success with 95% Wilson intervals (mean over the tasks),
   training time and steps, and the mean policy-step latency. Its last line is one JSON object.

Each finished row is saved in --out (row-<policy>.json) and reused by a re-run. Not part of the tests
(minutes to hours); `--budget-s 60 --episodes 1 --max-steps 20` smoke-tests it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

# LeRobot 0.4.4 policies as run here: the architecture LeRobot ships ("act", "diffusion") or sized for a
# CPU budget ("-cpu": about vla small's cost per step), each with only what the data dictates changed.
# Backbones start from scratch (no weights can be downloaded). ACT predicts and executes the same action
# chunk as vla's config (its default chunk of 100 outlasts a whole Meta-World episode, ~80 steps, so it
# would run open loop); Diffusion crops its 64x64 frames to 56x56 (its default crop, 84x84, is larger than
# the frames) and samples with DDIM in 10 steps (its default, 100 DDPM steps, makes evaluation take hours).
DIFFUSION = ["--policy.type=diffusion", "--policy.crop_shape=[56,56]", "--policy.noise_scheduler_type=DDIM",
             "--policy.num_inference_steps=10"]  # fmt: skip
PEER_ARGS = {
    "act": ["--policy.type=act"],
    "act-cpu": [
        "--policy.type=act",
        "--policy.dim_model=256",
        "--policy.dim_feedforward=1024",
        "--policy.n_encoder_layers=2",
    ],  # fmt: skip
    "diffusion": DIFFUSION,
    "diffusion-cpu": [*DIFFUSION, "--policy.down_dims=[128,256,512]", "--policy.diffusion_step_embed_dim=64"],
}


def peer_args(peer: str, chunk: int, n_action_steps: int) -> list[str]:
    """lerobot-train's policy flags for `peer`; ACT's chunk is vla's (`chunk` predicted, `n_action_steps` run)."""
    args = [*PEER_ARGS[peer], "--policy.pretrained_backbone_weights=null"]
    if peer.startswith("act"):
        args += [f"--policy.chunk_size={chunk}", f"--policy.n_action_steps={n_action_steps}"]
    return args


def lerobot_train(python: str, dataset: Path, policy: list[str], steps: int, out: Path, batch: int) -> float:
    """Train a LeRobot policy (`policy`: its lerobot-train flags) for `steps`; returns the wall time (s)."""
    cmd = [python, "-m", "lerobot.scripts.lerobot_train", "--dataset.repo_id=local/peers", f"--dataset.root={dataset}",
           "--dataset.video_backend=pyav", *policy, "--policy.device=cpu", "--policy.push_to_hub=false",
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

    cfg = load_config(args.config, [f"train.out={out / 'vla'}", *args.set])
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
    lines = ["| policy | parameters | success (mean over tasks) | 95% Wilson CI | training | steps | latency / step |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| {r['policy']} | {r['params'] / 1e6:.1f} M | {100 * r['success']:.1f}% | "
                     f"{100 * lo:.1f}-{100 * hi:.1f}% | {r['train_s'] / 60:.1f} min | {r['steps'] or '-'} | "
                     f"{r['latency_ms']:.1f} ms |")  # fmt: skip
    return "\n".join(lines)


def lerobot_params(log: Path) -> int:
    found = re.search(r"num_learnable_params=(\d+)", log.read_text())
    return int(found.group(1)) if found else 0


def vla_params(run: Path) -> int:
    from vla.checkpoint import load_policy

    return sum(p.numel() for p in load_policy(str(run)).model.parameters())


def cached_row(path: Path, make) -> dict:
    """The row saved at `path` by an earlier run of the bench, else `make()` saved there (resumable runs)."""
    if path.is_file():
        return json.loads(path.read_text())
    row = make()
    path.write_text(json.dumps(row))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a Meta-World robot store (vla collect)")
    p.add_argument("--config", default="configs/quickstart.yaml", help="vla's run config (its preset: small)")
    p.add_argument("--tasks", required=True, help="evaluation tasks, as vla eval --tasks")
    p.add_argument("--peers", default="act,act-cpu,diffusion-cpu", help=f"from {', '.join(PEER_ARGS)}")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="evaluation episode limit (default: the suite's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="the peers' batch size (LeRobot's default)")
    p.add_argument("--calibration-steps", type=int, default=8)
    p.add_argument("--vla-run", default=None, help="evaluate this trained run instead of training one")
    p.add_argument("--budget-s", type=float, default=None, help="the training budget (default: vla's time)")
    p.add_argument("--lerobot-python", default=os.environ.get("VLA_LEROBOT_PYTHON"))
    p.add_argument("--set", action="append", default=[], help="vla config overrides")
    p.add_argument("--out", default="runs/peers", help="results; rows already there are reused (delete to redo)")
    args = p.parse_args()
    if not args.lerobot_python:
        raise SystemExit("give --lerobot-python or set VLA_LEROBOT_PYTHON (bash bench/build_lerobot_env.sh ENV)")
    peers = args.peers.split(",")
    for peer in peers:
        if peer not in PEER_ARGS:
            raise SystemExit(f"--peers: unknown peer {peer!r}; choose from {', '.join(PEER_ARGS)}")
    if args.vla_run and args.budget_s is None:
        raise SystemExit("--vla-run needs --budget-s (its training time)")
    os.environ["VLA_LEROBOT_PYTHON"] = args.lerobot_python
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def vla_row() -> dict:
        run, train_s, steps = (Path(args.vla_run), args.budget_s, None) if args.vla_run else train_vla(args, out)
        return {"policy": "vla small", "params": vla_params(run), "train_s": train_s, "steps": steps,
                **evaluate_policy(args, str(run), out / "eval-vla")}  # fmt: skip

    rows = [cached_row(out / "row-vla.json", vla_row)]
    budget = args.budget_s or rows[0]["train_s"]
    dataset = out / "lerobot"
    if not dataset.exists():
        subprocess.run(["vla", "data", "export-lerobot", args.store, "--out", str(dataset), "-q"], check=True)
    from vla.config import load_config

    policy = load_config(args.config, args.set).policy

    def peer_row(peer: str) -> dict:
        flags = peer_args(peer, policy.chunk, policy.n_action_steps)
        calib = out / f"calibrate-{peer}"
        lerobot_train(args.lerobot_python, dataset, flags, args.calibration_steps, calib, args.batch)
        steps = max(1, int(budget / seconds_per_step(Path(f"{calib}.log"))))
        run = out / f"train-{peer}"
        train_s = lerobot_train(args.lerobot_python, dataset, flags, steps, run, args.batch)
        return {"policy": f"LeRobot {peer}", "params": lerobot_params(Path(f"{run}.log")), "train_s": train_s,
                "steps": steps, **evaluate_policy(args, f"lerobot:{run}", out / f"eval-{peer}")}  # fmt: skip

    rows += [cached_row(out / f"row-{peer}.json", lambda peer=peer: peer_row(peer)) for peer in peers]
    print(table(rows))
    (out / "peers.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps({"budget_s": budget, "rows": rows}))


if __name__ == "__main__":
    main()
