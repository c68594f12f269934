"""Does video pretraining transfer? Pretrain on action-free video of Meta-World's ML45 train tasks, then
finetune on a few demonstrations of tasks whose video was in pretraining (seen) and of ML45's five test tasks,
whose video never was (unseen), against the same finetuning from scratch: same data, steps and seeds.

    python bench/pretrain_transfer.py --out runs/bench-transfer
    python bench/pretrain_transfer.py --out runs/bench-transfer --init-from runs/ml45-pretrain   # pretrained elsewhere

Meta-World's meta-learning split (ML45, Yu et al. 2019) is the standard one: 45 train tasks, 5 test tasks
(bin-picking, box-close, hand-insert, door-lock, door-unlock) whose motions no train task shows. The video
store holds `--clips` expert clips of each `--video-tasks` task (actions and states dropped, `vla collect
--kind video`); each setting's robot store `--demos` demonstrations of each of its tasks, from other seeds
than the clips. Every run uses the same config (`--config`, `small`), so the only difference between the two
policies of a setting is the starting point. With `--init-from DIR` the bench uses that pretrained run (for
example one pretrained on a GPU, `vla pretrain`) instead of pretraining itself, and collects no video.

Success is pooled over the tasks and the finetuning seeds (`--train-seeds`) with a 95% Wilson interval;
foresight PSNR on each policy's own rollouts is shown beside copying the last frame. Re-running with the
same --out reuses stores, finished runs and evaluations. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import bench_parser, fail

from vla import checkpoint
from vla.collect import CollectConfig, collect
from vla.config import StoreConfig, load_config
from vla.envs import get_suite, resolve_tasks
from vla.errors import UserError, choice_error
from vla.eval_report import wilson_interval
from vla.evaluate import EvalConfig, evaluate
from vla.init_from import summarize_init
from vla.options import check_value
from vla.train import train

SEEN = "drawer-open-v3,door-open-v3,window-open-v3,button-press-topdown-v3"  # ML45 train tasks (and MT10)
SETTINGS = {"seen": "finetuning tasks whose video was pretrained on", "unseen": "tasks whose video never was"}
STARTS = ("pretrained", "scratch")
DEMO_SEED = 1  # other seeds than the clips (seed 0): no demonstration is a clip with its actions put back


# --- runs --------------------------------------------------------------------------------------------
def _collect(args, name: str, **kw) -> str:
    store = str(Path(args.out) / f"{name}.zarr")
    collect(CollectConfig(suite="metaworld", out=store, workers=args.workers, **kw))  # a finished store is kept
    return store


def _train(args, name: str, stores: list[str], steps: int, init: str | None = None, seed: int = 0) -> str:
    run = Path(args.out) / name
    overrides = [f"policy.preset={args.preset}", f"train.steps={steps}", f"train.seed={seed}", *args.set]
    cfg = load_config(args.config, overrides)
    cfg.data.stores = [StoreConfig(s) for s in stores]
    cfg.train.out = str(run)
    resume = (run / checkpoint.CHECKPOINT).exists()  # an interrupted or finished run: continue (or keep) it
    result = train(cfg, resume=resume, init=None if resume else init)
    if result.init_report:  # what the pretrained run gave: matched, skipped and fresh tensors by module
        print(f"{name}: init from {init}\n{summarize_init(result.init_report)}")
    return str(run)


def _pretrained(args) -> str:
    """The pretrained run: --init-from, or pretraining on the video store (collected first)."""
    if args.init_from:
        return args.init_from
    video = _collect(args, "video", tasks=args.video_tasks, episodes_per_task=args.clips, kind="video")
    return _train(args, "pretrain", [video], args.pretrain_steps)


def _evaluate(args, run: str, tasks: str) -> dict:
    """One run on its setting's tasks, on the same episodes for every run; reused when it exists."""
    out = Path(args.out) / f"eval-{Path(run).name}-{args.episodes}ep-max{args.max_steps}-seed{args.seed}"
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    report, _ = evaluate(EvalConfig(policy=run, suite="metaworld", tasks=tasks, episodes=args.episodes,
                                    workers=args.workers, max_steps=args.max_steps, seed=args.seed,
                                    videos=0, out=str(out)))  # fmt: skip
    return report


