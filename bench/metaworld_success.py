"""Meta-World success after a fixed training budget: collect N demonstrations per task, train, evaluate
K episodes per task beside the zero-action policy on the same seeds.

    python bench/metaworld_success.py --tasks mt10 --demos 20 --steps 6000 --episodes 10 --out runs/bench-mt10

Re-running with the same --out reuses the collected store (collection resumes) and refuses to retrain
over an existing checkpoint. Prints the success table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vla.collect import CollectConfig, collect
from vla.config import StoreConfig, load_config
from vla.eval_report import format_markdown
from vla.evaluate import EvalConfig, evaluate
from vla.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--tasks", default="mt10")
    parser.add_argument("--demos", type=int, default=20, help="demonstrations per task")
    parser.add_argument("--steps", type=int, default=6000, help="training steps")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--config", default="configs/mt10.yaml")
    parser.add_argument("--max-steps", type=int, default=300, help="evaluation episode limit")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-metaworld")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    out = Path(args.out)
    times = {}

    start = time.perf_counter()
    store = str(out / "demos.zarr")
    collect(CollectConfig(suite="metaworld", tasks=args.tasks, episodes_per_task=args.demos, out=store,
                          workers=args.workers))  # fmt: skip
    times["collect_s"] = time.perf_counter() - start

    start = time.perf_counter()
    cfg = load_config(args.config, [f"policy.preset={args.preset}", f"train.steps={args.steps}", *args.set])
    cfg.data.stores = [StoreConfig(store)]
    cfg.train.out = str(out / "policy")
    result = train(cfg)
    times["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    report, _ = evaluate(EvalConfig(policy=cfg.train.out, suite="metaworld", tasks=args.tasks, episodes=args.episodes,
                                    workers=args.workers, max_steps=args.max_steps, baseline="zero",
                                    out=str(out / "eval")))  # fmt: skip
    times["eval_s"] = time.perf_counter() - start
    print(format_markdown(report))
    mean = report["means"][0]
    zero = report["baseline"]["means"][0]
    print(json.dumps({
        "tasks": args.tasks, "demos_per_task": args.demos, "train_steps": args.steps, "preset": args.preset,
        "episodes_per_task": args.episodes, "success": mean["success_rate"], "ci95": mean["ci95"],
        "zero_success": zero["success_rate"], "final_train_loss": result.losses[-1], "val_loss": result.val_loss,
        "per_task": {t: s["success_rate"] for t, s in report["tasks"].items()},
        **{k: round(v, 1) for k, v in times.items()},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
