"""The tabletop suite's results: a policy trained on tabletop demonstrations, evaluated on the scenes and words
of its training split, on the unseen split and on chains of five instructions, alone, co-trained with captioned
images, or started from video pretraining.

    python bench/tabletop.py --out runs/bench-tabletop
    python bench/tabletop.py --out runs/bench-tabletop --variants robot,image-text --train-seeds 0,1
    python bench/tabletop.py --out runs/bench-tabletop --variants robot,video --init-from runs/tt-pretrain

The robot store holds `--demos` expert demonstrations of each of the 11 tasks, collected from the train split
(`vla collect --suite tabletop --tasks all --split train`, with `--action-noise`'s DART noise where given).
Variants (`--variants`, any of):
  robot       the robot store alone
  image-text  the robot store mixed with captioned tabletop scenes (`vla collect --kind image-text
              --held-out-colours`: the images also show the colour x kind combinations the unseen split
              holds out of robot data), `--image-text-weight` of the batches, with the contrastive loss
              (`policy.contrastive_weight`, `--contrastive-weight`) beside captioning, and phrase grounding
              where `--grounding-weight` > 0 (`policy.grounding_weight`: the [ACT] readout finds the object a
              phrase names, from the scenes' facts)
  video       the robot store, starting from the weights of a video-pretrained run (`--init-from DIR`)
Every variant uses the same config (`--config`, the `small` preset of configs/tabletop.yaml), steps and
training seeds (`--train-seeds`), and is evaluated on the same episodes (`--eval-seed`): all 11 tasks on the
train split (fresh layouts) and on the unseen split, and `--chain-episodes` CALVIN-style chains of 5.
With `--demonstrations`, every run is also evaluated on the scenes of its own training episodes (`vla eval
--scenes demonstrations`, `--episodes` per task): a policy that fails there fails to imitate, not to generalise.
Successes are pooled over tasks and training seeds with a 95% Wilson interval; the average chain length has
the interval of `vla.eval_report.chain_length_interval`. Re-running with the same --out reuses the stores,
finished runs and evaluations (an interrupted run resumes). Prints a table and, last, one JSON line.

CPU budget (measured on the 2-core AMD EPYC, fp32, one torch thread): a `small` step at batch 32 costs ~2.5
CPU-seconds on a robot batch and ~1.5 on an image-text one; an evaluation env step ~45 ms (an episode at most 200
steps, a chain at most 150 per subtask, ending at the first failed one). The defaults (3,000 steps, one seed,
robot and image-text, 10 episodes per task and split, 50 chains) come to ~4 CPU-hours of training and ~1.5-2 of
evaluation: 3-4 hours on 2 idle cores. Each run writes its CPU seconds beside it (train_seconds.json,
eval-*/bench_seconds.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import bench_parser, describe, fail, machine

from vla import checkpoint
from vla.collect import CollectConfig, collect
from vla.collect_pretrain import collect_image_text
from vla.config import StoreConfig, load_config
from vla.errors import UserError, choice_error
from vla.eval_report import chain_length_interval, wilson_interval
from vla.evaluate import EvalConfig, evaluate
from vla.init_from import summarize_init
from vla.options import check_value
from vla.resume import prepare
from vla.train import train

VARIANTS = {
    "robot": "the robot store alone",
    "image-text": "robot store + captioned scenes (held-out colours included), contrastive loss on",
    "video": "robot store, initialised from --init-from (video pretraining)",
}
SPLITS = ("train", "unseen")  # each evaluated on all 11 tasks
DEMONSTRATIONS = "demonstrations"  # the runs' own training scenes (--demonstrations)
IMAGE_TEXT_SEED = 1  # other scenes than the robot demonstrations' (collect seed 0): more layouts to describe


# --- data --------------------------------------------------------------------------------------------
def _stores(args, out: Path, variants: list[str]) -> tuple[str, str | None, dict]:
    """The robot store and, for the image-text variant, the captioned scenes; both resume or are kept."""
    times = {}
    start = time.perf_counter()
    robot = str(out / "robot.zarr")
    collect(CollectConfig(suite="tabletop", tasks="all", split="train", episodes_per_task=args.demos,
                          workers=args.workers, seed=args.seed, action_noise=args.action_noise, out=robot))  # fmt: skip
    times["collect_robot_s"] = time.perf_counter() - start
    if "image-text" not in variants:
        return robot, None, times
    start = time.perf_counter()
    captions = str(out / "image-text.zarr")
    collect_image_text(CollectConfig(suite="tabletop", tasks="all", kind="image-text", held_out_colours=True,
                                     episodes_per_task=args.scenes, seed=args.seed + IMAGE_TEXT_SEED,
                                     out=captions))  # fmt: skip
    times["collect_image_text_s"] = time.perf_counter() - start
    return robot, captions, times


# --- training ----------------------------------------------------------------------------------------
def _train(args, robot: str, captions: str | None, variant: str, seed: int) -> tuple[str, float]:
    """Train (or reuse) one variant; returns its run directory and its training time in seconds."""
    run = Path(args.out) / f"{variant}-seed{seed}"
    timing = run / "train_seconds.json"
    cfg = _config(args, robot, captions, variant, seed, run)
    resume = (run / checkpoint.CHECKPOINT).exists()  # an interrupted run continues, a finished one is kept
    if resume:  # ... if it was trained as asked: another --set, --steps or weight is one line, not a stale result
        steps = checkpoint.load_run_config(run).train.steps
        if steps != cfg.train.steps:
            raise UserError(f"{run} trains for {steps} steps, not --steps {cfg.train.steps}: use another --out")
        prepare(cfg, resume=True)  # refuses, by name, any other setting that differs from the run's
        report = run / "init_report.json"
        began = json.loads(report.read_text())["init_from"] if report.exists() else None
        if variant == "video" and began != args.init_from:
            raise UserError(f"{run} started from {began}, not --init-from {args.init_from}: use another --out")
    if timing.exists():
        return str(run), json.loads(timing.read_text())["seconds"]
    start, cpu = time.perf_counter(), time.process_time()
    init = args.init_from if variant == "video" and not resume else None
    result = train(cfg, resume=resume, init=init)
    seconds = time.perf_counter() - start
    if result.init_report:  # what the pretrained run gave: matched, skipped and fresh tensors by module
        print(f"{run.name}: init from {init}\n{summarize_init(result.init_report)}")
    # CPU seconds of this process (torch's threads included; data.num_workers 0): what the run costs on a machine
    # shared with other work, where its wall time is mostly waiting.
    timing.write_text(json.dumps({"seconds": seconds, "cpu_seconds": time.process_time() - cpu, "resumed": resume,
                                  "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
                                  "preset": cfg.policy.preset}) + "\n")  # fmt: skip
    return str(run), seconds


def _config(args, robot: str, captions: str | None, variant: str, seed: int, run: Path):
    """The run config of one variant and seed: --config with the bench's settings, then --set."""
    # The bench evaluates every run itself, on the same episodes: no simulator evaluation during training.
    overrides = [f"train.steps={args.steps}", f"train.seed={seed}", "train.eval.suite=''", "train.eval.tasks=''"]
    if variant == "image-text":
        overrides.append(f"policy.contrastive_weight={args.contrastive_weight}")
        overrides.append(f"policy.grounding_weight={args.grounding_weight}")
    cfg = load_config(args.config, [*overrides, *args.set])
    cfg.data.stores = [StoreConfig(robot)]
    if variant == "image-text":
        w = args.image_text_weight
        cfg.data.stores = [StoreConfig(robot, 1 - w), StoreConfig(captions, w)]  # shares of the batches
    cfg.train.out = str(run)
    return cfg


