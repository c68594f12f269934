"""The `vla` command: thin subcommands that parse arguments and call library code.

Errors a user can cause become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass

from vla import __version__, keys
from vla.errors import UserError
from vla.options import ArgumentParser, add_flags, check_fields, from_args, option


def _collect(args: argparse.Namespace) -> int:
    from vla.collect import CollectConfig, collect, format_report
    from vla.collect_pretrain import collect_image_text, format_image_text_report

    cfg = from_args(CollectConfig, args)
    report = (collect_image_text if cfg.kind == "image-text" else collect)(cfg, progress=not args.quiet)
    print(format_image_text_report(report) if cfg.kind == "image-text" else format_report(report))
    short = [t.task for t in report.tasks if t.kept < cfg.episodes_per_task]
    if short:
        print(f"short of {cfg.episodes_per_task} episodes: {', '.join(short)}", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    from vla.config import load_config
    from vla.pretrain import check_finetuning_stores

    cfg = load_config(args.config, args.set)
    check_finetuning_stores(cfg)
    return _run_training(args, cfg)


def _pretrain(args: argparse.Namespace) -> int:
    from vla.config import load_config
    from vla.pretrain import check_pretraining_stores

    cfg = load_config(args.config, args.set)
    check_pretraining_stores(cfg)
    return _run_training(args, cfg)


def _run_training(args: argparse.Namespace, cfg) -> int:
    """`vla train` and `vla pretrain`: the one loop. Its run summary and simulator results (INFO) are shown."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from vla.config import given_keys, read_tree
    from vla.train import train

    logging.getLogger("vla.train").setLevel(logging.INFO)
    given = given_keys(read_tree(args.config, args.set))  # what --resume must apply or refuse, by name
    with logging_redirect_tqdm():  # log lines above the progress bar, not through it
        result = train(cfg, resume=args.resume, init=args.init_from, progress=not args.quiet, given=given)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, one process speaks for the run
        return 0
    if result.init_report:
        from vla.init_from import summarize_init

        print(f"init from {args.init_from} (details in {result.out / 'init_report.json'}):")
        print(summarize_init(result.init_report))
    final = f"{result.losses[-1]:.4f}" if result.losses else "-"
    val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    print(f"trained to step {result.steps}: train loss {final}{val}; checkpoint in {result.out / 'checkpoint'}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    from vla.pretrain import captions

    for c in captions(args.policy, args.image, args.store, args.episode or [0]):
        stored = f'  (stored: "{c["stored"]}")' if "stored" in c else ""
        print(f'{c["source"]}: "{c["caption"]}"{stored}')
    return 0


def _foresight(args: argparse.Namespace) -> int:
    from vla.foresight import foresight
    from vla.viz import foresight_table

    c = from_args(ForesightConfig, args)
    summaries = foresight(c.policy, c.out, c.suite, c.tasks, c.store, c.episode, c.seed, c.max_steps)
    for s in summaries:
        print(f'{s["name"]}: "{s["instruction"]}", {s["steps"]} steps; {s["paths"]["foresight.mp4"]}')
    print("\n".join(["", "Foresight against copying the last frame (PSNR and gains in dB):", "",
                      *foresight_table([(s["name"], s["horizons"]) for s in summaries], "run")]))  # fmt: skip
    return 0


def _data_import_video(args: argparse.Namespace) -> int:
    from vla.datasets.importers import import_video

    report = import_video(args.dir, args.out, args.captions, fps=args.fps, image_size=args.image_size,
                          camera=args.camera, max_frames=args.max_frames, default_instruction=args.default_instruction,
                          append=args.append, progress=not args.quiet)  # fmt: skip
    print(report.summary())
    if report.held:
        print(f"slower than {args.fps:g} fps, frames held (not invented): {', '.join(report.held)}")
    return 0


def _data_import_image_text(args: argparse.Namespace) -> int:
    from vla.datasets.importers import import_image_text

    report = import_image_text(args.dir, args.out, args.captions, image_size=args.image_size, camera=args.camera,
                               append=args.append, progress=not args.quiet)  # fmt: skip
    print(report.summary())
    return 0


def _data_import_lerobot(args: argparse.Namespace) -> int:
    from vla.datasets.lerobot_import import import_lerobot

    report = import_lerobot(args.path, args.out, image_size=args.image_size, skip=tuple(args.skip_feature),
                            progress=not args.quiet)  # fmt: skip
    print(report.summary())
    return 0


def _data_export_lerobot(args: argparse.Namespace) -> int:
    from vla.datasets.lerobot_export import export_lerobot

    print(export_lerobot(args.store, args.out, codec=args.codec, crf=args.crf, progress=not args.quiet).summary())
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


def _eval(args: argparse.Namespace) -> int:
    from vla.eval_report import format_markdown
    from vla.evaluate import EvalConfig, evaluate

    cfg = from_args(EvalConfig, args)
    report, out = evaluate(cfg, progress=not args.quiet)
    print(format_markdown(report), end="")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}")
    return 0


