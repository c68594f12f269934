"""The LeRobotDataset layout on disk, read (v3.0 and v2.1) and written (v3.0), with pyarrow and PyAV only.

The reference is LeRobot's own dataset code at v0.4.4 (`lerobot/datasets/utils.py`, `lerobot_dataset.py`,
`video_utils.py`, `compute_stats.py`, `v30/convert_dataset_v21_to_v30.py`); lerobot itself is not imported.

v3.0 (`codebase_version` "v3.0"):

    meta/info.json                          fps, features {key: {dtype, shape, names, info?}}, path templates
    meta/tasks.parquet                      one row per task: the task string (a pandas index) and task_index
    meta/episodes/chunk-000/file-000.parquet  one row per episode: episode_index, tasks, length,
                                            dataset_from_index/to_index, data/chunk_index, data/file_index,
                                            videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
                                            stats/<key>/<stat>, meta/episodes/{chunk_index, file_index}
    meta/stats.json                         {key: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    data/chunk-000/file-000.parquet         one row per frame: features, timestamp, frame_index, episode_index,
                                            index, task_index
    videos/<key>/chunk-000/file-000.mp4     the episodes back to back; an episode's frame at `timestamp` is at
                                            from_timestamp + timestamp in the file

v2.1 (and v2.0): `meta/episodes.jsonl` ({episode_index, tasks, length}), `meta/tasks.jsonl`
({task_index, task}), one parquet file and one video per episode at the `data_path` / `video_path`
templates of info.json (`episode_chunk` = episode_index // chunks_size), each video starting at 0 s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla.errors import UserError

CODEBASE_VERSION = "v3.0"  # what `export` writes
READ_VERSIONS = ("v3.0", "v2.1", "v2.0")
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE, DATA_FILES_MB, VIDEO_FILES_MB = 1000, 100, 200  # LeRobot's defaults, written to info.json
# Per-frame bookkeeping columns every LeRobot dataset has (LeRobot's DEFAULT_FEATURES).
BOOKKEEPING = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
               "task_index": "int64"}  # fmt: skip
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES, stats keys q01 ... q99


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # a declared dependency; an environment installed before it was one lacks it
        raise UserError("LeRobot datasets need pyarrow: pip install pyarrow") from None
    return pq


@dataclass
class Episode:
    """One episode of a LeRobot dataset, as its metadata describes it."""

    index: int  # episode_index
    length: int  # frames
    tasks: list[str]
    data_file: Path  # the parquet file holding its frames
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # video key -> (file, from_timestamp s)
    extra: dict = field(default_factory=dict)  # the `vla/*` columns an export by vla adds (task, success, ...)


@dataclass
class Layout:
    """A LeRobot dataset folder: its info.json, tasks and episodes (frames are read per data file)."""

    root: Path
    info: dict
    version: str
    tasks: dict[int, str]  # task_index -> task
    episodes: list[Episode]

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def features(self) -> dict[str, dict]:
        return self.info["features"]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not JSON ({e})") from None


def read_layout(root: str | Path) -> Layout:
    """The metadata of the LeRobot dataset at `root`; raises `UserError` naming what is missing or unsupported."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no directory {root}" if not root.exists() else f"{root} is not a directory")
    if not (root / INFO_PATH).is_file():
        raise UserError(f"no {INFO_PATH} in {root}: not a LeRobot dataset (v3.0 or v2.1)")
    info = read_json(root / INFO_PATH)
    version = info.get("codebase_version")
    if version not in READ_VERSIONS:
        raise UserError(f"{root}: LeRobot codebase_version {version!r} is not supported; valid: "
                        f"{', '.join(READ_VERSIONS)}")  # fmt: skip
    for name in ("fps", "features"):
        if name not in info:
            raise UserError(f"{root / INFO_PATH} has no {name!r}")
    if version == "v3.0":
        tasks, episodes = _read_tasks_v3(root), _read_episodes_v3(root, info)
    else:
        tasks, episodes = _read_tasks_v2(root), _read_episodes_v2(root, info)
    if not episodes:
        raise UserError(f"{root} holds no episode")
    return Layout(root, info, version, tasks, episodes)


