"""The zarr v3 trajectory store (DESIGN section 3).

    <name>.zarr/
      attrs: format "vla-trajectories", version, kind, fps, specs {key: {dtype, shape, units, description}}
      data/<key>          all episodes concatenated along time, chunked along time, compressed
      meta/episode_ends   int64 cumulative end index per episode: the commit record
      meta/<field>        per-episode instruction, task, success, seed, source

An episode becomes visible only when `meta/episode_ends` is extended, after its data and metadata are
written. Each zarr file write is atomic (temp file + rename), so a writer killed at any instant leaves
a store whose committed prefix reads back; the uncommitted tail is ignored by readers and trimmed by
the next writer.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr

from vla import keys
from vla.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "vla-trajectories"
VERSION = 1
KINDS = ("robot", "video", "image-text")
TIME_CHUNK_BYTES = 1 << 19  # ~512 KiB of raw data per chunk: small enough for fast random windows


# zarr skips chunks equal to the fill value by default; writing them all lets `vla data check` tell a
# deleted chunk file from a chunk of zeros.
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}


class StoreError(UserError):
    """A store that is missing, corrupt, of another format or schema, or locked by another writer."""


def _time_chunk(spec: keys.Spec) -> int:
    step_bytes = np.dtype(spec.dtype).itemsize * int(np.prod(spec.shape, dtype=np.int64))
    return int(np.clip(TIME_CHUNK_BYTES // max(step_bytes, 1), 16, 4096))


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


class TrajectoryStore:
    """Episodes of per-step arrays in raw units. Create with `create`, open with `open`.

    Reading: `num_episodes`, `num_steps`, `episode(i)`, `episode_slice(i)`, `meta(field)`, `array(key)`.
    Writing (mode "a" or a fresh store): `add_episode(data, **meta)`.
    """

    def __init__(self, group: zarr.Group, path: str, writable: bool):
        self.group = group
        self.path = path
        self.writable = writable
        self._lock_fd: int | None = None
        self._validate_format()
        self.specs = {k: keys.Spec.from_json(v) for k, v in group.attrs["specs"].items()}
        self._ends = self._committed_ends()
        if writable:
            self._acquire_lock()
            self._trim_uncommitted()

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        specs: Mapping[str, keys.Spec],
        *,
        fps: float,
        kind: str = "robot",
        extra_attrs: Mapping | None = None,
    ) -> TrajectoryStore:
        """Create an empty store; refuses an existing path."""
        path = str(path)
        if kind not in KINDS:
            raise UserError(f"unknown store kind {kind!r}; valid: {', '.join(KINDS)}")
        if cls.exists(path):
            raise StoreError(f"{path} already exists; pass --append to add to it, or choose another path")
        group = zarr.open_group(path, mode="w-")
        group.attrs.update(
            {
                "format": FORMAT,
                "version": VERSION,
                "kind": kind,
                "fps": float(fps),
                "specs": {k: s.to_json() for k, s in specs.items()},
                **(extra_attrs or {}),
            }
        )
        data, meta = group.create_group("data"), group.create_group("meta")
        for key, spec in specs.items():
            data.create_array(
                key,
                shape=(0, *spec.shape),
                chunks=(_time_chunk(spec), *spec.shape),
                dtype=spec.dtype,
                config=WRITE_ALL_CHUNKS,
            )
        meta.create_array(keys.EPISODE_ENDS, shape=(0,), chunks=(4096,), dtype="int64", config=WRITE_ALL_CHUNKS)
        for field, dtype in keys.META_DTYPES.items():
            dtype = str if dtype == "str" else dtype
            meta.create_array(field, shape=(0,), chunks=(4096,), dtype=dtype, config=WRITE_ALL_CHUNKS)
        return cls(group, path, writable=True)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether anything (a store or not) is at `path`."""
        path = str(path)
        if _is_local(path):
            return Path(path.removeprefix("file://")).exists()
        try:
            zarr.open_group(path, mode="r")
            return True
        except Exception:
            return False

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> TrajectoryStore:
        """Open an existing store for reading ("r") or appending ("a")."""
        path = str(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if _is_local(path) and not Path(path.removeprefix("file://")).exists():
            raise StoreError(f"no store at {path}")
        try:
            group = zarr.open_group(path, mode="r" if mode == "r" else "r+")
        except Exception as e:  # zarr raises several types for a non-store directory
            raise StoreError(f"{path} is not a readable zarr store: {e}") from e
        return cls(group, path, writable=mode == "a")

    def _validate_format(self) -> None:
        attrs = self.group.attrs
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a vla trajectory store (format {attrs.get('format')!r})")
        if attrs.get("version") != VERSION:
            raise StoreError(f"{self.path} has store version {attrs.get('version')}; this vla reads {VERSION}")
        for name in ("data", "meta"):
            if name not in self.group:
                raise StoreError(f"{self.path} is corrupt: missing group {name!r}")
        missing = [k for k in attrs["specs"] if k not in self.group["data"]]
        missing += [f for f in (keys.EPISODE_ENDS, *keys.META_FIELDS) if f not in self.group["meta"]]
        if missing:
            raise StoreError(f"{self.path} is corrupt: missing arrays {', '.join(missing)}")

    # --- the commit record ------------------------------------------------------------------------
    def _committed_ends(self) -> np.ndarray:
        """The committed episode ends, after checking they are backed by data and metadata.

        A writer killed between resizing `episode_ends` and writing its new value leaves exactly one
        trailing fill value (0): that entry is not committed. Anything else that disagrees is corruption.
        """
        try:
            ends = np.asarray(self.group["meta"][keys.EPISODE_ENDS][:], dtype=np.int64)
        except Exception as e:
            raise StoreError(f"{self.path} is corrupt: cannot read meta/episode_ends: {e}") from e
        if len(ends) and ends[-1] == 0:
            ends = ends[:-1]
        if np.any(np.diff(np.concatenate([[0], ends])) <= 0):
            raise StoreError(f"{self.path} is corrupt: meta/episode_ends is not strictly increasing")
        steps = int(ends[-1]) if len(ends) else 0
        for key in self.specs:
            have = self.group["data"][key].shape[0]
            if have < steps:
                raise StoreError(
                    f"{self.path} is truncated: episode_ends claims {steps} steps, data/{key} holds {have}"
                )
        for field in keys.META_FIELDS:
            have = self.group["meta"][field].shape[0]
            if have < len(ends):
                raise StoreError(f"{self.path} is truncated: {len(ends)} episodes committed, meta/{field} holds {have}")
        return ends

    def refresh(self) -> None:
        """Re-read the commit record (another process may have appended)."""
        self._ends = self._committed_ends()

    # --- reading ----------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def kind(self) -> str:
        return self.group.attrs["kind"]

    @property
    def fps(self) -> float:
        return float(self.group.attrs["fps"])

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends

    @property
    def num_episodes(self) -> int:
        return len(self._ends)

    @property
    def num_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64)

    def episode_slice(self, i: int) -> slice:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range; the store has {self.num_episodes} episodes")
        return slice(int(self.episode_starts[i]), int(self._ends[i]))

    def array(self, key: str) -> zarr.Array:
        if key not in self.specs:
            raise KeyError(f"no key {key!r} in {self.path}; keys: {', '.join(self.specs)}")
        return self.group["data"][key]

    def read(self, key: str, lo: int, hi: int) -> np.ndarray:
        """Steps lo..hi-1 of `key` across episodes, raising a clear error on an unreadable chunk."""
        try:
            return self.array(key)[lo:hi]
        except KeyError:
            raise
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read data/{key}[{lo}:{hi}] ({e}); run `vla data check`") from e

    def episode(self, i: int, keys_: list[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of episode i: {key: (T, *shape) array} in raw units."""
        sl = self.episode_slice(i)
        return {k: self.read(k, sl.start, sl.stop) for k in (keys_ or self.specs)}

    def meta(self, field: str) -> np.ndarray:
        """Per-episode metadata for the committed episodes."""
        if field not in keys.META_FIELDS:
            raise KeyError(f"unknown meta field {field!r}; valid: {', '.join(keys.META_FIELDS)}")
        return np.asarray(self.group["meta"][field][: self.num_episodes])

    def episode_meta(self, i: int) -> dict:
        return {f: self.group["meta"][f][i].item() for f in keys.META_FIELDS}

    # --- writing ----------------------------------------------------------------------------------
    def add_episode(
        self,
        data: Mapping[str, np.ndarray],
        *,
        instruction: str,
        task: str,
        success: bool,
        seed: int,
        source: str,
    ) -> int:
        """Append one episode ({key: (T, *shape)} for every key of the schema) and commit it; returns its index."""
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to append")
        length = self._check_episode(data, source)
        start = self.num_steps
        for key, spec in self.specs.items():
            arr = self._for_writing("data", key)
            arr.resize((start + length, *spec.shape))
            arr[start:] = np.asarray(data[key], dtype=spec.dtype)
        n = self.num_episodes
        values = {
            keys.INSTRUCTION: instruction,
            keys.TASK: task,
            keys.SUCCESS: bool(success),
            keys.SEED: int(seed),
            keys.SOURCE: source,
        }
        for field, value in values.items():
            arr = self._for_writing("meta", field)
            arr.resize((n + 1,))
            arr[n] = value
        # The commit: only now does the episode become visible to readers.
        ends = self._for_writing("meta", keys.EPISODE_ENDS)
        ends.resize((n + 1,))
        ends[n] = start + length
        self._ends = np.append(self._ends, start + length)
        return n

    def _for_writing(self, group: str, name: str) -> zarr.Array:
        # The chunk config is not persisted in the store, so set it on every array a writer touches.
        return self.group[group][name].with_config(WRITE_ALL_CHUNKS)

    def _check_episode(self, data: Mapping[str, np.ndarray], source: str) -> int:
        if source not in keys.SOURCES:
            raise UserError(f"unknown source {source!r}; valid: {', '.join(keys.SOURCES)}")
        if set(data) != set(self.specs):
            raise StoreError(
                f"episode keys {sorted(data)} do not match the store schema {sorted(self.specs)} of {self.path}"
            )
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise UserError(f"episode arrays must share one non-zero length; got {lengths}")
        for key, spec in self.specs.items():
            if tuple(np.shape(data[key])[1:]) != spec.shape:
                raise StoreError(f"{key} has per-step shape {np.shape(data[key])[1:]}, the store expects {spec.shape}")
        return next(iter(lengths.values()))

    def _trim_uncommitted(self) -> None:
        """Drop what a killed writer left past the commit record, so appends start clean."""
        n, steps = self.num_episodes, self.num_steps
        for key, spec in self.specs.items():
            if self.group["data"][key].shape[0] != steps:
                self.group["data"][key].resize((steps, *spec.shape))
        for field in (keys.EPISODE_ENDS, *keys.META_FIELDS):
            if self.group["meta"][field].shape[0] != n:
                log.warning("trimming an uncommitted tail of meta/%s in %s", field, self.path)
                self.group["meta"][field].resize((n,))

    # --- one writer at a time ---------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        """An advisory lock the OS releases when the writer dies, so a killed writer never blocks the next."""
        if not _is_local(self.path):
            log.warning("no writer lock on remote store %s: make sure only one process appends", self.path)
            return
        # Lock the store directory itself: a lock file inside would show up as a stray zarr node.
        fd = os.open(self.path.removeprefix("file://"), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path} is being written by another process; one writer at a time") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def close_or_remove(self, created: bool) -> None:
        """Close the store; one that was `created` by this writer and holds no episode is deleted, so a
        command that kept nothing (bad luck, Ctrl-C) leaves no empty store behind."""
        self.close()
        if not created or self.num_episodes:
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.path)
        if fs.exists(root):  # (a second call finds it gone)
            fs.rm(root, recursive=True)
            log.info("removed %s: no episode was kept", self.path)

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrajectoryStore({self.path!r}, kind={self.kind}, episodes={self.num_episodes}, steps={self.num_steps})"