def _add_collect(sub) -> None:
    """`vla collect`: a flag per CollectConfig field."""
    from vla.collect import CollectConfig

    p = sub.add_parser("collect", help="record scripted-expert episodes from a suite into a store")
    add_flags(p, CollectConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_collect)


def _add_training(sub) -> None:
    """`vla train` and `vla pretrain`: the same loop, the same flags."""
    for name, func, config, what in (
        ("train", _train, None, "train a policy on robot stores (and any others in the mixture)"),
        ("pretrain", _pretrain, "configs/pretrain.yaml", "pretrain on video (foresight) and image-text (captions)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--config", default=config, help=f"a YAML config (default: {config or 'none, defaults'})")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=500")
        p.add_argument("--resume", action="store_true", help="continue the run in train.out exactly where it stopped")
        p.add_argument("--init-from", default=None, metavar="DIR", help="start from a checkpoint's weights")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=func)


def _add_caption(sub) -> None:
    """`vla caption`."""
    p = sub.add_parser("caption", help="describe images with a policy pretrained on image-text data")
    p.add_argument("--policy", required=True, help="a run or checkpoint directory")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)")
    p.add_argument("--store", default=None, help="or the first frame of episodes of this store")
    p.add_argument("--episode", type=int, action="append", default=[], help="episode index (repeatable; default 0)")
    p.set_defaults(func=_caption)


