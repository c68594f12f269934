"""Instruction chains (CALVIN-style): one scene, a sequence of subtasks, each judged on its own.

A chain is planned on a symbolic world (drawer open?, bottle standing?, pad taken?, blocks not yet
used) so every subtask is feasible when its turn comes: no "close the drawer" while it is closed, no
block used twice, no two tasks on one pad. All subtasks of a chain are distinct tasks. The scene is
then laid out for every subtask at once (each one's paths kept clear) and filled with every other
object, so a chain scene holds all four blocks, the bowl, the pad and the bottle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla.envs.tabletop import layout as lay
from vla.envs.tabletop.episodes import (
    MAX_LAYOUT_TRIES,
    MOVABLE,
    EpisodeSpec,
    arrange_subtask,
    bind_roles,
    episode_rng,
    fill,
    finish,
    place_furniture,
)
from vla.envs.tabletop.scene import BLOCKS
from vla.envs.tabletop.tasks import TASKS

CHAIN = "chain"  # the task name that makes `make_env` build a chain env
CHAIN_LENGTH = 5  # subtasks per chain
SUBTASK_STEPS = 150  # control steps each subtask may take (7.5 s at 20 Hz)
# Lifting leaves a block in the hand, which no next subtask expects: it is not chained.
CHAIN_TASKS = tuple(t for t in TASKS if t != "lift-block")


@dataclass
class _World:
    """What the planner tracks between subtasks."""

    drawer_open: bool
    free_blocks: int = len(BLOCKS)
    bottle_standing: bool = True
    pad_free: bool = True
    done: set[str] = field(default_factory=set)


def _n_blocks(task: str) -> int:
    return sum(kind == "block" for kind in TASKS[task].roles.values())


def feasible(task: str, world: _World) -> bool:
    if task in world.done or _n_blocks(task) > world.free_blocks:
        return False
    if task in ("open-drawer", "close-drawer"):
        return world.drawer_open == (task == "close-drawer")
    if task in ("place-on-pad", "push-block-to-pad"):
        return world.pad_free
    if task == "knock-over":
        return world.bottle_standing
    return True


def _apply(task: str, world: _World) -> None:
    world.done.add(task)
    world.free_blocks -= _n_blocks(task)
    if task in ("open-drawer", "close-drawer"):
        world.drawer_open = task == "open-drawer"
    world.pad_free &= task not in ("place-on-pad", "push-block-to-pad")
    world.bottle_standing &= task != "knock-over"


def plan_chain(rng: np.random.Generator, drawer_open: bool, length: int = CHAIN_LENGTH) -> list[str]:
    """`length` distinct tasks, each feasible after the ones before it."""
    world, tasks = _World(drawer_open), []
    for _ in range(length):
        options = [t for t in CHAIN_TASKS if feasible(t, world)]
        tasks.append(str(rng.choice(options)))
        _apply(tasks[-1], world)
    return tasks


def sample_chain(split: str, seed: int, length: int = CHAIN_LENGTH) -> EpisodeSpec:
    """A chain episode: the scene, its start state and `length` subtasks with their instructions.
    The first subtask's main object carries the split's colour and region (see `splits`)."""
    rng = episode_rng(seed, split, f"{CHAIN}-{length}")
    for _ in range(MAX_LAYOUT_TRIES):
        drawer_open = bool(rng.random() < 0.5)
        tasks = plan_chain(rng, drawer_open, length)
        blocks = [str(b) for b in rng.permutation(BLOCKS)]
        bindings = [bind_roles(t, blocks) for t in tasks]
        layout = lay.Layout()
        first = TASKS[tasks[0]]
        try:
            place_furniture(rng, layout, first.roles[first.main], split)
            plan = []
            for i, (task, binding) in enumerate(zip(tasks, bindings, strict=True)):
                params = arrange_subtask(rng, layout, task, binding, split if i == 0 else None)
                plan.append((task, binding, params))
        except lay.LayoutError:
            continue
        fill(rng, layout, [e for e in MOVABLE if e not in layout.xy])
        return finish(rng, layout, plan, split, seed, drawer_open)
    raise RuntimeError(f"could not lay out a chain for seed {seed}")
