"""Where a tabletop policy's hand goes on the block tasks: to the block it was told, to another block, or
nowhere near one. Separates finding the object from grasping it, which a success rate cannot.

    python bench/target_reach.py --policy runs/tabletop
    python bench/target_reach.py --policy runs/tabletop --split unseen --episodes 20 --tasks lift-block,stack-blocks

Each `--tasks` episode (the tasks that name a block; the same episode seeds as `vla eval --seed`) is rolled
out by the policy and, on the same seeds, by the zero policy (the hand stays where it starts: the trivial
baseline) and by the scripted expert (the reference). Every step records the grip point's distance to the
named block (stack-blocks: the top one, the block to pick) and to the nearest other block. Per policy and task:
  reached        share of episodes whose grip point came within `--radius` (3D) of the named block's centre,
                 where a grasp starts (push-block-to-pad: within `--radius` + 4 cm, as its expert pushes from
                 4 cm behind the block's centre)
  wrong block    share of the episodes with another block on the table whose grip point came within
                 `--radius` of another block before (or without) reaching the named one
  closest xy     median over episodes of the closest the hand came to the named block, horizontally (cm)
  success        the task's own success
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from common import bench_parser, describe, fail, machine
from tqdm import tqdm

from vla import checkpoint, envs
from vla.envs.rollout import Observer, Rollout, rollout
from vla.envs.tabletop.experts import PUSH_OFFSET
from vla.envs.tabletop.scene import BLOCKS
from vla.errors import UserError, choice_error
from vla.options import check_value
from vla.policies.executor import StepClockAct

BLOCK_TASKS = ("lift-block", "place-in-bowl", "place-on-pad", "push-block-to-pad", "stack-blocks",
               "slide-block-left", "slide-block-right")  # fmt: skip
POLICIES = ("policy", "zero", "expert")
SPLITS = ("train", "unseen")


def block_tasks(text: str) -> list[str]:
    """A comma list of `BLOCK_TASKS` -> the tasks; one not among them raises the UserError naming the valid ones."""
    tasks = text.split(",")
    for task in tasks:
        if task not in BLOCK_TASKS:
            raise choice_error("block task", task, BLOCK_TASKS)
    return tasks


def named_block(binding: dict) -> str:
    """The block an episode's instruction names (stack-blocks: the top one, the block to pick up)."""
    return binding.get("block") or binding["top"]


@dataclass
class Reach:
    """One episode: the closest the grip point came to the named block and to any other, and when."""

    closest: float = np.inf  # m, 3D
    closest_xy: float = np.inf  # m
    first_reach: int | None = None  # step the named block was first within the radius
    first_wrong: int | None = None  # step another block was first within the radius
    others: int = 0  # other blocks on the table
    success: bool = False


class ReachObserver(Observer):
    def __init__(self, env, radius: float):
        self.env, self.reach = env, Reach()
        self.radius = radius + (PUSH_OFFSET if env.task == "push-block-to-pad" else 0.0)

    def on_step(self, run: Rollout, obs: dict, info: dict) -> None:
        scene, binding = self.env.scene, self.env.subtask.binding
        named = named_block(binding)
        others = [b for b in BLOCKS if b in self.env.episode.xy and b not in binding.values()]
        hand = scene.grip_pos()
        gap = scene.pos(named) - hand
        r = self.reach
        r.others, r.success = len(others), run.success
        r.closest, r.closest_xy = (
            min(r.closest, float(np.linalg.norm(gap))),
            min(r.closest_xy, float(np.linalg.norm(gap[:2]))),
        )
        if r.first_reach is None and r.closest < self.radius:
            r.first_reach = run.steps
        if r.first_wrong is None and any(np.linalg.norm(scene.pos(b) - hand) < self.radius for b in others):
            r.first_wrong = run.steps