def _add_eval(sub) -> None:
    """`vla eval`: a flag per EvalConfig field."""
    from vla.eval_config import EvalConfig

    p = sub.add_parser("eval", help="roll a policy out in a suite and report success with 95%% intervals")
    add_flags(p, EvalConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


@dataclass
class ForesightConfig:
    """`vla foresight`'s flags (see `vla.options`)."""

    policy: str = option(help="a run or checkpoint directory")
    out: str = option(help="directory for foresight.mp4/.gif, grid.png, metrics.json")
    suite: str | None = option(None, help="roll out in this suite (with --tasks)")
    tasks: str | None = option(None, help="task names or a group")
    store: str | None = option(None, help="or replay an episode of this store (with --episode)")
    episode: int = option(0, min=0, help="with --store: the index of the episode to replay")
    seed: int = option(0, min=0, help="with --suite: base seed of the rollouts (the same seed, the same episodes)")
    max_steps: int = option(200, min=1, help="rollout length limit")

    def __post_init__(self):
        check_fields(self)


def _add_foresight(sub) -> None:
    """`vla foresight`: a flag per ForesightConfig field."""
    p = sub.add_parser("foresight", help="video, PNG grid and metrics of what the policy foresees")
    add_flags(p, ForesightConfig)
    p.set_defaults(func=_foresight)


def _add_data(sub) -> None:
    """`vla data info|check|import-video|import-image-text|import-lerobot|export-lerobot`."""
    data = sub.add_parser("data", help="inspect, validate and import stores").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    p = data.add_parser("info", help="episodes, steps, keys, tasks, instructions and size of a store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_data_info)
    p = data.add_parser("check", help="validate a store; exits non-zero naming each problem")
    p.add_argument("store")
    p.set_defaults(func=_data_check)
    camera_help = "camera name of the frames: name it as your robot store's camera so the pretrained encoder transfers"
    p = data.add_parser("import-video", help="clips (mp4, webm, gif, mkv, mov) + captions JSONL into a video store")
    p.add_argument("dir", help="folder of clips (searched recursively)")
    p.add_argument("--out", required=True, help="the video store to write")
    p.add_argument("--captions", default=None, help='JSONL: {"file": "clip.mp4", "instruction": "...", "task": ...}')
    p.add_argument("--default-instruction", default=None, metavar="TEXT", help="for clips without a caption line")
    p.add_argument("--fps", type=float, default=10.0, help="store frame rate; clips are resampled by timestamp")
    p.add_argument("--image-size", type=int, default=keys.IMAGE_SIZE, help="square side: center crop, then resize")
    p.add_argument("--camera", default="corner", help=camera_help)
    p.add_argument("--max-frames", type=int, default=None, help="keep at most this many frames per clip")
    p.add_argument("--append", action="store_true", help="add to an existing video store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_import_video)
    p = data.add_parser("import-image-text", help="images (png, jpg, webp, bmp) + captions into an image-text store")
    p.add_argument("dir", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="the image-text store to write")
    p.add_argument("--captions", required=True, help='JSONL {"file", "caption"} lines or COCO-style captions JSON')
    p.add_argument("--image-size", type=int, default=keys.IMAGE_SIZE, help="square side: center crop, then resize")
    p.add_argument("--camera", default="corner", help=camera_help)
    p.add_argument("--append", action="store_true", help="add to an existing image-text store")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_import_image_text)
    _add_lerobot_data(data)


def _add_lerobot_data(data) -> None:
    """`vla data import-lerobot` and `vla data export-lerobot`."""
    from vla.datasets.lerobot_video import CODECS, DEFAULT_CODEC, DEFAULT_CRF

    p = data.add_parser("import-lerobot", help="a LeRobotDataset folder (v3.0, v2.1) into a store")
    p.add_argument("path", help="the dataset folder (meta/info.json, data/, videos/)")
    p.add_argument("--out", required=True, help="the store to write (must not exist)")
    p.add_argument("--image-size", type=int, default=keys.IMAGE_SIZE, help="square side: center crop, then resize")
    p.add_argument(
        "--skip-feature",
        action="append",
        default=[],
        metavar="NAME",
        help="leave this feature out (repeatable); features vla cannot map are refused otherwise",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_import_lerobot)
    p = data.add_parser("export-lerobot", help="a store as a LeRobotDataset v3.0 folder (LeRobot 0.4.4 loads it)")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="the dataset folder to write (must not exist)")
    p.add_argument(
        "--codec",
        default=DEFAULT_CODEC,
        choices=list(CODECS),
        help="video codec: av1 (LeRobot's default, lossy), h264, lossless (H.264 RGB, qp 0)",
    )
    p.add_argument("--crf", type=int, default=DEFAULT_CRF, help="quality of av1/h264 (lower: better, larger)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_export_lerobot)


def build_parser() -> argparse.ArgumentParser:
    from vla.robot import cli as robot_cli

    parser = ArgumentParser(prog="vla", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"vla {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_collect, _add_training, _add_caption, _add_eval, _add_foresight, robot_cli.add_parser, _add_data):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGUSR1") and sys.__stderr__ is not None:
        # `kill -USR1 <pid>`: every thread's Python stack to the process's stderr (is a command stuck, where?)
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is caught below, not at exit
        return code
    except UserError as e:
        print(f"vla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped reading (`vla data info S | head -1`): stop quietly, as tools killed by SIGPIPE
        # do. What is still buffered goes to /dev/null, so Python's flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