def _pooled(reports: list[dict]) -> dict:
    """Success pooled over tasks and finetuning seeds (Wilson interval), per task and per seed; foresight PSNR
    of the nearest offset against copying the last frame, averaged over tasks and seeds."""
    tasks = reports[0]["tasks"]
    successes = sum(r["tasks"][t]["successes"] for r in reports for t in tasks)
    episodes = sum(r["tasks"][t]["episodes"] for r in reports for t in tasks)
    foresight = [next(iter(r["tasks"][t]["foresight"].values())) for r in reports for t in tasks
                 if r["tasks"][t].get("foresight")]  # fmt: skip
    mean = (lambda key: sum(f[key] for f in foresight) / len(foresight)) if foresight else (lambda key: None)
    return {"success": successes / episodes, "successes": successes, "episodes": episodes,
            "ci95": list(wilson_interval(successes, episodes)),
            "per_seed": [r["means"][0]["success_rate"] for r in reports],
            "per_task": {t: f"{sum(r['tasks'][t]['successes'] for r in reports)}/"
                            f"{sum(r['tasks'][t]['episodes'] for r in reports)}" for t in tasks},
            "foresight_psnr": mean("psnr"), "copy_last_psnr": mean("copy_psnr")}  # fmt: skip


def _separated(pretrained: dict, scratch: dict) -> bool:
    """The target's test: pretrained ahead with 95% intervals that do not overlap."""
    return pretrained["ci95"][0] > scratch["ci95"][1]


# --- the bench ---------------------------------------------------------------------------------------
def _args() -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--settings", default="seen,unseen", help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--video-tasks", default="ml45-train", help="tasks whose action-free clips are pretrained on")
    parser.add_argument("--clips", type=int, default=10, help="video clips per video task")
    parser.add_argument("--seen-tasks", default=SEEN, help="seen setting: finetuning tasks among --video-tasks")
    parser.add_argument("--unseen-tasks", default="ml45-test", help="unseen setting: tasks outside --video-tasks")
    parser.add_argument("--init-from", default=None, help="a pretrained run to use instead of pretraining here")
    parser.add_argument("--demos", type=int, default=5, help="robot demonstrations per finetuning task")
    parser.add_argument("--pretrain-steps", type=int, default=2000, help="pretraining steps (without --init-from)")
    parser.add_argument("--steps", type=int, default=1500, help="finetuning steps (every run)")
    parser.add_argument("--train-seeds", default="0,1", help="finetuning seeds (comma list), both starts once per seed")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task and run")
    parser.add_argument("--max-steps", type=int, default=200, help="evaluation episode limit")
    parser.add_argument("--preset", default="small", help="the model preset of every run")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the training config of every run")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (every run)")
    parser.add_argument("--workers", type=int, default=2, help="simulator processes (collection and evaluation)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed: the same episodes for every run")
    parser.add_argument("--out", default="runs/bench-transfer", help="the directory of the stores, runs, evaluations")
    args = parser.parse_args()
    args.settings = args.settings.split(",")
    try:
        for setting in args.settings:
            if setting not in SETTINGS:
                raise choice_error("setting", setting, SETTINGS)
        try:
            args.train_seeds = [int(s) for s in args.train_seeds.split(",")]
        except ValueError:
            seeds = args.train_seeds
            raise UserError(f"--train-seeds {seeds!r} must be comma-separated whole numbers, e.g. 0,1") from None
        for flag in ("clips", "demos", "pretrain_steps", "steps", "episodes", "max_steps", "workers"):
            check_value(f"--{flag.replace('_', '-')}", getattr(args, flag), min=1)
        for seed in args.train_seeds:
            check_value("--train-seeds", seed, min=0)
        check_value("--seed", args.seed, min=0)
        _check_tasks(args)
        if args.init_from and not (Path(args.init_from) / checkpoint.CHECKPOINT).exists():
            raise UserError(f"--init-from {args.init_from} is not a run directory with a {checkpoint.CHECKPOINT}/")
        if not Path(args.config).is_file():
            raise UserError(f"--config {args.config} is not a file")
        load_config(args.config, [f"policy.preset={args.preset}", *args.set])  # a bad --set is told now
    except UserError as e:
        fail(str(e))
    return args


