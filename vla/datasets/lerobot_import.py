"""`vla data import-lerobot`: a LeRobotDataset (v3.0, v2.1, v2.0) folder into a zarr trajectory store.

Features map to vla keys (`vla.keys`), names kept where LeRobot's already are vla's:

    video / image feature `observation.images.<cam>`  ->  observation.images.<cam>  (uint8 (S, S, 3))
    video / image feature `observation.<name>` or other ->  observation.images.<name>  (`.` -> `_`)
    observation.state (1-d numbers)                   ->  observation.state  float32
    action (1-d numbers)                              ->  action  float32 (a store without one is a video store)
    next.success                                      ->  the episode's success (any frame true)
    next.reward, next.done                            ->  dropped (vla keeps no rewards), said in the summary
    timestamp, frame_index, episode_index, index, task_index: read, not stored

Anything else is refused, naming the feature, unless `--skip-feature NAME` leaves it out. The task of an
episode's first frame is its instruction and its task; frames are decoded by their timestamps
(`vla.datasets.lerobot_video.decode_at`), center-cropped to a square and resized to `--image-size` as the
other importers do (`vla.datasets.importers.square_resize`). An export by `vla data export-lerobot`
carries vla's own specs, store attributes and per-episode task, success, seed and source (info.json's
`vla` entry, the episodes' `vla/*` columns): importing it gives back the same store.

Everything that can be checked before writing is (every feature, file, task and video length), and a
failure after the store is created removes it: an import leaves a whole store or none.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla import keys
from vla.datasets.lerobot_format import BOOKKEEPING, Episode, FrameTables, Layout, read_layout
from vla.datasets.lerobot_video import decode_at, video_end
from vla.datasets.store import StoreError, TrajectoryStore
from vla.errors import UserError
from vla.options import check_value

log = logging.getLogger(__name__)

DROPPED = ("next.reward", "next.done")  # LeRobot's RL columns: vla keeps no rewards
SUCCESS = "next.success"
NUMBER = re.compile(r"^(float|int|uint)(8|16|32|64)$|^bool$")


@dataclass
class Mapping:
    """Which LeRobot feature becomes which vla key."""

    cameras: dict[str, str] = field(default_factory=dict)  # LeRobot key -> vla image key
    state: str | None = None
    action: str | None = None
    success: str | None = None
    dropped: list[str] = field(default_factory=list)


def map_features(features: dict[str, dict], skip: tuple[str, ...] = ()) -> Mapping:
    """The mapping of LeRobot `features` (info.json) to vla keys; a `UserError` names every feature that has none."""
    m, bad = Mapping(), []
    unknown_skips = [s for s in skip if s not in features]
    if unknown_skips:
        raise UserError(f"--skip-feature {unknown_skips[0]!r} is no feature of the dataset; features: "
                        f"{', '.join(features)}")  # fmt: skip
    for key, ft in features.items():
        dtype, shape = ft.get("dtype"), list(ft.get("shape") or [])
        if key in BOOKKEEPING:
            continue
        if key in skip or key in DROPPED:
            m.dropped.append(key)
        elif dtype in ("video", "image"):
            camera = key.removeprefix(keys.OBS_IMAGES + ".").removeprefix("observation.")
            image_key = keys.image_key(re.sub(r"[^A-Za-z0-9_-]", "_", camera))
            if image_key in m.cameras.values():
                raise UserError(f"features {key!r} and another both map to {image_key}; --skip-feature one of them")
            m.cameras[key] = image_key
        elif key == SUCCESS:
            m.success = key
        elif key in (keys.OBS_STATE, keys.ACTION) and NUMBER.match(str(dtype)) and len(shape) == 1:
            setattr(m, "state" if key == keys.OBS_STATE else "action", key)
        else:
            bad.append(f"{key} ({dtype} {shape})")
    if bad:
        raise UserError(
            f"cannot map feature {', '.join(bad)} to a vla key (observation.images.<camera>, "
            "observation.state, action: 1-d numbers); pass --skip-feature NAME to leave it out"
        )
    if not m.cameras and m.action is None:
        raise UserError("the dataset has neither a camera (video/image feature) nor an action: nothing to import")
    return m


def _specs(layout: Layout, m: Mapping, image_size: int) -> tuple[dict[str, keys.Spec], str]:
    """The store schema and kind: specs from the export's `vla` entry where it has them, else described here."""
    saved = {k: keys.Spec.from_json(v) for k, v in (layout.info.get("vla") or {}).get("specs", {}).items()}
    specs = {}
    for key, image_key in m.cameras.items():
        described = saved[image_key].description if image_key in saved else f"LeRobot {key}"
        specs[image_key] = keys.image_spec(keys.camera_of(image_key), image_size, described)
    kind = "robot" if m.action else "video"
    for key in (m.state, m.action) if kind == "robot" else ():
        if key is None:
            continue
        dim, names = int(layout.features[key]["shape"][0]), layout.features[key].get("names")
        described = f"LeRobot {key}" + (f": {', '.join(map(str, _flat(names)))}" if names else "")
        spec = saved.get(key)
        if spec is None or spec.shape != (dim,):
            make = keys.state_spec if key == keys.OBS_STATE else lambda d, n: keys.Spec(
                "float32", (n,), "as recorded (LeRobot)", d)  # fmt: skip
            spec = make(described, dim)
        specs[key] = spec
    return specs, kind


