"""Episode specs: everything that varies between episodes, drawn from (task, split, seed) alone.

An `EpisodeSpec` is plain data (positions, colours, drawer, lamp, hand start, subtasks); the env
applies it to the compiled scene. Drawing it needs no simulator, so tests can sample thousands.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from vla.envs.tabletop import layout as lay
from vla.envs.tabletop import splits
from vla.envs.tabletop.scene import BLOCKS
from vla.envs.tabletop.tasks import TASKS, Binding

KIND_OF = {**{b: "block" for b in BLOCKS}, "bowl": "bowl", "pad": "pad", "bottle": "bottle"}
KIND_OF.update({"drawer": "drawer", "button": "button"})
BODY_OF = {"drawer": "cabinet", "button": "button_base"}  # entity -> the body its position is
MOVABLE = (*BLOCKS, "bowl", "pad", "bottle")  # what the layout places; furniture is always there
MAX_LAYOUT_TRIES = 100


@dataclass
class Subtask:
    task: str
    binding: Binding  # role -> entity
    params: dict  # what the arrangement decided and the expert needs (e.g. a push direction)
    template: int  # index into TASKS[task].templates
    instruction: str


@dataclass
class EpisodeSpec:
    seed: int
    split: str
    xy: dict[str, np.ndarray]  # table position of every present movable object and of the furniture
    yaw: dict[str, float]  # heading of free objects (rad)
    colours: dict[str, str]  # entity -> colour name, for every present entity
    drawer: float  # initial drawer opening (m)
    light_on: bool
    hand: np.ndarray  # initial grip-site position (m)
    subtasks: list[Subtask] = field(default_factory=list)
    main_cell: tuple[int, int] = (0, 0)  # spawn cell of the first subtask's main object

    @property
    def main(self) -> str:
        first = self.subtasks[0]
        return first.binding[TASKS[first.task].main]


def episode_rng(seed: int, split: str, task: str) -> np.random.Generator:
    """Independent streams per (seed, split, task): seed 3 of lift and seed 3 of stack share nothing."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, splits.SPLITS.index(split), zlib.crc32(task.encode())])


def bind_roles(task: str, blocks: list[str]) -> Binding:
    """Bind the task's roles: blocks in the order given (consumed), other kinds to their one entity."""
    binding = {}
    for role, kind in TASKS[task].roles.items():
        binding[role] = blocks.pop(0) if kind == "block" else kind
    return binding


def place_furniture(rng: np.random.Generator, layout: lay.Layout, main_kind: str, split: str) -> None:
    """Cabinet and button, jittered; the one a task is about keeps to its split's region."""
    cabinet = lay.sample_point(rng, lay.CABINET_RECT, split if main_kind == "drawer" else None)
    button = lay.sample_point(rng, lay.BUTTON_RECT, split if main_kind == "button" else None)
    layout.xy["cabinet"], layout.xy["button_base"] = cabinet, button
    layout.keepout.extend(lay.furniture_keepout(cabinet, button))


def arrange_subtask(rng, layout: lay.Layout, task: str, binding: Binding, split: str | None) -> dict:
    """Place what `task` needs; with `split`, its main object keeps to that split's region."""
    return TASKS[task].arrange(rng, layout, binding, split, TASKS[task].rect)


def fill(rng: np.random.Generator, layout: lay.Layout, entities: list[str]) -> None:
    """Place `entities` where they fit; one that does not fit stays out of the scene."""
    for entity in entities:
        kind = KIND_OF[entity]
        try:
            layout.put(entity, layout.sample(rng, lay.TABLE, lay.RADIUS[kind], tries=60), lay.RADIUS[kind])
        except lay.LayoutError:
            continue


def pick_colours(rng: np.random.Generator, present: list[str], bindings: list[Binding], split: str) -> dict[str, str]:
    """Colours for `present` entities. Objects of one kind differ, and so do objects named together in
    one instruction; the split decides which colours each kind (and the main object) may take ("any": all
    eight for every kind, see `recolour`)."""
    named = list(dict.fromkeys(e for binding in bindings for e in binding.values()))
    partners = {e: {p for b in bindings if e in b.values() for p in b.values()} for e in named}
    colours: dict[str, str] = {}
    for entity in [*named, *(e for e in present if e not in named)]:
        kind = KIND_OF[entity]
        taken = {c for e, c in colours.items() if KIND_OF[e] == kind or e in partners.get(entity, ())}
        allowed = splits.COLOURS if split == "any" else splits.colour_choices(kind, split, entity == named[0])
        choices = [c for c in allowed if c not in taken]
        colours[entity] = str(rng.choice(choices))
    return colours


