"""`vla data export-lerobot`: a zarr trajectory store as a LeRobotDataset v3.0 folder that LeRobot 0.4.4's
`LeRobotDataset(repo_id, root=PATH, delta_timestamps=..., video_backend="pyav")` loads, stats included.

The layout is LeRobot's (see `vla.datasets.lerobot_format`): one data file, one episodes file and, per
camera, one video with the episodes back to back (`videos/observation.images.<cam>/chunk-000/file-000.mp4`,
episode e's frame k at (start_e + k) / fps), all in chunk 000. Each episode's instruction is its task in
meta/tasks.parquet; frames carry `timestamp` = k / fps within the episode. Statistics (meta/stats.json and
each episode's `stats/<key>/<stat>` columns) are LeRobot's: min, max, mean, std, count, q01-q99, images per
channel in [0, 1]; the dataset's are aggregated from the episodes' as LeRobot does.

What LeRobot has no place for travels with it so that `vla data import-lerobot` restores the store:
info.json's `vla` entry (the specs with units and descriptions, the store's attributes) and the episodes'
`vla/task`, `vla/success`, `vla/seed`, `vla/source` columns (LeRobot ignores both).

The dataset is built under `<out>.<hex>.partial` and renamed into place: a failed or killed export
leaves no half-written dataset.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla import keys
from vla.datasets import lerobot_format as fmt
from vla.datasets.lerobot_video import CODECS, DEFAULT_CODEC, DEFAULT_CRF, VideoWriter, stream_info
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError, choice_error

STORE_ATTRS = ("format", "version", "kind", "fps", "specs", "import")  # not carried in info.json's `vla` entry


@dataclass
class LeRobotExport:
    out: str
    episodes: int
    frames: int
    tasks: int
    codec: str

    def summary(self) -> str:
        return (f"exported {self.episodes} episodes ({self.frames} frames, {self.tasks} tasks) as a LeRobot "
                f"{fmt.CODEBASE_VERSION} dataset, video codec {self.codec}: {self.out}")  # fmt: skip


def _fps(store: TrajectoryStore) -> int:
    fps = store.fps
    if fps <= 0 or abs(fps - round(fps)) > 1e-9:
        raise UserError(f"{store.path} has fps {fps:g}; a LeRobot dataset needs a whole number of frames per second")
    return int(round(fps))


def _features(store: TrajectoryStore) -> dict[str, dict]:
    """info.json's features (video `info` is added once the videos are written)."""
    names = (store.attrs.get("import") or {}).get("names") or {}
    features = {}
    for key, spec in store.specs.items():
        if keys.is_image_key(key):
            features[key] = {"dtype": "video", "shape": list(spec.shape), "names": ["height", "width", "channels"]}
        else:
            features[key] = {"dtype": "float32", "shape": list(spec.shape), "names": names.get(key)}
    features.update({k: {"dtype": d, "shape": [1], "names": None} for k, d in fmt.BOOKKEEPING.items()})
    return features


class _Episodes:
    """The rows of data/ and meta/episodes/, and the per-episode stats, as they accumulate."""

    def __init__(self, store: TrajectoryStore, fps: int):
        self.store, self.fps = store, fps
        self.data: dict[str, list[np.ndarray]] = {}
        self.rows: list[dict] = []
        self.stats: list[dict[str, dict]] = []
        self.tasks: dict[str, int] = {}
        self.frames = 0

    def add(self, i: int, episode: dict[str, np.ndarray]) -> None:
        meta = self.store.episode_meta(i)
        n = len(next(iter(episode.values())))
        task_index = self.tasks.setdefault(meta[keys.INSTRUCTION], len(self.tasks))
        columns = {k: v for k, v in episode.items() if not keys.is_image_key(k)}
        columns.update({"timestamp": (np.arange(n) / self.fps).astype(np.float32), "frame_index": np.arange(n),
                        "episode_index": np.full(n, i), "index": self.frames + np.arange(n),
                        "task_index": np.full(n, task_index)})  # fmt: skip
        for k, v in columns.items():
            self.data.setdefault(k, []).append(v)
        stats = {k: fmt.feature_stats(v) for k, v in columns.items()}
        stats.update({k: fmt.feature_stats(v, image=True) for k, v in episode.items() if keys.is_image_key(k)})
        self.stats.append(stats)
        row = {"episode_index": i, "tasks": [meta[keys.INSTRUCTION]], "length": n, "data/chunk_index": 0,
               "data/file_index": 0, "dataset_from_index": self.frames,
               "dataset_to_index": self.frames + n}  # fmt: skip
        for key in (k for k in episode if keys.is_image_key(k)):
            row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": self.frames / self.fps,
                        f"videos/{key}/to_timestamp": (self.frames + n) / self.fps})  # fmt: skip
        row.update({f"stats/{k}/{s}": v for k, st in stats.items() for s, v in st.items()})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "vla/task": meta[keys.TASK],
                    "vla/success": bool(meta[keys.SUCCESS]), "vla/seed": int(meta[keys.SEED]),
                    "vla/source": meta[keys.SOURCE]})  # fmt: skip
        self.rows.append(row)
        self.frames += n

    def write(self, root: Path) -> dict[str, dict]:
        """data/, meta/episodes/, meta/tasks.parquet and meta/stats.json; returns the dataset's stats."""
        fmt.write_parquet({k: np.concatenate(v) for k, v in self.data.items()},
                          root / fmt.DATA_PATH.format(chunk_index=0, file_index=0))  # fmt: skip
        columns = {k: [row[k] for row in self.rows] for k in self.rows[0]}
        fmt.write_parquet(columns, root / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0))
        fmt.write_parquet({"__index_level_0__": list(self.tasks), "task_index": list(self.tasks.values())},
                          root / fmt.TASKS_PATH, pandas_index="__index_level_0__")  # fmt: skip
        stats = {k: fmt.aggregate_stats([s[k] for s in self.stats]) for k in self.stats[0]}
        fmt.write_json(stats, root / fmt.STATS_PATH)
        return stats


