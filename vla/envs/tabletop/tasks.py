"""The tabletop tasks: who takes part (roles), how the table is arranged for them, what counts as
success on simulator state, and how to say it (instruction templates, `{role}` = that object's colour).

A task's first role is its main object: the one whose colour and position the unseen split holds out
(see `splits`). Templates [0, splits.N_TRAIN_TEMPLATES) are train phrasings, the rest unseen ones.
Success predicates read only simulator state plus `start`, a snapshot taken when the (sub)task began:
{entity: position} for its bound objects and "light_on".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vla.envs.tabletop.layout import BUTTON_RECT, CABINET_RECT, RADIUS, TABLE, Layout, LayoutError, Rect, path
from vla.envs.tabletop.scene import BLOCK_HALF, Scene

ON_TABLE_Z = BLOCK_HALF + 0.01  # a block's centre below this rests on the table (or a pad)
LIFT_Z = 0.1  # a lifted block's centre is above this (resting: 0.025)
SLIDE_DISTANCE = 0.1  # m a slid block must travel sideways
DRAWER_OPEN, DRAWER_CLOSED = 0.07, 0.015  # drawer travel (of 0.1 m) that counts as open / closed
PAD_HALF = 0.05  # a block centre within this of the pad centre (per axis) is on the pad
BOWL_INNER = 0.06  # a block centre within this of the bowl centre is in the bowl

Binding = dict[str, str]  # role -> scene entity ("block_2", "bowl", ...)


@dataclass(frozen=True)
class Task:
    name: str
    roles: dict[str, str]  # role -> object kind; the first role is the main object
    templates: tuple[str, ...]
    success: Callable[[Scene, Binding, dict], bool]
    # (rng, layout, binding, split or None, main rect) -> params for the expert
    arrange: Callable[[np.random.Generator, Layout, Binding, str | None, Rect], dict]
    rect: Rect = TABLE  # where the main object is drawn from; the split's region cells cut it

    @property
    def main(self) -> str:
        return next(iter(self.roles))

    def instruction(self, template: int, colours: dict[str, str], binding: Binding) -> str:
        return self.templates[template].format(**{role: colours[binding[role]] for role in self.roles})


# --- success predicates ---------------------------------------------------------------------------
def _resting_free(scene: Scene, block: str) -> bool:
    return scene.pos(block)[2] < ON_TABLE_Z and not scene.held(block)


def lifted(scene: Scene, b: Binding, start: dict) -> bool:
    return bool(scene.pos(b["block"])[2] > LIFT_Z)


def in_bowl(scene: Scene, b: Binding, start: dict) -> bool:
    block, bowl = scene.pos(b["block"]), scene.pos(b["bowl"])
    inside = np.linalg.norm(block[:2] - bowl[:2]) < BOWL_INNER and block[2] < 0.06
    return bool(inside and not scene.held(b["block"]))


def on_pad(scene: Scene, b: Binding, start: dict) -> bool:
    offset = scene.pos(b["block"])[:2] - scene.pos(b["pad"])[:2]
    return bool(np.all(np.abs(offset) < PAD_HALF) and _resting_free(scene, b["block"]))


def pushed_onto_pad(scene: Scene, b: Binding, start: dict) -> bool:
    """On the pad and on the table; the pusher may still touch it."""
    offset = scene.pos(b["block"])[:2] - scene.pos(b["pad"])[:2]
    return bool(np.all(np.abs(offset) < PAD_HALF) and scene.pos(b["block"])[2] < ON_TABLE_Z)


def stacked(scene: Scene, b: Binding, start: dict) -> bool:
    top, base = scene.pos(b["top"]), scene.pos(b["base"])
    aligned = np.linalg.norm(top[:2] - base[:2]) < BLOCK_HALF and 0.04 < top[2] - base[2] < 0.06
    return bool(aligned and base[2] < ON_TABLE_Z and not scene.held(b["top"]))


def _slid(scene: Scene, b: Binding, start: dict, sign: float) -> bool:
    moved = (scene.pos(b["block"])[0] - start[b["block"]][0]) * sign
    return bool(moved > SLIDE_DISTANCE and _resting_free(scene, b["block"]))


def slid_left(scene: Scene, b: Binding, start: dict) -> bool:
    return _slid(scene, b, start, -1.0)


def slid_right(scene: Scene, b: Binding, start: dict) -> bool:
    return _slid(scene, b, start, 1.0)


def drawer_open(scene: Scene, b: Binding, start: dict) -> bool:
    return scene.drawer_opening() > DRAWER_OPEN


def drawer_closed(scene: Scene, b: Binding, start: dict) -> bool:
    return scene.drawer_opening() < DRAWER_CLOSED


def light_toggled(scene: Scene, b: Binding, start: dict) -> bool:
    return scene.light_on != start["light_on"]


def knocked_over(scene: Scene, b: Binding, start: dict) -> bool:
    return bool(scene.up(b["bottle"])[2] < 0.5)  # tilted more than 60 degrees


# --- arrangements: place the bound objects, reserve the paths the task sweeps ---------------------
def _place(rng, layout: Layout, entity: str, kind: str, rect: Rect, split, extra=None, tries=200) -> np.ndarray:
    if entity not in layout.xy:
        layout.put(entity, layout.sample(rng, rect, RADIUS[kind], split, extra, tries), RADIUS[kind])
    return layout.xy[entity]


def _pick_and_place(target_role: str, target_kind: str):
    def arrange(rng, layout: Layout, b: Binding, split, rect: Rect) -> dict:
        _place(rng, layout, b["block"], "block", rect, split)
        _place(rng, layout, b[target_role], target_kind, TABLE, None)
        return {}

    return arrange


def arrange_lift(rng, layout: Layout, b: Binding, split, rect: Rect) -> dict:
    _place(rng, layout, b["block"], "block", rect, split)
    return {}


def arrange_stack(rng, layout: Layout, b: Binding, split, rect: Rect) -> dict:
    _place(rng, layout, b["top"], "block", rect, split)
    _place(rng, layout, b["base"], "block", TABLE, None)
    return {}


def _slide(sign: float):
    sweep = path((sign, 0.0), 0.03, 0.15, RADIUS["block"])

    def arrange(rng, layout: Layout, b: Binding, split, rect: Rect) -> dict:
        xy = _place(rng, layout, b["block"], "block", rect, split, sweep)
        for offset, radius in sweep:
            layout.reserve(xy + offset, radius)
        return {"direction": [sign, 0.0]}

    return arrange


def arrange_push(rng, layout: Layout, b: Binding, split, rect: Rect) -> dict:
    """Block and pad 13-18 cm apart, the pad in front of or behind the block (the pushing fingers then
    straddle one face of the block, which keeps it straight), with the pusher's approach and the
    block's path kept clear."""
    for _ in range(30):
        u = np.array([0.0, 1.0 if rng.random() < 0.5 else -1.0])
        goal = u * rng.uniform(0.13, 0.18) + u[::-1] * rng.uniform(-0.015, 0.015)
        extra = [*path(u, -0.08, float(goal @ u) - 0.03, RADIUS["block"]), (goal, RADIUS["pad"])]
        try:
            xy = _place(rng, layout, b["block"], "block", rect, split, extra, tries=40)
        except LayoutError:
            continue
        for offset, radius in extra[:-1]:
            layout.reserve(xy + offset, radius)
        layout.put(b["pad"], xy + goal, RADIUS["pad"])
        return {"direction": u.tolist()}
    raise LayoutError("no room to push a block to a pad")