def recolour(spec: EpisodeSpec) -> EpisodeSpec:
    """`spec` with colours drawn from all eight for every entity, held-out colour x kind combinations
    included (a purple block), under `pick_colours`' rules (objects of one kind, and objects named together,
    differ), its instructions re-worded for them; a pure function of the spec's seed. For image-text data
    only: robot episodes of a split keep `sample_episode`'s colours."""
    rng = np.random.default_rng([int(spec.seed) & 0xFFFFFFFF, 0xC0100])
    bindings = [sub.binding for sub in spec.subtasks]
    colours = pick_colours(rng, list(spec.colours), bindings, "any")
    subtasks = [replace(sub, instruction=TASKS[sub.task].instruction(sub.template, colours, sub.binding))
                for sub in spec.subtasks]  # fmt: skip
    return replace(spec, colours=colours, subtasks=subtasks)


def pick_instruction(rng: np.random.Generator, task: str, binding: Binding, colours, split: str) -> tuple[int, str]:
    t = TASKS[task]
    template = int(rng.choice(splits.template_indices(len(t.templates), split)))
    return template, t.instruction(template, colours, binding)


def start_state(rng: np.random.Generator, drawer_open: bool) -> tuple[float, bool, np.ndarray]:
    """Drawer opening, lamp and hand start."""
    drawer = rng.uniform(0.075, 0.1) if drawer_open else rng.uniform(0.0, 0.005)
    hand = np.array([rng.uniform(-0.06, 0.06), rng.uniform(-0.16, -0.08), rng.uniform(0.17, 0.23)])
    return float(drawer), bool(rng.random() < 0.5), hand


def sample_episode(task: str, split: str, seed: int) -> EpisodeSpec:
    """One single-task episode: its objects, distractors, colours, start state and instruction."""
    rng = episode_rng(seed, split, task)
    t = TASKS[task]
    for _ in range(MAX_LAYOUT_TRIES):
        layout = lay.Layout()
        blocks = [str(b) for b in rng.permutation(BLOCKS)]
        binding = bind_roles(task, blocks)
        try:
            place_furniture(rng, layout, t.roles[t.main], split)
            params = arrange_subtask(rng, layout, task, binding, split)
        except lay.LayoutError:
            continue
        # Distractors: each unused object kind half the time, and up to two extra blocks.
        others = [e for e in ("bowl", "pad", "bottle") if e not in binding.values() and rng.random() < 0.5]
        fill(rng, layout, [*others, *blocks[: int(rng.integers(0, 3))]])
        drawer_open = task == "close-drawer" or (task != "open-drawer" and rng.random() < 0.5)
        return finish(rng, layout, [(task, binding, params)], split, seed, drawer_open)
    raise RuntimeError(f"could not lay out {task} for seed {seed}")  # never seen: the table has room


def finish(rng, layout: lay.Layout, plan: list, split: str, seed: int, drawer_open: bool) -> EpisodeSpec:
    """Colours, instructions and start state for a laid-out scene running `plan` [(task, binding, params)]."""
    present = [e for e in MOVABLE if e in layout.xy] + ["drawer", "button"]
    colours = pick_colours(rng, present, [binding for _, binding, _ in plan], split)
    subtasks = []
    for task, binding, params in plan:
        template, instruction = pick_instruction(rng, task, binding, colours, split)
        subtasks.append(Subtask(task, binding, params, template, instruction))
    drawer, light_on, hand = start_state(rng, drawer_open)
    yaw = {e: float(rng.uniform(-0.25, 0.25)) for e in BLOCKS if e in layout.xy}
    if "bottle" in layout.xy:
        yaw["bottle"] = float(rng.uniform(-np.pi, np.pi))
    spec = EpisodeSpec(seed, split, dict(layout.xy), yaw, colours, drawer, light_on, hand, subtasks)
    main_xy = layout.xy[BODY_OF.get(spec.main, spec.main)]
    spec.main_cell = splits.cell_of(main_xy, TASKS[plan[0][0]].rect)
    return spec