def _info(store: TrajectoryStore, fps: int, features: dict, episodes: _Episodes) -> dict:
    attrs = store.attrs
    robot_type = (attrs.get("import") or {}).get("robot_type") or (attrs.get("collect") or {}).get("suite")
    n = len(episodes.rows)
    return {"codebase_version": fmt.CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": n,
            "total_frames": episodes.frames, "total_tasks": len(episodes.tasks), "chunks_size": fmt.CHUNKS_SIZE,
            "data_files_size_in_mb": fmt.DATA_FILES_MB, "video_files_size_in_mb": fmt.VIDEO_FILES_MB, "fps": fps,
            "splits": {"train": f"0:{n}"}, "data_path": fmt.DATA_PATH,
            "video_path": fmt.VIDEO_PATH if any(keys.is_image_key(k) for k in store.specs) else None,
            "features": features,
            "vla": {"kind": store.kind, "specs": {k: s.to_json() for k, s in store.specs.items()},
                    "attrs": {k: v for k, v in attrs.items() if k not in STORE_ATTRS}}}  # fmt: skip


def _build(store: TrajectoryStore, root: Path, codec: str, crf: int, progress: bool) -> _Episodes:
    from tqdm import tqdm

    fps = _fps(store)
    features = _features(store)
    cameras = [k for k in store.specs if keys.is_image_key(k)]
    path = {k: root / fmt.VIDEO_PATH.format(video_key=k, chunk_index=0, file_index=0) for k in cameras}
    writers = {k: VideoWriter(path[k], fps, codec, crf) for k in cameras}
    episodes = _Episodes(store, fps)
    try:
        for i in tqdm(range(store.num_episodes), unit="episode", disable=not progress, desc="export"):
            episode = store.episode(i)
            for k in cameras:
                writers[k].add(episode[k])
            episodes.add(i, episode)
    finally:
        for w in writers.values():
            w.close()
    for k in cameras:
        features[k]["info"] = stream_info(path[k])
    episodes.write(root)
    fmt.write_json(_info(store, fps, features, episodes), root / fmt.INFO_PATH)
    return episodes


def export_lerobot(src: str, out: str | Path, *, codec: str = DEFAULT_CODEC, crf: int = DEFAULT_CRF,
                   progress: bool = True) -> LeRobotExport:  # fmt: skip
    """Write the store `src` as a LeRobot v3.0 dataset at the new folder `out` (see the module docstring)."""
    if codec not in CODECS:
        raise choice_error("--codec", codec, CODECS)
    if not 0 <= crf <= 63:
        raise UserError(f"--crf must be in [0, 63], got {crf}")
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose another path")
    with TrajectoryStore.open(src) as store:
        if store.kind == "image-text":
            raise UserError(f"{src} is an image-text store (no time axis); export robot or video stores")
        if store.num_episodes == 0:
            raise UserError(f"{src} holds no episode")
        _fps(store)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            episodes = _build(store, tmp, codec, crf, progress)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return LeRobotExport(str(out), len(episodes.rows), episodes.frames, len(episodes.tasks), codec)