# --- evaluation --------------------------------------------------------------------------------------
def _evaluate(args, run: str, name: str, split: str | None) -> dict:
    """One evaluation (split None: chains; DEMONSTRATIONS: the run's own training scenes), reused when it
    exists with the same episodes and seed."""
    chain, demos = split is None, split == DEMONSTRATIONS
    episodes = args.chain_episodes if chain else args.episodes
    limit = f"-max{args.max_steps}" if args.max_steps and not chain else ""
    seed = "" if demos else f"-seed{args.eval_seed}"  # the demonstrations' own seeds
    out = Path(args.out) / f"eval-{name}-{split or 'chain'}-{episodes}ep{limit}{seed}"
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    cpu = time.process_time()
    report, _ = evaluate(EvalConfig(policy=run, suite="tabletop", tasks=None if chain else "tabletop11",
                                    split="train" if demos else split or "train", chain=chain,
                                    scenes="demonstrations" if demos else "fresh", episodes=episodes,
                                    workers=args.workers,
                                    max_steps=None if chain else args.max_steps, seed=args.eval_seed, videos=0,
                                    out=str(out)))  # fmt: skip
    timing = {
        "seconds": report["seconds"],
        "env_steps": sum(e["steps"] for e in report["episodes"]),
        "cpu_seconds_here": time.process_time() - cpu,
    }  # this process's: all of it with --workers 1
    (out / "bench_seconds.json").write_text(json.dumps(timing) + "\n")
    return report


