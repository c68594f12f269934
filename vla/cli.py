"""The `vla` command: thin subcommands that parse arguments and call library code.

Errors a user can cause become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from vla.errors import UserError


def _collect(args: argparse.Namespace) -> int:
    from vla.collect import CollectConfig, collect, format_report

    cfg = CollectConfig(
        suite=args.suite,
        tasks=args.tasks,
        episodes_per_task=args.episodes_per_task,
        out=args.out,
        image_size=args.image_size,
        cameras=args.cameras,
        split=args.split,
        workers=args.workers,
        seed=args.seed,
        steps_after_success=args.steps_after_success,
        max_steps=args.max_steps,
        keep_failures=args.keep_failures,
        append=args.append,
    )
    report = collect(cfg, progress=not args.quiet)
    print(format_report(report))
    short = [t.task for t in report.tasks if t.kept < cfg.episodes_per_task]
    if short:
        print(f"short of {cfg.episodes_per_task} episodes: {', '.join(short)}", file=sys.stderr)
        return 1
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from vla.datasets.inspect import format_info, store_info

    info = store_info(args.store)
    print(json.dumps(info) if args.json else format_info(info))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from vla.datasets.inspect import check_store

    problems, notes = check_store(args.store)
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{args.store}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("collect", help="record scripted-expert episodes from a suite into a store")
    p.add_argument("--suite", default="metaworld", help="metaworld | tabletop")
    p.add_argument("--tasks", default="mt10", help="a group (mt10, mt50, all) or comma-separated task names")
    p.add_argument("--episodes-per-task", type=int, default=20, help="successful episodes to keep per task")
    p.add_argument("--out", required=True, help="the store to write (a .zarr path or fsspec URL)")
    p.add_argument("--image-size", type=int, default=64, help="square image side in pixels")
    p.add_argument("--cameras", default=None, help="comma-separated cameras (default: the suite's)")
    p.add_argument("--split", default="train", help="scene split, where the suite has them")
    p.add_argument("--workers", type=int, default=1, help="parallel simulator processes")
    p.add_argument("--seed", type=int, default=0, help="base seed: the same seed gives the same store")
    p.add_argument("--steps-after-success", type=int, default=10, help="steps kept after the first success")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the suite's)")
    p.add_argument("--keep-failures", action="store_true", help="also store episodes the expert failed")
    p.add_argument("--append", action="store_true", help="add to an existing store made differently")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_collect)

    data = sub.add_parser("data", help="inspect and validate stores").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    p = data.add_parser("info", help="episodes, steps, keys, tasks, instructions and size of a store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_data_info)
    p = data.add_parser("check", help="validate a store; exits non-zero naming each problem")
    p.add_argument("store")
    p.set_defaults(func=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except UserError as e:
        print(f"vla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
