"""`vla eval`'s settings: the flags are generated from `EvalConfig`'s fields (see `vla.options`).

Apart from `vla.evaluate` so that building the `vla` command's parser does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from vla import keys
from vla.eval_scenes import SCENES
from vla.options import check_fields, option

BASELINES = ("zero", "expert")  # --policy values that need no checkpoint
DEFAULT_SUITE = "metaworld"


@dataclass
class EvalConfig:
    policy: str = option(help="zero | expert | a checkpoint directory | lerobot:PATH (a LeRobot-trained policy, run "
                         "in LeRobot's environment: VLA_LEROBOT_PYTHON)")  # fmt: skip
    suite: str | None = option(None, help="metaworld | tabletop (default: a checkpoint's own, its run's "
                               "train.eval.suite or else the suite with its cameras; metaworld for zero and "
                               "expert)")  # fmt: skip
    tasks: str | None = option(None, help="a group (mt10, mt50, ml45-train, ml45-test, all) or comma-separated "
                               "task names; none only with --chain")  # fmt: skip
    episodes: int = option(10, min=1, help="episodes per task (chains, with --chain)")
    workers: int = option(1, min=1, help="parallel simulator processes")
    split: str | None = option(None, help="scene split (default: the suite's scenes never collected: metaworld "
                               "unseen, its held-out variants 40-49; tabletop train, fresh layouts)")  # fmt: skip
    chain: bool = option(False, help="chains of instructions in one scene (CALVIN-style)")
    charge_latency: bool = option(False, help="hold the last action while the policy computes")
    seed: int = option(0, min=0, help="base seed: the same seed gives the same episodes")
    videos: int = option(2, min=0, help="episodes per task recorded as MP4")
    out: str | None = option(None, help="report directory (default: runs/eval/<suite>-<time>, or "
                             "<checkpoint>/eval/<suite>-<time>)")  # fmt: skip
    max_steps: int | None = option(None, min=1, help="episode step limit (default: the suite's)")
    image_size: int | None = option(None, min=keys.MIN_IMAGE_SIZE, max=keys.MAX_IMAGE_SIZE,
                                    help=f"zero/expert image side (default: {keys.IMAGE_SIZE}; a checkpoint "
                                    "brings its own)")  # fmt: skip
    steps_after_success: int = option(2, min=0, help="steps after the first success, so the video shows it")
    scenes: str = option("fresh", choices=SCENES, help="fresh: layouts never collected (from "
                         "--seed) | demonstrations: the scenes of the run's own training episodes, to tell not "
                         "imitating from not generalising (vla.eval_scenes)")  # fmt: skip
    baseline: str | None = option(None, choices=BASELINES, help="also run this weightless policy on the same "
                                  "seeds, for comparison")  # fmt: skip

    def __post_init__(self):
        check_fields(self)


def default_suite(policy: str | None, features: dict | None) -> str:
    """The suite a checkpoint policy belongs to: the one its run evaluated in (`train.eval.suite`), else the
    one whose cameras it reads (its training data was rendered there); `DEFAULT_SUITE` for zero and expert,
    or when neither says. `vla eval` and `vla control` default to it."""
    if policy is None or features is None:
        return DEFAULT_SUITE
    from vla import envs
    from vla.checkpoint import load_run_config  # torch: only for a checkpoint
    from vla.errors import UserError

    try:
        suite = load_run_config(policy).train.eval.suite
    except UserError:  # a policy directory without its run config
        suite = ""
    if suite:
        return suite
    cameras = {keys.camera_of(k) for k in features if keys.is_image_key(k)}
    fitting = [name for name in envs.SUITES if cameras <= set(envs.get_suite(name).cameras)]
    return fitting[0] if len(fitting) == 1 else DEFAULT_SUITE