def _flat(names) -> list:
    """info.json `names`: a list, or a dict of lists ({"motors": [...]}) in older datasets."""
    return [n for v in names.values() for n in v] if isinstance(names, dict) else list(names)


def _check_videos(layout: Layout, m: Mapping, tables: FrameTables) -> None:
    """Every video an episode needs exists and lasts past the episode's last timestamp (LeRobot keeps
    episodes back to back in one file from `from_timestamp` on)."""
    ends: dict[Path, float] = {}
    for ep in layout.episodes:
        last = float(tables.episode(ep)["timestamp"][-1])
        for key in m.cameras:
            if layout.features[key]["dtype"] != "video":
                continue
            path, start = ep.videos[key]
            if path not in ends:
                if not path.is_file():
                    raise UserError(f"no video {path} (episode {ep.index}, {key})")
                ends[path] = video_end(path)
            if start + last > ends[path] - 0.5 / layout.fps:
                raise UserError(f"video {path} ends at {ends[path]:.4f} s, before the last frame of episode "
                                f"{ep.index} ({key} at {start + last:.4f} s): shorter than its timestamps")  # fmt: skip


def _frames(layout: Layout, ep: Episode, key: str, rows: dict, size: int) -> np.ndarray:
    """(T, size, size, 3) uint8 frames of camera `key` for the episode's rows."""
    from vla.datasets.importers import square_resize

    def convert(image) -> np.ndarray:
        if image.size == (size, size) and image.mode == "RGB":
            return np.asarray(image, dtype=np.uint8)
        return square_resize(image, size)

    if layout.features[key]["dtype"] == "video":
        path, start = ep.videos[key]
        times = start + np.asarray(rows["timestamp"], np.float64)
        return np.stack(decode_at(path, times, layout.fps, lambda f: convert(f.to_image())))
    from io import BytesIO

    from PIL import Image

    out = []
    for cell in rows[key]:  # LeRobot's image feature: {"bytes": PNG, "path": ...}
        source = BytesIO(cell["bytes"]) if cell.get("bytes") else layout.root / cell["path"]
        with Image.open(source) as image:
            out.append(convert(image.convert("RGB")))
    return np.stack(out)


def _episode_meta(layout: Layout, ep: Episode, rows: dict, m: Mapping, kind: str) -> dict:
    task_index = int(rows["task_index"][0])
    if task_index not in layout.tasks:
        raise UserError(f"{ep.data_file}: episode {ep.index} has task_index {task_index}, which meta/tasks lacks")
    instruction = layout.tasks[task_index]
    saved = ep.extra
    success = bool(np.any(rows[m.success])) if m.success else True
    return {"instruction": instruction, "task": saved.get("vla/task") or instruction,
            "success": bool(saved.get("vla/success", success)), "seed": int(saved.get("vla/seed", ep.index)),
            "source": saved.get("vla/source") or ("teleop" if kind == "robot" else "video")}  # fmt: skip


@dataclass
class LeRobotImport:
    out: str
    version: str
    episodes: int
    frames: int
    keys: list[str]
    dropped: list[str]

    def summary(self) -> str:
        dropped = f"; dropped {', '.join(self.dropped)}" if self.dropped else ""
        return (f"imported {self.episodes} episodes ({self.frames} frames) of a LeRobot {self.version} dataset: "
                f"{', '.join(self.keys)}{dropped}; store {self.out}")  # fmt: skip


def import_lerobot(src: str | Path, out: str, *, image_size: int = keys.IMAGE_SIZE, skip: tuple[str, ...] = (),
                   progress: bool = True) -> LeRobotImport:  # fmt: skip
    """Import the LeRobot dataset at `src` into a new store `out` (see the module docstring)."""
    from tqdm import tqdm

    check_value("--image-size", image_size, **keys.STORE_IMAGE_SIZES)
    if TrajectoryStore.exists(out):
        raise StoreError(f"{out} already exists; choose another path")
    layout = read_layout(src)
    m = map_features(layout.features, tuple(skip))
    specs, kind = _specs(layout, m, image_size)
    columns = ["timestamp", "task_index", *[k for k in (m.state, m.action, m.success) if k]]
    columns += [k for k in m.cameras if layout.features[k]["dtype"] == "image"]
    tables = FrameTables(columns)
    _check_videos(layout, m, tables)
    saved = layout.info.get("vla") or {}
    attrs = {**saved.get("attrs", {}), "import": {"source": str(src), "format": f"LeRobot {layout.version}",
             "robot_type": layout.info.get("robot_type"), "cameras": dict(m.cameras),
             "names": {k: layout.features[k].get("names") for k in (m.state, m.action) if k in specs}}}  # fmt: skip
    store = TrajectoryStore.create(out, specs, fps=layout.fps, kind=kind, extra_attrs=attrs)
    frames = 0
    try:
        for ep in tqdm(layout.episodes, unit="episode", disable=not progress, desc="import"):
            rows = tables.episode(ep)
            data = {image_key: _frames(layout, ep, key, rows, image_size) for key, image_key in m.cameras.items()}
            data.update({k: np.asarray(rows[k], np.float32) for k in (m.state, m.action) if k and k in specs})
            store.add_episode(data, **_episode_meta(layout, ep, rows, m, kind))
            frames += ep.length
    except BaseException:
        store.close()
        _remove(out)
        raise
    store.close()
    return LeRobotImport(out, layout.version, len(layout.episodes), frames, list(specs), m.dropped)


def _remove(path: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)
        log.info("removed %s: the import failed", path)
