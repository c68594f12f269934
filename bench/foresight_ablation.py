"""Does foreseeing frames help the policy act, and which decoder foresees best? The quickstart's data,
steps and config, trained in several variants with the same seeds, each evaluated on the same episodes.

    python bench/foresight_ablation.py --out runs/bench-foresight

Variants (`--variants`, any of):
  actions   foresight weight 0: the actions alone (its untrained residual decoder is copy-last exactly)
  residual  actions + the residual decoder (reads the current frame, predicts the change): the default
  mae       actions + the MAE-style decoder (rebuilds the whole frame from the readouts; the old default)
  every     residual, with every step of the window supervised (GR-1) instead of only the last

GR-1 reports the same ablation on CALVIN (average chain length 3.33 without video prediction, 3.82 with).
Each variant is trained once per `--train-seeds` seed; success is pooled over seeds and tasks with a 95%
Wilson interval; foresight is given per horizon as the gain over copying the last frame in dB, on the
whole frame and on the pixels that change, averaged over tasks. Re-running with the same --out reuses the
store and finished runs. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vla import checkpoint
from vla.collect import CollectConfig, collect
from vla.config import StoreConfig, load_config
from vla.eval_report import wilson_interval
from vla.evaluate import EvalConfig, evaluate
from vla.train import train

QUICKSTART_TASKS = "drawer-close-v3,button-press-topdown-v3,window-close-v3,reach-v3"
VARIANTS = {
    "actions": ["policy.foresight_weight=0"],
    "residual": ["policy.foresight_decoder=residual"],
    "mae": ["policy.foresight_decoder=mae"],
    "every": ["policy.foresight_decoder=residual", "policy.every_step_loss=true"],
}


def _train(args, store: str, variant: str, seed: int) -> tuple[str, float]:
    """Train (or reuse) one variant; returns its run directory and its training time in seconds."""
    run = Path(args.out) / f"{variant}-seed{seed}"
    timing = run / "train_seconds.json"
    if timing.exists():
        return str(run), json.loads(timing.read_text())["seconds"]
    cfg = load_config(args.config, [f"train.seed={seed}", *VARIANTS[variant], *args.set])
    cfg.data.stores = [StoreConfig(store)]
    cfg.train.out = str(run)
    resume = (run / checkpoint.CHECKPOINT).exists()  # an interrupted run continues
    start = time.perf_counter()
    train(cfg, resume=resume)
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds, "resumed": resume}) + "\n")
    return str(run), seconds


def _evaluate(args, run: str, name: str) -> dict:
    out = Path(args.out) / f"eval-{name}"
    if (out / "report.json").exists():  # evaluated before, on the same episodes
        return json.loads((out / "report.json").read_text())
    report, _ = evaluate(EvalConfig(policy=run, suite="metaworld", tasks=args.tasks, episodes=args.episodes,
                                    workers=args.workers, max_steps=args.max_steps, seed=args.eval_seed,
                                    videos=0, out=str(out)))  # fmt: skip
    return report


def _foresight(reports: list[dict]) -> dict[str, dict]:
    """Per horizon: gains over copy-last (whole frame, changed pixels) averaged over tasks and reports, and
    on how many (task, seed) pairs the foresight beat copy-last."""
    per_horizon: dict[str, list[dict]] = {}
    for report in reports:
        for stats in report["tasks"].values():
            for ahead, m in (stats.get("foresight") or {}).items():
                per_horizon.setdefault(str(ahead), []).append(m)
    out = {}
    for ahead, ms in sorted(per_horizon.items(), key=lambda kv: int(kv[0])):
        out[ahead] = {
            "ms": ms[0]["ms"],
            "gain_db": float(np.mean([m["gain_db"] for m in ms])),
            "changed_gain_db": float(np.mean([m["changed_gain_db"] for m in ms if m["changed_gain_db"] is not None])),
            "psnr": float(np.mean([m["psnr"] for m in ms])),
            "copy_psnr": float(np.mean([m["copy_psnr"] for m in ms])),
            "beats_copy_whole": f"{sum(m['gain_db'] > 0 for m in ms)}/{len(ms)}",
            "beats_copy_changed": f"{sum((m['changed_gain_db'] or 0) > 0 for m in ms)}/{len(ms)}",
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1])
    parser.add_argument("--variants", default="residual,actions,mae,every", help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--train-seeds", default="0,1", help="training seeds, each variant trained once per seed")
    parser.add_argument("--tasks", default=QUICKSTART_TASKS, help="collected, trained and evaluated tasks")
    parser.add_argument("--demos", type=int, default=20, help="expert demonstrations per task (the quickstart's)")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the training config of every variant")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (every variant)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task and run")
    parser.add_argument("--max-steps", type=int, default=200, help="evaluation episode limit (the quickstart's)")
    parser.add_argument("--eval-seed", type=int, default=0, help="the same evaluation episodes for every run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-foresight")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.train_seeds.split(",")]
    out = Path(args.out)
    store = str(out / "demos.zarr")
    collect(
        CollectConfig(
            suite="metaworld", tasks=args.tasks, episodes_per_task=args.demos, workers=args.workers, out=store
        )
    )  # fmt: skip  (the quickstart's collect; resumes, or keeps a finished store)

    reports: dict[str, list[dict]] = {v: [] for v in variants}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for seed in seeds:  # seed by seed: every variant has a result after the first seed
        for variant in variants:
            run, t = _train(args, store, variant, seed)
            seconds[variant].append(t)
            reports[variant].append(_evaluate(args, run, f"{variant}-seed{seed}"))
    results = {variant: _result(reports[variant], seconds[variant]) for variant in variants}
    _print(args, seeds, results)


def _result(reports: list[dict], seconds: list[float]) -> dict:
    """Success pooled over seeds and tasks (Wilson interval), per seed and per task; foresight per horizon."""
    successes = sum(s["successes"] for r in reports for s in r["tasks"].values())
    episodes = sum(s["episodes"] for r in reports for s in r["tasks"].values())
    return {
        "success": successes / episodes, "successes": successes, "episodes": episodes,
        "ci95": list(wilson_interval(successes, episodes)),
        "per_seed": [r["means"][0]["success_rate"] for r in reports],
        "per_task": {t: float(np.mean([r["tasks"][t]["success_rate"] for r in reports])) for t in reports[0]["tasks"]},
        "foresight": _foresight(reports),
        "train_s": float(np.mean(seconds)),
    }  # fmt: skip


def _print(args, seeds: list[int], results: dict) -> None:
    print(
        f"\nSame data ({args.demos} demos x {len(args.tasks.split(','))} tasks), steps and seeds {seeds}; "
        f"{args.episodes} episodes per task and seed; gains over copy-last in dB, mean over tasks and seeds:\n"
    )
    horizons = sorted({h for r in results.values() for h in r["foresight"]}, key=int)
    head = " | ".join(f"gain {h} steps / changed" for h in horizons)
    print(f"| variant | success (95% CI) | per seed | {head} | train time |")
    print("|---|---|---|" + "---|" * len(horizons) + "---|")
    for variant, r in results.items():
        lo, hi = r["ci95"]
        gains = " | ".join(f"{r['foresight'][h]['gain_db']:+.2f} / {r['foresight'][h]['changed_gain_db']:+.2f}"
                           if h in r["foresight"] else "-" for h in horizons)  # fmt: skip
        per_seed = ", ".join(f"{s:.1%}" for s in r["per_seed"])
        print(f"| {variant} | {r['success']:.1%} ({lo:.1%}-{hi:.1%}) | {per_seed} | {gains} | {r['train_s']:.0f} s |")
    print(json.dumps({"tasks": args.tasks, "demos": args.demos, "config": args.config, "set": args.set,
                      "train_seeds": seeds, "episodes_per_task": args.episodes, "eval_seed": args.eval_seed,
                      "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