def _read_table(path: Path):
    if not path.is_file():
        raise UserError(f"no {path}")
    try:
        return _pq().read_table(path)
    except UserError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError... on a damaged file
        raise UserError(f"{path} is not a readable parquet file ({e})") from None


def _read_tasks_v3(root: Path) -> dict[int, str]:
    """meta/tasks.parquet: LeRobot writes a pandas frame whose index is the task string."""
    table = _read_table(root / TASKS_PATH)
    meta = table.schema.pandas_metadata or {}
    index = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    column = "task" if "task" in table.column_names else (index[0] if index else None)
    if column is None or "task_index" not in table.column_names:
        raise UserError(f"{root / TASKS_PATH} has no task and task_index columns (has {table.column_names})")
    return dict(zip(table.column("task_index").to_pylist(), table.column(column).to_pylist()))


def _read_tasks_v2(root: Path) -> dict[int, str]:
    rows = _read_jsonl(root / "meta/tasks.jsonl")
    return {int(r["task_index"]): str(r["task"]) for r in rows}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"no {path}")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON lines ({e})") from None


def video_keys(info: dict) -> list[str]:
    return [k for k, ft in info["features"].items() if ft.get("dtype") == "video"]


def _read_episodes_v3(root: Path, info: dict) -> list[Episode]:
    files = sorted((root / "meta/episodes").glob("*/*.parquet"))
    if not files:
        raise UserError(f"no meta/episodes/chunk-*/file-*.parquet in {root}")
    rows = [row for f in files for row in _read_table(f).to_pylist()]
    episodes = []
    for row in sorted(rows, key=lambda r: r["episode_index"]):
        try:
            where = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
            data = root / info["data_path"].format(**where)
            videos = {
                key: (
                    root
                    / info["video_path"].format(
                        video_key=key,
                        chunk_index=row[f"videos/{key}/chunk_index"],
                        file_index=row[f"videos/{key}/file_index"],
                    ),
                    float(row[f"videos/{key}/from_timestamp"]),
                )  # fmt: skip
                for key in video_keys(info)
            }
            extra = {k: v for k, v in row.items() if k.startswith("vla/")}
            episodes.append(
                Episode(int(row["episode_index"]), int(row["length"]), list(row["tasks"]), data, videos, extra)
            )
        except KeyError as e:
            raise UserError(f"{root}/meta/episodes: episode {row.get('episode_index')} has no {e} column") from None
    return episodes