def arrange_knock(rng, layout: Layout, b: Binding, split, rect: Rect) -> dict:
    """The bottle with room behind it for the hand and in front of it to fall (13 cm tall)."""
    for _ in range(30):
        angle = rng.uniform(-np.pi, 0.0)  # push sideways or towards the camera, never into the furniture
        u = np.array([np.cos(angle), np.sin(angle)])
        extra = [(-u * 0.075, 0.035), *path(u, 0.06, 0.19, 0.05)]
        try:
            xy = _place(rng, layout, b["bottle"], "bottle", rect, split, extra, tries=40)
        except LayoutError:
            continue
        for offset, radius in extra:
            layout.reserve(xy + offset, radius)
        return {"direction": u.tolist()}
    raise LayoutError("no room to knock the bottle over")


def arrange_nothing(rng, layout: Layout, b: Binding, split, rect: Rect) -> dict:
    return {}  # furniture: placed (and split by region) by the episode sampler


# --- the registry -----------------------------------------------------------------------------------
def _task(name, roles, success, arrange, *templates, rect: Rect = TABLE) -> Task:
    return Task(name, roles, tuple(templates), success, arrange, rect)


SLIDE_LEFT_RECT: Rect = (TABLE[0] + 0.15, *TABLE[1:])  # room to move 15 cm left
SLIDE_RIGHT_RECT: Rect = (TABLE[0], TABLE[1] - 0.15, *TABLE[2:])


