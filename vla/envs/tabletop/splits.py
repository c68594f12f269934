"""What the `unseen` split holds out, so that it is disjoint from `train` by construction.

Three partitions, each fixed in code (no randomness decides what is held out):

- colour x kind: every object kind holds out two of the eight colours (`HELD_OUT_COLOURS`). In `train`
  no object of that kind ever shows a held-out colour, named or not; in `unseen` the instruction's
  main object (the thing the instruction is about: the block to move, the drawer, the bottle) always
  does. Every colour still appears in `train` on other kinds ("purple bowl" seen, "purple block" not).
- phrasing: each task's instruction templates are split, the first `N_TRAIN_TEMPLATES` for `train`,
  the rest for `unseen`; the strings differ, so no unseen instruction is ever a train instruction.
- position: each task draws its main object from a rectangle cut into 3 x 2 cells; the front-right
  cell (`HELD_OUT_CELL`) is `unseen` only, the other five `train` only.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "unseen")

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.62, 0.15),
    "blue": (0.12, 0.25, 0.92),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.0, 0.5, 0.0),
    "cyan": (0.1, 0.8, 0.85),
    "pink": (1.0, 0.5, 0.72),
}
COLOURS = tuple(PALETTE)

# Object kind -> colours it never shows in `train` (and that its main object always shows in `unseen`).
HELD_OUT_COLOURS: dict[str, tuple[str, str]] = {
    "block": ("purple", "cyan"),
    "bowl": ("red", "green"),
    "pad": ("blue", "pink"),
    "bottle": ("yellow", "orange"),
    "drawer": ("cyan", "red"),
    "button": ("green", "purple"),
}
KINDS = tuple(HELD_OUT_COLOURS)

N_TRAIN_TEMPLATES = 4  # per task: templates [0, 4) are train phrasings, the rest unseen
GRID = (3, 2)  # main-object spawn rectangle cut into 3 columns (x) by 2 rows (y)
HELD_OUT_CELL = (2, 0)  # column 2 (right), row 0 (front, nearest the static camera)


def colour_choices(kind: str, split: str, main: bool) -> tuple[str, ...]:
    """Colours an object of `kind` may take: the main object of an unseen episode takes a held-out
    colour; in train nothing does; other objects of an unseen episode may take any colour."""
    held = HELD_OUT_COLOURS[kind]
    if split == "train":
        return tuple(c for c in COLOURS if c not in held)
    return held if main else COLOURS


def template_indices(n_templates: int, split: str) -> range:
    return range(N_TRAIN_TEMPLATES) if split == "train" else range(N_TRAIN_TEMPLATES, n_templates)


def cell_of(xy: np.ndarray, rect: tuple[float, float, float, float]) -> tuple[int, int]:
    """The (column, row) of `GRID` holding `xy` in `rect` = (x0, x1, y0, y1)."""
    x0, x1, y0, y1 = rect
    col = int(np.clip((xy[0] - x0) / (x1 - x0) * GRID[0], 0, GRID[0] - 1))
    row = int(np.clip((xy[1] - y0) / (y1 - y0) * GRID[1], 0, GRID[1] - 1))
    return col, row


def in_split_region(xy: np.ndarray, rect: tuple[float, float, float, float], split: str) -> bool:
    """Whether a main object at `xy` belongs to `split`'s part of `rect`."""
    return (cell_of(xy, rect) == HELD_OUT_CELL) == (split == "unseen")


def held_out_rect(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The held-out cell of `rect` as its own rectangle (unseen episodes sample inside it)."""
    x0, x1, y0, y1 = rect
    w, h = (x1 - x0) / GRID[0], (y1 - y0) / GRID[1]
    col, row = HELD_OUT_CELL
    return (x0 + col * w, x0 + (col + 1) * w, y0 + row * h, y0 + (row + 1) * h)