def _success(reports: list[dict]) -> dict:
    """Success pooled over the tasks and training seeds, with its Wilson interval and the rate per seed."""
    successes = sum(s["successes"] for r in reports for s in r["tasks"].values())
    episodes = sum(s["episodes"] for r in reports for s in r["tasks"].values())
    per_task = {t: sum(r["tasks"][t]["successes"] for r in reports) / sum(r["tasks"][t]["episodes"] for r in reports)
                for t in reports[0]["tasks"]}  # fmt: skip
    return {"success": successes / episodes, "successes": successes, "episodes": episodes,
            "ci95": list(wilson_interval(successes, episodes)),
            "per_seed": [r["means"][0]["success_rate"] for r in reports], "per_task": per_task}  # fmt: skip


def _chains(reports: list[dict]) -> dict:
    """Average chain length pooled over training seeds, with its interval, and the rate at each position."""
    lengths = [e["chain_length"] for r in reports for e in r["episodes"]]
    size = reports[0]["chain"]["chain_size"]
    at = [sum(n >= i for n in lengths) / len(lengths) for i in range(1, size + 1)]
    return {"avg_chain_length": sum(lengths) / len(lengths), "ci95": list(chain_length_interval(lengths, size)),
            "chains": len(lengths), "chain_size": size, "success_at_position": at,
            "per_seed": [r["chain"]["avg_chain_length"] for r in reports]}  # fmt: skip


def _result(reports: dict[str, list[dict]], seconds: list[float]) -> dict:
    train_split, unseen = _success(reports["train"]), _success(reports["unseen"])
    ratio = unseen["success"] / train_split["success"] if train_split["success"] else None
    own = _success(reports[DEMONSTRATIONS]) if reports[DEMONSTRATIONS] else None
    return {"train": train_split, "unseen": unseen, "unseen_over_train": ratio, "chain": _chains(reports["chain"]),
            DEMONSTRATIONS: own, "train_s": sum(seconds) / len(seconds), "train_s_per_seed": seconds}  # fmt: skip


