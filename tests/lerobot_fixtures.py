"""Tiny LeRobot datasets written here in LeRobot's own layout (v3.0 and v2.1, after LeRobot 0.4.4's
`lerobot_dataset.py` and `convert_dataset_v21_to_v30.py`), with pyarrow and PyAV and without vla's writer,
so that importing them tests vla's reader against the layout rather than against itself."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
CAMERA = "observation.images.top"
LENGTHS = (4, 6)  # two episodes
TASKS = ("pick up the cube", "open the drawer")


def frame(e: int, k: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Episode e's frame k: a smooth image whose level encodes (e, k), so a codec keeps it close."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 40 + 60 * e
    image[..., 1] = 20 + 20 * k
    image[..., 2] = np.linspace(0, 120, width, dtype=np.uint8)[None, :]
    return image


def state(e: int, n: int) -> np.ndarray:
    return np.stack([np.full(n, e), np.arange(n), np.arange(n) * 0.25], 1).astype(np.float64)


def action(e: int, n: int) -> np.ndarray:
    return np.stack([np.arange(n) * 0.01 - e, np.full(n, 0.5)], 1).astype(np.float32)


def encode(path: Path, frames: list[np.ndarray], lossless: bool) -> None:
    """An MP4 at FPS, frame i at i / FPS: lossless H.264 RGB, or LeRobot's AV1 (libsvtav1, yuv420p)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's banner off (it reads the level once per process)
    with av.open(str(path), "w") as container:
        if lossless:
            stream = container.add_stream("libx264rgb", rate=FPS, options={"qp": "0", "g": "2"})
            stream.pix_fmt = "rgb24"
        else:
            stream = container.add_stream("libsvtav1", rate=FPS, options={"crf": "30", "g": "2", "preset": "12"})
            stream.pix_fmt = "yuv420p"
        stream.height, stream.width = frames[0].shape[:2]
        for i, image in enumerate(frames):
            f = av.VideoFrame.from_ndarray(image, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(f))
        container.mux(stream.encode())


def features(height: int, width: int, extra: dict | None = None) -> dict:
    f = {
        CAMERA: {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float64", "shape": [3], "names": ["x", "y", "z"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["vx", "grip"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    }
    f.update(extra or {})
    for key, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")):  # fmt: skip
        f[key] = {"dtype": dtype, "shape": [1], "names": None}
    return f


def frames_table(e: int, n: int, start: int, extra_columns: dict | None = None) -> pa.Table:
    columns = {
        "observation.state": pa.array(state(e, n).tolist(), pa.list_(pa.float64(), 3)),
        "action": pa.array(action(e, n).tolist(), pa.list_(pa.float32(), 2)),
        "next.reward": pa.array(np.zeros(n, np.float32)),
        "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
        "frame_index": pa.array(np.arange(n)),
        "episode_index": pa.array(np.full(n, e)),
        "index": pa.array(start + np.arange(n)),
        "task_index": pa.array(np.full(n, e % len(TASKS))),
    }
    columns.update(extra_columns or {})
    return pa.table(columns)


def info(version: str, height: int, width: int, extra_features: dict | None = None) -> dict:
    d = {"codebase_version": version, "robot_type": "toy", "total_episodes": len(LENGTHS),
         "total_frames": sum(LENGTHS), "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS,
         "splits": {"train": "0:2"}, "features": features(height, width, extra_features)}  # fmt: skip
    if version == "v3.0":
        d["data_path"] = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        d["video_path"] = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    else:
        d["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        d["video_path"] = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        d["total_chunks"], d["total_videos"] = 1, len(LENGTHS)
    return d


def write_v30(root: Path, height: int = 32, width: int = 32, video_frames: int | None = None,
              extra_features: dict | None = None, extra_columns=None) -> Path:  # fmt: skip
    """A v3.0 dataset: one data file, one lossless video with both episodes back to back, tasks.parquet
    with the task as a pandas index (as `pandas.DataFrame.to_parquet` writes it). `video_frames` cuts the video."""
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info("v3.0", height, width, extra_features)))
    tasks = pa.table({"task_index": pa.array(range(len(TASKS))), "__index_level_0__": pa.array(TASKS)})
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
         "metadata": None}]}  # fmt: skip
    pq.write_table(
        tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), root / "meta/tasks.parquet"
    )
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    tables = [
        frames_table(e, n, int(s), extra_columns and extra_columns(e, n))
        for e, (n, s) in enumerate(zip(LENGTHS, starts))
    ]
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / "data/chunk-000/file-000.parquet")
    frames = [frame(e, k, height, width) for e, n in enumerate(LENGTHS) for k in range(n)]
    encode(root / f"videos/{CAMERA}/chunk-000/file-000.mp4", frames[:video_frames], lossless=True)
    rows = {"episode_index": [0, 1], "tasks": [[TASKS[0]], [TASKS[1]]], "length": list(LENGTHS),
            "data/chunk_index": [0, 0], "data/file_index": [0, 0], "dataset_from_index": starts.tolist(),
            "dataset_to_index": (starts + LENGTHS).tolist(), f"videos/{CAMERA}/chunk_index": [0, 0],
            f"videos/{CAMERA}/file_index": [0, 0], f"videos/{CAMERA}/from_timestamp": (starts / FPS).tolist(),
            f"videos/{CAMERA}/to_timestamp": ((starts + LENGTHS) / FPS).tolist(),
            "meta/episodes/chunk_index": [0, 0], "meta/episodes/file_index": [0, 0]}  # fmt: skip
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    return root


def write_v21(root: Path, height: int = 32, width: int = 48) -> Path:
    """A v2.1 dataset: per-episode parquet files and AV1 videos, episodes.jsonl and tasks.jsonl."""
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info("v2.1", height, width)))
    lines = [json.dumps({"task_index": i, "task": t}) for i, t in enumerate(TASKS)]
    (root / "meta/tasks.jsonl").write_text("\n".join(lines) + "\n")
    lines = [json.dumps({"episode_index": e, "tasks": [TASKS[e]], "length": n}) for e, n in enumerate(LENGTHS)]
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    start = 0
    for e, n in enumerate(LENGTHS):
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(frames_table(e, n, start), root / f"data/chunk-000/episode_{e:06d}.parquet")
        encode(root / f"videos/chunk-000/{CAMERA}/episode_{e:06d}.mp4", [frame(e, k, height, width) for k in range(n)],
               lossless=False)  # fmt: skip
        start += n
    return root