def _read_episodes_v2(root: Path, info: dict) -> list[Episode]:
    episodes = []
    chunks = int(info.get("chunks_size", CHUNKS_SIZE))
    for row in sorted(_read_jsonl(root / "meta/episodes.jsonl"), key=lambda r: r["episode_index"]):
        i = int(row["episode_index"])
        where = {"episode_chunk": i // chunks, "episode_index": i}
        data = root / info["data_path"].format(**where)
        videos = {key: (root / info["video_path"].format(video_key=key, **where), 0.0) for key in video_keys(info)}
        episodes.append(Episode(i, int(row["length"]), list(row.get("tasks", [])), data, videos))
    return episodes


class FrameTables:
    """The per-frame rows of a layout's episodes, read one data file at a time (v3.0 files hold many)."""

    def __init__(self, columns: list[str]):
        self.columns, self._path, self._table, self._episode_col = columns, None, None, None

    def episode(self, episode: Episode) -> dict[str, np.ndarray | list]:
        """{column: values of the episode's frames, in frame order}: numeric columns as arrays, others lists."""
        if episode.data_file != self._path:
            table = _read_table(episode.data_file)
            missing = [c for c in self.columns if c not in table.column_names]
            if missing:
                raise UserError(f"{episode.data_file} has no column {missing[0]!r} (has {table.column_names})")
            self._table, self._path = table.select(self.columns), episode.data_file
            self._episode_col = table.column("episode_index").to_numpy() if "episode_index" in table.column_names \
                else None  # fmt: skip
        rows = np.arange(self._table.num_rows)
        if self._episode_col is not None:
            rows = rows[self._episode_col == episode.index]
        if len(rows) != episode.length:
            raise UserError(f"{episode.data_file}: episode {episode.index} has {len(rows)} frames, its metadata says "
                            f"{episode.length}")  # fmt: skip
        part = self._table.take(rows)
        return {c: _column_values(part.column(c)) for c in self.columns}


def _column_values(column) -> np.ndarray | list:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return np.array(column.to_pylist(), dtype=np.float64)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return column.to_numpy(zero_copy_only=False)
    return column.to_pylist()


# --- writing (v3.0) -----------------------------------------------------------------------------
def write_parquet(columns: dict[str, object], path: Path, pandas_index: str | None = None) -> None:
    """Write {column: values} (arrays of shape (N,) or (N, D), or lists) as one parquet file, snappy as LeRobot.
    `pandas_index`: that column is recorded as the frame's (unnamed) index, as pandas.to_parquet does."""
    import pyarrow as pa

    arrays = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray) and values.ndim == 2:
            flat = pa.array(values.reshape(-1), type=pa.from_numpy_dtype(values.dtype))
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            arrays[name] = pa.array(values.tolist() if isinstance(values, np.ndarray) else values)
    table = pa.table(arrays)
    if pandas_index is not None:
        table = table.replace_schema_metadata({b"pandas": json.dumps(_pandas_meta(table, pandas_index)).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    _pq().write_table(table, path, compression="snappy")


def _pandas_meta(table, index: str) -> dict:
    """The `pandas` schema metadata of a frame whose index (no name) is the column `index`: pandas then reads
    that column back as the index, as LeRobot's `load_tasks` (pd.read_parquet) expects."""
    kinds = {"string": ("unicode", "object"), "int64": ("int64", "int64")}
    columns = []
    for f in table.schema:
        pandas_type, numpy_type = kinds.get(str(f.type), ("object", "object"))
        columns.append({"name": None if f.name == index else f.name, "field_name": f.name,
                        "pandas_type": pandas_type, "numpy_type": numpy_type, "metadata": None})  # fmt: skip
    return {"index_columns": [index], "column_indexes": [], "columns": columns, "creator": {"library": "pyarrow"},
            "pandas_version": "2.2.3"}  # fmt: skip


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


def feature_stats(values: np.ndarray, image: bool = False) -> dict[str, list]:
    """LeRobot's per-feature statistics (compute_stats.get_feature_stats): min, max, mean, std, count and the
    quantiles q01..q99, per dimension of (N, D) values; for images (N, H, W, 3) uint8, per channel of the
    pixels scaled to [0, 1], each stat shaped (3, 1, 1). Exact (LeRobot approximates quantiles by histogram)."""
    if image:
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
    else:
        flat = values.reshape(len(values), -1).astype(np.float64)
    stats = {"min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0)}
    stats.update({f"q{int(round(q * 100)):02d}": np.quantile(flat, q, axis=0) for q in QUANTILES})
    out = {k: (v.reshape(-1, 1, 1) if image else v).tolist() for k, v in stats.items()}
    out["count"] = [int(len(values))]
    return out


def aggregate_stats(per_episode: list[dict[str, list]]) -> dict[str, list]:
    """One feature's dataset statistics from its per-episode ones, as LeRobot aggregates them
    (compute_stats.aggregate_feature_stats): min of mins, max of maxes, count-weighted mean, the pooled
    variance, count-weighted quantiles."""
    counts = np.array([s["count"][0] for s in per_episode], np.float64)
    total = counts.sum()
    stack = {k: np.array([s[k] for s in per_episode], np.float64) for k in per_episode[0] if k != "count"}
    w = counts.reshape(-1, *([1] * (stack["mean"].ndim - 1)))
    mean = (stack["mean"] * w).sum(0) / total
    var = ((stack["std"] ** 2 + (stack["mean"] - mean) ** 2) * w).sum(0) / total
    out = {"min": stack["min"].min(0), "max": stack["max"].max(0), "mean": mean, "std": np.sqrt(var)}
    out.update({k: (v * w).sum(0) / total for k, v in stack.items() if re.fullmatch(r"q\d\d", k)})
    return {**{k: v.tolist() for k, v in out.items()}, "count": [int(total)]}