def _episodes(kind: str, policy, suite, task: str, args) -> list[Reach]:
    env = suite.make_env(task, split=args.split, max_episode_steps=args.max_steps)
    expert = suite.make_expert(env) if kind == "expert" else None
    reaches = []
    try:
        for i in range(args.episodes):
            seed = envs.episode_seed(args.seed, "tabletop", "eval/" + args.split, task, i)
            if kind == "policy":
                act = StepClockAct(policy)
            elif kind == "zero":
                act = lambda obs, _: np.zeros(4, np.float32)  # noqa: E731
            else:
                expert.reset(seed)
                act = lambda obs, _: expert.act(obs)  # noqa: E731
            observer = ReachObserver(env.unwrapped, args.radius)
            rollout(env, act, seed, args.max_steps, 0, [observer])
            reaches.append(observer.reach)
    finally:
        env.close()
    return reaches


def summarize(reaches: list[Reach]) -> dict:
    """The table's cells of one policy and task (see the module docstring)."""
    with_others = [r for r in reaches if r.others]
    wrong = [r.first_wrong is not None and (r.first_reach is None or r.first_wrong < r.first_reach)
             for r in with_others]  # fmt: skip
    return {"episodes": len(reaches), "reached": float(np.mean([r.first_reach is not None for r in reaches])),
            "wrong_block": float(np.mean(wrong)) if wrong else None, "with_other_blocks": len(with_others),
            "closest_xy_cm": float(np.median([r.closest_xy for r in reaches]) * 100),
            "success": float(np.mean([r.success for r in reaches]))}  # fmt: skip


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--policy", required=True, help="a `vla train` run directory (or its checkpoint)")
    parser.add_argument("--tasks", default=",".join(BLOCK_TASKS), help="comma list of tabletop block tasks")
    parser.add_argument("--split", default="train", help="train | unseen")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and policy")
    parser.add_argument("--max-steps", type=int, default=200, help="episode limit (the suite's default 200)")
    parser.add_argument("--radius", type=float, default=0.03, help="m: within this of a block's centre is reaching it")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (as vla eval --seed)")
    args = parser.parse_args()
    try:
        tasks = block_tasks(args.tasks)
        if args.split not in SPLITS:
            raise choice_error("split", args.split, SPLITS)
        check_value("--episodes", args.episodes, min=1)
        check_value("--max-steps", args.max_steps, min=1)
        check_value("--radius", args.radius, gt=0.0)
        check_value("--seed", args.seed, min=0)
        policy = checkpoint.load_policy(args.policy, acting=True)
    except UserError as e:
        fail(str(e))
    info = machine()
    suite = envs.get_suite("tabletop")
    rows: dict[str, dict[str, dict]] = {kind: {} for kind in POLICIES}
    with tqdm(total=len(POLICIES) * len(tasks), unit="task", desc="reach") as bar:
        for kind in POLICIES:
            for task in tasks:
                rows[kind][task] = summarize(_episodes(kind, policy, suite, task, args))
                bar.update(1)
    _print(args, rows, info)
    print(json.dumps({"policy": args.policy, "split": args.split, "episodes_per_task": args.episodes,
                      "radius_m": args.radius, "seed": args.seed, "rows": rows, "machine": info}))  # fmt: skip


def _print(args, rows: dict, info: dict) -> None:
    print(f"\n# Where the hand goes: {args.policy}, {args.split} split, {args.episodes} episodes per task, "
          f"reach radius {args.radius * 100:g} cm; {describe(info)}\n")  # fmt: skip
    print("| task | policy | reached named block | wrong block first | closest xy (median) | success |")
    print("|---|---|---|---|---|---|")
    for task in rows["policy"]:
        for kind in POLICIES:
            r = rows[kind][task]
            wrong = "-" if r["wrong_block"] is None else f"{r['wrong_block']:.0%} of {r['with_other_blocks']}"
            print(
                f"| {task} | {kind} | {r['reached']:.0%} | {wrong} | {r['closest_xy_cm']:.1f} cm | {r['success']:.0%} |"
            )
    for kind in POLICIES:
        mean = {k: np.mean([r[k] for r in rows[kind].values()]) for k in ("reached", "closest_xy_cm", "success")}
        print(f"| all | {kind} | {mean['reached']:.0%} | | {mean['closest_xy_cm']:.1f} cm | {mean['success']:.0%} |")


if __name__ == "__main__":
    main()