# --- the bench ---------------------------------------------------------------------------------------
def _args() -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--variants", default="robot,image-text", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--train-seeds", default="0", help="training seeds (comma list), every variant once per seed")
    parser.add_argument("--demos", type=int, default=50, help="expert demonstrations of each of the 11 tasks")
    parser.add_argument("--action-noise", type=float, default=0.0, help="DART noise of the robot demonstrations "
                        "(vla collect --action-noise; a store of another noise needs another --out)")  # fmt: skip
    parser.add_argument("--scenes", type=int, default=100, help="image-text: scenes per task, 3 captions each")
    parser.add_argument("--image-text-weight", type=float, default=0.25, help="image-text: share of the batches")
    parser.add_argument("--contrastive-weight", type=float, default=0.1, help="image-text: policy.contrastive_weight")
    parser.add_argument("--grounding-weight", type=float, default=0.0, help="image-text: policy.grounding_weight")
    parser.add_argument("--init-from", default=None, help="video: the video-pretrained run to start from")
    parser.add_argument("--config", default="configs/tabletop.yaml", help="the training config of every variant")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every run")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides (every run)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task, per split and run")
    parser.add_argument("--chain-episodes", type=int, default=50, help="chains of 5 per run")
    parser.add_argument("--demonstrations", action="store_true", help="also evaluate every run on the scenes of "
                        "its own training episodes (--episodes per task)")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=None, help="evaluation episode limit (default: the "
                        "suite's, 200; a chain keeps its 150 steps per subtask)")  # fmt: skip
    parser.add_argument("--eval-seed", type=int, default=0, help="the same evaluation episodes for every run")
    parser.add_argument("--seed", type=int, default=0, help="collection seed (the image-text scenes use seed + 1)")
    parser.add_argument("--workers", type=int, default=2, help="simulator processes (collection and evaluation)")
    parser.add_argument(
        "--out", default="runs/bench-tabletop", help="the directory of the stores, runs and evaluations"
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            fail(str(choice_error("variant", variant, VARIANTS)))
    try:
        args.train_seeds = [int(s) for s in args.train_seeds.split(",")]
    except ValueError:
        fail(f"--train-seeds {args.train_seeds!r} must be comma-separated whole numbers, e.g. 0,1")
    try:
        for seed in args.train_seeds:
            check_value("--train-seeds", seed, min=0)
        for flag in ("demos", "scenes", "steps", "episodes", "chain_episodes", "workers"):
            check_value(f"--{flag.replace('_', '-')}", getattr(args, flag), min=1)
        check_value("--eval-seed", args.eval_seed, min=0)
        check_value("--seed", args.seed, min=0)
        check_value("--action-noise", args.action_noise, min=0.0, max=1.0)
        check_value("--image-text-weight", args.image_text_weight, gt=0.0, max=0.99)
        check_value("--contrastive-weight", args.contrastive_weight, min=0.0)
        check_value("--grounding-weight", args.grounding_weight, min=0.0)
        if args.max_steps is not None:
            check_value("--max-steps", args.max_steps, min=1)
    except UserError as e:
        fail(str(e))
    if "video" in variants and args.init_from is None:
        fail("the video variant needs --init-from DIR, a video-pretrained run (vla pretrain)")
    if args.init_from is not None and "video" not in variants:
        fail(f"--init-from {args.init_from} is for the video variant; add video to --variants {args.variants}")
    if args.init_from and not (Path(args.init_from) / checkpoint.CHECKPOINT).exists():
        fail(f"--init-from {args.init_from} is not a run directory with a {checkpoint.CHECKPOINT}/")
    if not Path(args.config).is_file():
        fail(f"--config {args.config} is not a file")
    try:  # a bad --set is told now, not after the stores are collected
        args.cfg = load_config(args.config, [f"train.steps={args.steps}", *args.set])
    except UserError as e:
        fail(str(e))
    args.variants = variants
    return args


def main() -> None:
    args = _args()
    out = Path(args.out)
    info = machine()
    try:
        robot, captions, times = _stores(args, out, args.variants)
        reports = {v: {"train": [], "unseen": [], "chain": [], DEMONSTRATIONS: []} for v in args.variants}
        seconds: dict[str, list[float]] = {v: [] for v in args.variants}
        start = time.perf_counter()
        for seed in args.train_seeds:  # seed by seed: every variant has a result after the first seed
            for variant in args.variants:
                run, t = _train(args, robot, captions, variant, seed)
                seconds[variant].append(t)
                for split in (*SPLITS, None, *([DEMONSTRATIONS] if args.demonstrations else [])):
                    reports[variant][split or "chain"].append(_evaluate(args, run, f"{variant}-seed{seed}", split))
        times["train_and_eval_s"] = time.perf_counter() - start
    except UserError as e:  # a bad --set, a store of another recipe, ...: one line
        fail(str(e))
    results = {v: _result(reports[v], seconds[v]) for v in args.variants}
    cfg = args.cfg
    _print(args, cfg, results, {**info, "load_after": round(os.getloadavg()[0], 2)})
    print(json.dumps({"demos": args.demos, "action_noise": args.action_noise,
                      "scenes": args.scenes if captions else None, "config": args.config,
                      "set": args.set, "preset": cfg.policy.preset, "steps": args.steps,
                      "batch_size": cfg.train.batch_size, "train_seeds": args.train_seeds,
                      "image_text_weight": args.image_text_weight, "contrastive_weight": args.contrastive_weight,
                      "grounding_weight": args.grounding_weight,
                      "init_from": args.init_from, "episodes_per_task": args.episodes,
                      "chain_episodes": args.chain_episodes, "demonstrations": args.demonstrations,
                      "eval_seed": args.eval_seed, "machine": info,
                      "results": results, **{k: round(v, 1) for k, v in times.items()}}))  # fmt: skip


def _rate(s: dict) -> str:
    lo, hi = s["ci95"]
    return f"{s['success']:.1%} ({lo:.1%}-{hi:.1%}), {s['successes']}/{s['episodes']}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print(args, cfg, results: dict, info: dict) -> None:
    seeds = ", ".join(map(str, args.train_seeds))
    demos = _count(args.demos, "demonstration") + (f" (DART noise {args.action_noise:g})" if args.action_noise else "")
    print(f"\n`{cfg.policy.preset}`, {args.steps} steps at batch {cfg.train.batch_size} ({args.config}), training "
          f"seeds {seeds}; {demos} per task; {_count(args.episodes, 'episode')} per "
          f"task and split and {_count(args.chain_episodes, 'chain')} per run, pooled over seeds; "
          f"{describe(info)}:\n")  # fmt: skip
    own = " own demonstrations' scenes (95% Wilson CI) |" if args.demonstrations else ""
    print("| variant | train success (95% Wilson CI) | unseen success (95% Wilson CI) | unseen / train | "
          f"average chain length of 5 (95% interval) |{own} training time |")  # fmt: skip
    print("|---|---|---|---|---|" + "---|" * (2 if args.demonstrations else 1))
    for variant, r in results.items():
        cells = [variant, *(_rate(r[split]) for split in SPLITS)]
        cells.append("-" if r["unseen_over_train"] is None else f"{r['unseen_over_train']:.2f}")
        c, (lo, hi) = r["chain"], r["chain"]["ci95"]
        cells.append(f"{c['avg_chain_length']:.2f} ({lo:.2f}-{hi:.2f}), {_count(c['chains'], 'chain')}")
        if args.demonstrations:
            cells.append(_rate(r[DEMONSTRATIONS]))
        cells.append(f"{r['train_s']:.0f} s" + (" per seed" if len(args.train_seeds) > 1 else ""))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
