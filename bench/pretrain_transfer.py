"""Does video pretraining help? Pretrain on action-free video of many Meta-World tasks, finetune on a few
demonstrations of a few of them, and compare with the same finetuning from scratch (same data, same
steps, same seeds) on success rate and on foresight PSNR in the simulator.

    python bench/pretrain_transfer.py --out runs/bench-transfer

The video store holds expert clips of `--video-tasks` (actions and states dropped, `vla collect --kind
video`); the finetuning store `--demos` robot demonstrations of each of `--tasks`, from other seeds.
Both policies use the same config (`--config`, `small`), so the only difference is `--init-from`.
Re-running with the same --out reuses stores and finished runs. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vla import checkpoint
from vla.collect import CollectConfig, collect
from vla.config import StoreConfig, load_config
from vla.eval_report import format_markdown
from vla.evaluate import EvalConfig, evaluate
from vla.train import summarize_init, train

TARGETS = "drawer-open-v3,door-open-v3,window-open-v3,button-press-topdown-v3"


def _collect(out: Path, name: str, **kw) -> str:
    store = str(out / f"{name}.zarr")
    collect(CollectConfig(suite="metaworld", out=store, **kw))  # resumes: a finished store is left as it is
    return store


def _train(args, out: Path, name: str, stores: list[str], steps: int, init: str | None = None, seed: int = 0) -> str:
    run = out / name
    overrides = [f"policy.preset={args.preset}", f"train.steps={steps}", f"train.seed={seed}", *args.set]
    cfg = load_config(args.config, overrides)
    cfg.data.stores = [StoreConfig(s) for s in stores]
    cfg.train.out = str(run)
    resume = (run / checkpoint.CHECKPOINT).exists()  # an interrupted or finished run: continue (or keep) it
    result = train(cfg, resume=resume, init=None if resume else init)
    if result.init_report:
        print(f"{name}: init from {init}\n{summarize_init(result.init_report)}")
    return str(run)


def _evaluate(args, policy: str, name: str, baseline: str | None = None) -> dict:
    out = Path(args.out) / f"eval-{name}-{args.episodes}ep-seed{args.seed}"
    report, _ = evaluate(EvalConfig(policy=policy, suite="metaworld", tasks=args.tasks, episodes=args.episodes,
                                    workers=args.workers, max_steps=args.max_steps, seed=args.seed, baseline=baseline,
                                    out=str(out)))  # fmt: skip
    print(f"\n## {name}\n\n{format_markdown(report)}")
    return report


def _summary(report: dict) -> dict:
    tasks = report["tasks"]
    foresight = [next(iter(t["foresight"].values())) for t in tasks.values() if t.get("foresight")]  # nearest
    mean = report["means"][0]
    return {
        "success": mean["success_rate"],
        "ci95": mean["ci95"],
        "per_task": {t: s["success_rate"] for t, s in tasks.items()},
        "foresight_psnr": sum(f["psnr"] for f in foresight) / max(1, len(foresight)),
        "copy_last_psnr": sum(f["copy_psnr"] for f in foresight) / max(1, len(foresight)),
        "foresight_ssim": sum(f["ssim"] for f in foresight) / max(1, len(foresight)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--video-tasks", default="mt10", help="tasks whose action-free clips are pretrained on")
    parser.add_argument("--clips", type=int, default=10, help="video clips per video task")
    parser.add_argument("--tasks", default=TARGETS, help="finetuning and evaluation tasks")
    parser.add_argument("--demos", type=int, default=5, help="robot demonstrations per finetuning task")
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1500, help="finetuning steps (both policies)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task")
    parser.add_argument("--max-steps", type=int, default=200, help="evaluation episode limit")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    parser.add_argument("--train-seed", type=int, default=0, help="finetuning seed of both policies (runs *-seedN)")
    parser.add_argument("--out", default="runs/bench-transfer")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (all three runs)")
    args = parser.parse_args()
    out = Path(args.out)
    times, start = {}, time.perf_counter()

    video = _collect(out, "video", tasks=args.video_tasks, episodes_per_task=args.clips, kind="video",
                     workers=args.workers)  # fmt: skip
    # Other seeds than the clips, so no finetuning demonstration is a clip with its actions put back.
    demos = _collect(out, "demos", tasks=args.tasks, episodes_per_task=args.demos, seed=1, workers=args.workers)
    times["collect_s"] = time.perf_counter() - start

    start = time.perf_counter()
    pretrained = _train(args, out, "pretrain", [video], args.pretrain_steps)
    times["pretrain_s"] = time.perf_counter() - start
    start = time.perf_counter()
    suffix = f"-seed{args.train_seed}" if args.train_seed else ""
    finetuned = _train(args, out, "finetune" + suffix, [demos], args.steps, init=pretrained, seed=args.train_seed)
    scratch = _train(args, out, "scratch" + suffix, [demos], args.steps, seed=args.train_seed)
    times["finetune_both_s"] = time.perf_counter() - start

    start = time.perf_counter()
    results = {"pretrained": _summary(_evaluate(args, finetuned, "pretrained" + suffix, baseline="zero")),
               "scratch": _summary(_evaluate(args, scratch, "scratch" + suffix))}  # fmt: skip
    times["eval_s"] = time.perf_counter() - start

    print("\n| finetuned from | success (95% CI) | foresight PSNR | copy-last PSNR | foresight SSIM |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        lo, hi = r["ci95"]
        print(f"| {name} | {r['success']:.1%} ({lo:.1%}-{hi:.1%}) | {r['foresight_psnr']:.2f} dB | "
              f"{r['copy_last_psnr']:.2f} dB | {r['foresight_ssim']:.3f} |")  # fmt: skip
    print(json.dumps({
        "video_tasks": args.video_tasks, "clips_per_task": args.clips, "tasks": args.tasks, "demos": args.demos,
        "pretrain_steps": args.pretrain_steps, "finetune_steps": args.steps, "train_seed": args.train_seed,
        "preset": args.preset,
        "episodes_per_task": args.episodes, **results, **{k: round(v, 1) for k, v in times.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
