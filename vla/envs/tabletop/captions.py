"""Captions of a tabletop scene from privileged state: objects, colours and spatial relations.

Relations are judged in the camera's view, on the table plane: `lateral` runs along the camera's
right axis, `depth` away from it (the static camera's right is world +x and its depth world +y).
Only objects the camera shows (at least `min_pixels` pixels of the frame) are named, and a relation is
stated only when it is clear: A is left of B when their footprints (`REACH`, m) do not overlap along
the lateral axis, in front of B likewise along depth; "next to" means footprints within `NEAR` m,
"far from" more than `FAR` m apart.

Families of captions (each with several phrasings; nouns vary by scene: block/cube, pad/mat/square):

    objects    "three objects on the table: a red block, a blue bowl and a green bottle"
    left-right "a red block left of a blue bowl", "the blue bowl is to the right of the red block"
    front-back "the green cube is in front of the yellow pad", "the yellow pad is behind the green cube"
    distance   "the red block is next to the blue bowl", "the red block is far from the pink bottle"
    extreme    "the leftmost object is the red block", "the object closest to the camera is the blue bowl"
    count      "two blocks, a red one and a blue one", "there is one bowl on the table"
    state      "the orange drawer is open", "the lamp by the yellow button is off"
    colour     "the bowl is orange", "the green object is a bottle"

In a left-right or front-back caption the object named first is the one the relation word describes
(first named is left in "... left of ..." and right in "... right of ..."): tests rely on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from vla.envs.tabletop.env import SceneObject, TabletopEnv

NOUNS = {
    "block": ("block", "cube"),
    "bowl": ("bowl",),
    "pad": ("pad", "mat", "square"),
    "bottle": ("bottle",),
    "drawer": ("drawer",),
    "button": ("button",),
}
MOVABLE_KINDS = ("block", "bowl", "pad", "bottle")  # "objects on the table"; drawer and button are furniture
# Footprint radius (m) around an object's position that relations keep clear of.
REACH = {"block": 0.03, "bowl": 0.078, "pad": 0.055, "bottle": 0.03, "drawer": 0.11, "button": 0.06}
NEAR, FAR = 0.06, 0.3  # m between footprints: "next to" below NEAR, "far from" above FAR
DRAWER_OPEN = 0.05  # m of drawer travel from which it is called open
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")


@dataclass(frozen=True)
class Seen:
    """An object as the camera sees it; `lateral` and `depth` in metres on the table plane."""

    obj: SceneObject
    noun: str
    lateral: float
    depth: float

    @property
    def the(self) -> str:
        return f"the {self.obj.colour} {self.noun}"

    @property
    def a(self) -> str:
        return f"{article(self.obj.colour)} {self.obj.colour} {self.noun}"

    @property
    def reach(self) -> float:
        return REACH[self.obj.kind]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def join(items: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def view_axes(env: TabletopEnv, camera: str) -> tuple[np.ndarray, np.ndarray]:
    """(right, forward): unit vectors on the table plane along the camera's right and away from it.

    Forward adds the horizontal parts of the viewing direction and of image-up, so it is defined for
    a camera looking straight down as well as for one looking ahead."""
    model, data = env.scene.model, env.scene.data
    axes = data.cam_xmat[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)].reshape(3, 3)
    x, y, z = axes[:, 0], axes[:, 1], axes[:, 2]  # camera axes in the world; it looks along -z
    right, forward = x[:2].copy(), (y - z)[:2]
    return right / np.linalg.norm(right), forward / np.linalg.norm(forward)


def seen_objects(env: TabletopEnv, camera: str, rng: np.random.Generator, min_pixels: int | None = None) -> list[Seen]:
    """The objects `camera` shows now, with their view coordinates and a noun per kind drawn from `rng`."""
    min_pixels = max(3, env.image_size**2 // 1000) if min_pixels is None else min_pixels
    right, forward = view_axes(env, camera)
    nouns = {kind: str(rng.choice(options)) for kind, options in NOUNS.items()}  # one noun per kind and scene
    return [
        Seen(obj, nouns[obj.kind], float(obj.position[:2] @ right), float(obj.position[:2] @ forward))
        for obj in env.scene_objects(camera)
        if obj.pixels >= min_pixels
    ]


def relations(a: Seen, b: Seen) -> set[str]:
    """What holds of `a` relative to `b`: "left", "right", "front", "behind", "near", "far"."""
    clear = a.reach + b.reach
    out = set()
    if b.lateral - a.lateral > clear:
        out.add("left")
    if a.lateral - b.lateral > clear:
        out.add("right")
    if b.depth - a.depth > clear:
        out.add("front")
    if a.depth - b.depth > clear:
        out.add("behind")
    gap = np.hypot(a.lateral - b.lateral, a.depth - b.depth) - clear
    if gap < NEAR:
        out.add("near")
    elif gap > FAR:
        out.add("far")
    return out


# --- caption families: each returns every caption it can say of the scene -------------------------
def _objects(seen: list[Seen], env: TabletopEnv) -> list[str]:
    movable = [s for s in seen if s.obj.kind in MOVABLE_KINDS]
    if not movable:
        return []
    listed = join([s.a for s in movable])
    n = len(movable)
    out = [f"a table with {listed}", f"on the table: {listed}"]
    if n > 1:
        out.append(f"{NUMBERS[n]} objects on the table: {listed}")
    return out


def _left_right(seen: list[Seen], env: TabletopEnv) -> list[str]:
    out = []
    for a in seen:
        for b in seen:
            if a is not b and "left" in relations(a, b):
                out += [f"{a.a} left of {b.a}", f"{a.the} is to the left of {b.the}", f"{a.the} is left of {b.the}"]
                out += [f"{b.the} is to the right of {a.the}", f"{b.a} right of {a.a}"]
    return out


def _front_back(seen: list[Seen], env: TabletopEnv) -> list[str]:
    out = []
    for a in seen:
        for b in seen:
            if a is not b and "front" in relations(a, b):
                out += [f"{a.the} is in front of {b.the}", f"{a.a} in front of {b.a}"]
                out += [f"{b.the} is behind {a.the}", f"{b.a} behind {a.a}"]
    return out


def _distance(seen: list[Seen], env: TabletopEnv) -> list[str]:
    out = []
    for i, a in enumerate(seen):
        for b in seen[i + 1 :]:
            rel = relations(a, b)
            if "near" in rel:
                out += [f"{a.the} is next to {b.the}", f"{a.the} is near {b.the}", f"{b.a} beside {a.a}"]
            if "far" in rel:
                out += [f"{a.the} is far from {b.the}", f"{b.the} is far away from {a.the}"]
    return out


def _extreme(seen: list[Seen], env: TabletopEnv) -> list[str]:
    movable = [s for s in seen if s.obj.kind in MOVABLE_KINDS]
    if len(movable) < 2:
        return []
    out = []
    for s in movable:
        rel = [relations(s, other) for other in movable if other is not s]
        if all("left" in r for r in rel):
            out += [f"the leftmost object is {s.the}", f"{s.the} is the leftmost object on the table"]
        if all("right" in r for r in rel):
            out += [f"the rightmost object is {s.the}", f"{s.the} is furthest to the right"]
        if all("front" in r for r in rel):
            out += [f"the object closest to the camera is {s.the}", f"{s.the} is at the front of the table"]
        if all("behind" in r for r in rel):
            out += [f"the object furthest from the camera is {s.the}"]
    return out


def _count(seen: list[Seen], env: TabletopEnv) -> list[str]:
    out = []
    for kind in MOVABLE_KINDS:
        group = [s for s in seen if s.obj.kind == kind]
        if not group:
            continue
        noun = NOUNS[kind][0]
        if len(group) == 1:
            out.append(f"there is one {noun} on the table, {group[0].a}")
            continue
        number, colours = NUMBERS[len(group)], join([s.obj.colour for s in group])
        ones = join([f"{article(s.obj.colour)} {s.obj.colour} one" for s in group])
        out += [f"{number} {noun}s: {colours}", f"there are {number} {noun}s on the table", f"{number} {noun}s, {ones}"]
    return out


def _state(seen: list[Seen], env: TabletopEnv) -> list[str]:
    out = []
    for s in seen:
        if s.obj.kind == "drawer":
            opened = "open" if env.scene.drawer_opening() > DRAWER_OPEN else "closed"
            out += [f"{s.the} is {opened}", f"{article(opened)} {opened} {s.obj.colour} drawer"]
        if s.obj.kind == "button":
            lamp = "on" if env.scene.light_on else "off"
            out += [f"the lamp by {s.the} is {lamp}", f"{s.a} with its lamp {lamp}"]
    return out


def _colour(seen: list[Seen], env: TabletopEnv) -> list[str]:
    out = []
    for s in seen:
        if sum(o.obj.kind == s.obj.kind for o in seen) == 1:
            out.append(f"the {s.noun} is {s.obj.colour}")
        if sum(o.obj.colour == s.obj.colour for o in seen) == 1:
            out.append(f"the {s.obj.colour} object is {article(s.noun)} {s.noun}")
    return out


FAMILIES = {
    "objects": _objects,
    "left-right": _left_right,
    "front-back": _front_back,
    "distance": _distance,
    "extreme": _extreme,
    "count": _count,
    "state": _state,
    "colour": _colour,
}
SPATIAL = ("left-right", "front-back")


def caption_pool(env: TabletopEnv, camera: str, rng: np.random.Generator) -> dict[str, list[str]]:
    """Every caption each family can say of the scene now, as `camera` sees it (nouns drawn from `rng`)."""
    seen = seen_objects(env, camera, rng)
    return {name: list(dict.fromkeys(family(seen, env))) for name, family in FAMILIES.items()}


def describe(env: TabletopEnv, camera: str, n: int, seed: int) -> list[str]:
    """`n` different captions of the scene now (fewer if it has fewer to say), a pure function of
    (scene, camera, seed). Families take turns in a seeded order, so captions of one image vary in kind;
    a spatial one (left-right or front-back) comes first whenever the scene has one."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xCA97])
    pool = {k: v for k, v in caption_pool(env, camera, rng).items() if v}
    order = [str(k) for k in rng.permutation(sorted(pool))]
    spatial = [k for k in order if k in SPATIAL]
    if spatial:
        order.remove(spatial[0])
        order.insert(0, spatial[0])
    captions: list[str] = []
    while len(captions) < n and any(pool.values()):
        for family in order:
            if pool[family] and len(captions) < n:
                captions.append(pool[family].pop(int(rng.integers(len(pool[family])))))
    return captions