def _check_tasks(args) -> None:
    """Seen tasks must be among the video tasks and unseen ones outside them, or the settings mean nothing."""
    suite = get_suite("metaworld")
    video = set(resolve_tasks(suite, args.video_tasks))
    seen, unseen = resolve_tasks(suite, args.seen_tasks), resolve_tasks(suite, args.unseen_tasks)
    if "seen" in args.settings and not set(seen) <= video:
        raise UserError(f"--seen-tasks {', '.join(sorted(set(seen) - video))} not in --video-tasks {args.video_tasks}")
    if "unseen" in args.settings and set(unseen) & video:
        raise UserError(f"--unseen-tasks {', '.join(sorted(set(unseen) & video))} in --video-tasks {args.video_tasks}")
    args.tasks = {"seen": ",".join(seen), "unseen": ",".join(unseen)}


def main() -> None:
    args = _args()
    times, start = {}, time.perf_counter()
    try:
        pretrained = _pretrained(args)
        times["pretrain_s"] = time.perf_counter() - start
        results = {}
        for setting in args.settings:
            start = time.perf_counter()
            tasks = args.tasks[setting]
            demos = _collect(args, f"demos-{setting}", tasks=tasks, episodes_per_task=args.demos, seed=DEMO_SEED)
            reports = {s: [] for s in STARTS}
            for seed in args.train_seeds:
                for start_from in STARTS:
                    init = pretrained if start_from == "pretrained" else None
                    run = _train(args, f"{setting}-{start_from}-seed{seed}", [demos], args.steps, init, seed)
                    reports[start_from].append(_evaluate(args, run, tasks))
            results[setting] = {s: _pooled(reports[s]) for s in STARTS}
            results[setting]["separated"] = _separated(results[setting]["pretrained"], results[setting]["scratch"])
            times[f"{setting}_s"] = time.perf_counter() - start
    except UserError as e:
        fail(str(e))
    _print(args, pretrained, results)
    print(json.dumps({"video_tasks": args.video_tasks, "clips_per_task": None if args.init_from else args.clips,
                      "pretrained": pretrained, "pretrain_steps": None if args.init_from else args.pretrain_steps,
                      "tasks": {s: args.tasks[s] for s in args.settings}, "demos": args.demos,
                      "finetune_steps": args.steps, "train_seeds": args.train_seeds, "preset": args.preset,
                      "config": args.config, "set": args.set, "episodes_per_task": args.episodes,
                      "max_steps": args.max_steps, "eval_seed": args.seed, "results": results,
                      **{k: round(v, 1) for k, v in times.items()}}))  # fmt: skip


def _print(args, pretrained: str, results: dict) -> None:
    seeds = ", ".join(map(str, args.train_seeds))
    print(
        f"\nPretrained: {pretrained}; finetuning {args.steps} steps on {args.demos} demonstrations per task, "
        f"seeds {seeds}; {args.episodes} episodes per task and run (up to {args.max_steps} steps), pooled:\n"
    )
    print("| setting | finetuned from | success (95% Wilson CI) | per seed | foresight PSNR | copy-last PSNR |")
    print("|---|---|---|---|---|---|")
    for setting, r in results.items():
        for start_from in STARTS:
            s = r[start_from]
            lo, hi = s["ci95"]
            psnr = "-" if s["foresight_psnr"] is None else f"{s['foresight_psnr']:.1f} dB"
            copy = "-" if s["copy_last_psnr"] is None else f"{s['copy_last_psnr']:.1f} dB"
            per_seed = " / ".join(f"{p:.1%}" for p in s["per_seed"])
            print(
                f"| {setting} ({args.tasks[setting].count(',') + 1} tasks) | {start_from} | {s['success']:.1%} "
                f"({lo:.1%}-{hi:.1%}), {s['successes']}/{s['episodes']} | {per_seed} | {psnr} | {copy} |"
            )
    for setting, r in results.items():
        verdict = "do not overlap" if r["separated"] else "overlap or scratch is ahead"
        print(
            f"{setting}: pretrained minus scratch {r['pretrained']['success'] - r['scratch']['success']:+.1%}, "
            f"intervals {verdict}"
        )


if __name__ == "__main__":
    main()
