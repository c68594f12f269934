"""Where things go on the table: rejection sampling of object footprints (discs) that keep clear of
each other, of the furniture's reach and of the paths tasks will sweep.

Coordinates are table-top metres; x to the right and y away from the static camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla.envs.tabletop import splits

Rect = tuple[float, float, float, float]  # (x0, x1, y0, y1)

TABLE: Rect = (-0.29, 0.29, -0.23, 0.06)  # where movable objects may stand
# Where the discs of paths and footprints may be centred (a little more room behind, for pushes).
TABLE_PLUS: Rect = (TABLE[0] - 0.01, TABLE[1] + 0.01, TABLE[2] - 0.01, TABLE[3] + 0.05)
# Footprint radii: the object plus the open fingers' clearance around it when it is grasped; the tall
# bottle also keeps clear of the palm (6 cm either side of the grip point) of a hand working nearby.
RADIUS = {"block": 0.045, "bowl": 0.1, "pad": 0.065, "bottle": 0.075}
# Furniture sits along the back edge; each is jittered inside its rectangle (its main-object region).
CABINET_RECT: Rect = (-0.22, -0.16, 0.205, 0.235)
BUTTON_RECT: Rect = (0.16, 0.22, 0.19, 0.21)


class LayoutError(RuntimeError):
    """No placement satisfied the constraints; the caller draws a fresh layout."""


@dataclass
class Layout:
    """Occupied discs, no-go rectangles and the positions chosen so far (entity -> xy)."""

    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (N, 2) occupied disc centres
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,)
    keepout: list[Rect] = field(default_factory=list)
    xy: dict[str, np.ndarray] = field(default_factory=dict)

    def free(self, points: np.ndarray, radii: np.ndarray) -> bool:
        """Whether discs (M, 2) with `radii` (M,) all clear every occupied disc and no-go rectangle,
        with their centres on the table."""
        points, radii = np.atleast_2d(points), np.atleast_1d(radii)
        lo, hi = np.array(TABLE_PLUS[::2]), np.array(TABLE_PLUS[1::2])
        if np.any(points < lo) or np.any(points > hi):
            return False
        gaps = np.linalg.norm(points[:, None] - self.centres[None], axis=-1)  # (M, N)
        if np.any(gaps < radii[:, None] + self.radii[None]):
            return False
        return not any(np.any(_discs_hit_rect(points, radii, rect)) for rect in self.keepout)

    def reserve(self, xy: np.ndarray, radius: float) -> None:
        self.centres = np.vstack([self.centres, np.asarray(xy, dtype=float)[None, :2]])
        self.radii = np.append(self.radii, radius)

    def put(self, entity: str, xy: np.ndarray, radius: float) -> None:
        self.xy[entity] = np.asarray(xy, dtype=float)
        self.reserve(xy, radius)

    def sample(
        self,
        rng: np.random.Generator,
        rect: Rect,
        radius: float,
        split: str | None = None,
        extra: list[tuple[np.ndarray, float]] | None = None,
        tries: int = 200,
    ) -> np.ndarray:
        """A free point of `rect` for a disc of `radius`. With `split`, only points of that split's
        region (see `splits.in_split_region`). `extra` lists discs, as offsets from the point, that
        must be free too (a path the task will sweep). Raises `LayoutError` when nothing fits."""
        offsets = np.array([[0.0, 0.0], *(off for off, _ in extra or [])])
        radii = np.array([radius, *(r for _, r in extra or [])])
        for _ in range(tries):
            xy = sample_point(rng, rect, split)
            if self.free(xy + offsets, radii):
                return xy
        raise LayoutError(f"no free spot in {rect} for radius {radius}")


def sample_point(rng: np.random.Generator, rect: Rect, split: str | None = None) -> np.ndarray:
    """A uniform point of `rect`; with `split`, of that split's region of `rect` only."""
    box = splits.held_out_rect(rect) if split == "unseen" else rect
    while True:
        xy = np.array([rng.uniform(box[0], box[1]), rng.uniform(box[2], box[3])])
        if split is None or splits.in_split_region(xy, rect, split):
            return xy


def furniture_keepout(cabinet_xy: np.ndarray, button_xy: np.ndarray) -> list[Rect]:
    """What the drawer (opened fully, with the hand on its handle) and the button with its lamp cover."""
    cx, cy = cabinet_xy
    bx, by = button_xy
    return [(cx - 0.13, cx + 0.13, cy - 0.27, cy + 0.1), (bx - 0.07, bx + 0.14, by - 0.07, by + 0.07)]


def path(direction: np.ndarray, start: float, stop: float, radius: float, spacing: float = 0.03) -> list:
    """Discs of `radius` every `spacing` m along `direction`, from `start` to `stop` m off an object."""
    direction = np.asarray(direction, dtype=float)
    n = max(1, int(np.ceil((stop - start) / spacing)))
    return [(direction * d, radius) for d in np.linspace(start, stop, n + 1)]


def _discs_hit_rect(points: np.ndarray, radii: np.ndarray, rect: Rect) -> np.ndarray:
    nearest = np.clip(points, [rect[0], rect[2]], [rect[1], rect[3]])
    return np.linalg.norm(points - nearest, axis=-1) < radii