BLOCK, BOWL, PAD = {"block": "block"}, {"bowl": "bowl"}, {"pad": "pad"}
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task(
            "lift-block", BLOCK, lifted, arrange_lift,
            "lift the {block} block", "pick up the {block} block", "raise the {block} cube off the table",
            "grab the {block} block and hold it up",
            "take the {block} cube and lift it into the air", "hold the {block} block up above the table",
        ),
        _task(
            "place-in-bowl", {**BLOCK, **BOWL}, in_bowl, _pick_and_place("bowl", "bowl"),
            "put the {block} block in the {bowl} bowl", "place the {block} cube inside the {bowl} bowl",
            "drop the {block} block into the {bowl} bowl", "move the {block} block into the {bowl} bowl",
            "pick up the {block} cube and put it in the {bowl} bowl", "the {block} block goes in the {bowl} bowl",
        ),
        _task(
            "place-on-pad", {**BLOCK, **PAD}, on_pad, _pick_and_place("pad", "pad"),
            "place the {block} block on the {pad} pad", "put the {block} cube on the {pad} square",
            "set the {block} block down on the {pad} pad", "move the {block} block onto the {pad} mat",
            "pick up the {block} cube and put it on the {pad} square", "carry the {block} block to the {pad} pad",
        ),
        _task(
            "push-block-to-pad", {**BLOCK, **PAD}, pushed_onto_pad, arrange_push,
            "push the {block} block to the {pad} pad", "slide the {block} cube onto the {pad} square",
            "nudge the {block} block over to the {pad} pad", "push the {block} cube onto the {pad} mat",
            "without lifting it, move the {block} block to the {pad} pad",
            "shove the {block} cube until it is on the {pad} square",
        ),
        _task(
            "stack-blocks", {"top": "block", "base": "block"}, stacked, arrange_stack,
            "stack the {top} block on the {base} block", "put the {top} cube on top of the {base} cube",
            "place the {top} block onto the {base} block", "stack the {top} cube on the {base} one",
            "build a tower with the {top} block on the {base} block",
            "set the {top} cube down on top of the {base} block",
        ),
        _task(
            "slide-block-left", BLOCK, slid_left, _slide(-1.0),
            "slide the {block} block to the left", "move the {block} cube left",
            "shift the {block} block to the left side", "drag the {block} block leftwards",
            "push the {block} cube over to the left", "move the {block} block a little to the left",
            rect=SLIDE_LEFT_RECT,
        ),
        _task(
            "slide-block-right", BLOCK, slid_right, _slide(1.0),
            "slide the {block} block to the right", "move the {block} cube right",
            "shift the {block} block to the right side", "drag the {block} block rightwards",
            "push the {block} cube over to the right", "move the {block} block a little to the right",
            rect=SLIDE_RIGHT_RECT,
        ),
        _task(
            "open-drawer", {"drawer": "drawer"}, drawer_open, arrange_nothing,
            "open the {drawer} drawer", "pull the {drawer} drawer open", "pull out the {drawer} drawer",
            "slide the {drawer} drawer open",
            "grab the handle and open the {drawer} drawer", "get the {drawer} drawer open",
            rect=CABINET_RECT,
        ),
        _task(
            "close-drawer", {"drawer": "drawer"}, drawer_closed, arrange_nothing,
            "close the {drawer} drawer", "push the {drawer} drawer shut", "shut the {drawer} drawer",
            "slide the {drawer} drawer closed",
            "push the {drawer} drawer back in", "get the {drawer} drawer closed",
            rect=CABINET_RECT,
        ),
        _task(
            "press-button", {"button": "button"}, light_toggled, arrange_nothing,
            "press the {button} button", "push the {button} button", "push down on the {button} button",
            "press down the {button} button",
            "toggle the light with the {button} button", "hit the {button} button",
            rect=BUTTON_RECT,
        ),
        _task(
            "knock-over", {"bottle": "bottle"}, knocked_over, arrange_knock,
            "knock over the {bottle} bottle", "tip over the {bottle} bottle", "push the {bottle} bottle over",
            "topple the {bottle} bottle",
            "make the {bottle} bottle fall over", "knock the {bottle} bottle down",
        ),
    )
}  # fmt: skip
