"""The zarr v3 trajectory store (DESIGN section 3).

    <name>.zarr/
      attrs: format "vla-trajectories", version, kind, fps, specs {key: {dtype, shape, units, description}}
      data/<key>          all episodes concatenated along time, chunked along time, compressed
      meta/episode_ends   int64 cumulative end index per episode: the commit record
      meta/<field>        per-episode instruction, task, success, seed, source

An episode becomes visible only when `meta/episode_ends` is extended, after its data and metadata are
written. Each zarr file write is atomic (temp file + rename), so a writer killed at any instant leaves
a store whose committed prefix reads back; the uncommitted tail is ignored by readers and trimmed by
the next writer, which also removes the temporary `*.partial` files a kill can leave.

Creation is atomic too: a local store is built under `<name>.<hex>.partial` and renamed into place, so
a kill leaves either no store or a whole empty one (a leftover `.partial` directory is removed by the
next `create`). An incomplete skeleton left by an older version (metadata files only, no data) counts
as absent, and `create` replaces it.

What is written must match the schema: `conform` checks each key's dtype, per-step shape and values
(a float frame in [0, 1] for a uint8 image key would store as black) before anything is written. What
is read is checked when the store opens (zarr v3, format and version, the specs against the data
contract of `vla.keys`, every array's dtype and shape against its spec, and that every chunk file of
the committed range exists, from one listing of the store), and again for the chunks each `read`
spans: zarr reads a missing chunk as its fill value, which must never pass for data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Mapping

import numpy as np
import zarr
from zarr.core.sync import sync

from vla import keys
from vla.datasets.store_files import (
    FORMAT,
    KINDS,
    PARTIAL,
    VERSION,
    WRITE_ALL_CHUNKS,
    build,
    chunk_key,
    is_local,
    is_skeleton,
    list_keys,
    local_path,
    remove_stale_partials,
)
from vla.datasets.store_schema import StoreError, conform
from vla.errors import UserError

log = logging.getLogger(__name__)


class TrajectoryStore:
    """Episodes of per-step arrays in raw units. Create with `create`, open with `open`.

    Reading: `num_episodes`, `num_steps`, `episode(i)`, `episode_slice(i)`, `meta(field)`, `array(key)`.
    Writing (mode "a" or a fresh store): `add_episode(data, **meta)`.
    """

    def __init__(self, group: zarr.Group, path: str, writable: bool, *, strict: bool = True,
                 lock_fd: int | None = None):  # fmt: skip
        """`strict` False: open despite failed content checks (`problems` lists them), for `vla data check`."""
        self.group = group
        self.path = path
        self.writable = writable
        self._lock_fd = lock_fd
        try:
            self._validate_format()
            self.specs = {k: keys.Spec.from_json(v) for k, v in group.attrs["specs"].items()}
            self.problems = self._schema_problems()
            self._ends = self._committed_ends()
            self.problems += self._missing_chunks()
            if not self.problems:  # metadata values, from the few chunks of per-episode metadata
                self.problems += self._meta_problems()
            if self.problems and strict:
                more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
                raise StoreError(f"{path} fails its checks: {self.problems[0]}{more}; run `vla data check {path}`")
            if writable:
                if self._lock_fd is None:
                    self._acquire_lock()
                self._remove_partial_files()
                self._trim_uncommitted()
        except BaseException:
            self.close()
            raise

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
        """Create an empty store, atomically; refuses an existing path (an incomplete skeleton is replaced)."""
        path = str(path)
        if kind not in KINDS:
            raise UserError(f"unknown store kind {kind!r}; valid: {', '.join(KINDS)}")
        for key, spec in specs.items():
            problem = keys.spec_problem(key, spec)
            if problem:
                raise StoreError(f"cannot create {path}: {problem}")
        if cls.exists(path):
            raise StoreError(f"{path} already exists; pass --append to add to it, or choose another path")
        attrs = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "fps": float(fps),
            "specs": {k: s.to_json() for k, s in specs.items()},
            **(extra_attrs or {}),
        }
        if not is_local(path):  # no rename on object storage: a kill leaves a skeleton, which counts as absent
            if is_skeleton(path):
                zarr.open_group(path, mode="w")
            build(path, specs, attrs)
            return cls(zarr.open_group(path, mode="r+"), path, writable=True)
        final = local_path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final)
        if final.exists():  # a skeleton (see `exists`): nothing in it to lose
            log.warning("replacing the incomplete store %s (its creation was interrupted)", path)
            shutil.rmtree(final)
        tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex[:12]}{PARTIAL}")
        tmp.mkdir()
        fd = os.open(tmp, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held through the rename: it becomes the new store's writer lock
        try:
            build(str(tmp), specs, attrs)
            try:
                os.rename(tmp, final)
            except OSError as e:
                raise StoreError(f"{path} appeared while it was being created; choose another path") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(fd)
            raise
        store = cls(zarr.open_group(path, mode="r+"), path, writable=True, lock_fd=fd)
        return store

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether anything (a store or not) is at `path`; an incomplete skeleton that `create` replaces
        (see `is_skeleton`) counts as nothing."""
        path = str(path)
        if is_local(path):
            if not local_path(path).exists():
                return False
        else:
            try:
                zarr.open_group(path, mode="r")
            except Exception:
                return False
        return not is_skeleton(path)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", *, strict: bool = True) -> TrajectoryStore:
        """Open an existing store for reading ("r") or appending ("a"). A store that fails the checks at
        open (see the module docstring) is a `StoreError`; `strict=False` opens it anyway, for inspection."""
        path = str(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if is_local(path) and not local_path(path).exists():
            raise StoreError(f"no store at {path}")
        try:
            group = zarr.open_group(path, mode="r" if mode == "r" else "r+")
        except Exception as e:  # zarr raises several types for a non-store directory
            raise StoreError(f"{path} is not a readable zarr store: {e}") from e
        return cls(group, path, writable=mode == "a", strict=strict)

    def _validate_format(self) -> None:
        """What makes the store unreadable as one: another zarr version or format, missing groups or arrays."""
        if self.group.metadata.zarr_format != 3:
            raise StoreError(f"{self.path} is a zarr v{self.group.metadata.zarr_format} group; vla stores are "
                             "zarr v3: re-create it with the command that made it")  # fmt: skip
        attrs = self.group.attrs
        problem = None
        if attrs.get("format") != FORMAT:
            problem = f"{self.path} is not a vla trajectory store (format {attrs.get('format')!r})"
        elif attrs.get("version") != VERSION:
            raise StoreError(f"{self.path} has store version {attrs.get('version')}; this vla reads {VERSION}")
        elif not all(name in self.group for name in ("data", "meta")):
            missing = [name for name in ("data", "meta") if name not in self.group]
            problem = f"{self.path} is corrupt: missing group {missing[0]!r}"
        else:
            missing = [k for k in attrs.get("specs", {}) if k not in self.group["data"]]
            missing += [f for f in (keys.EPISODE_ENDS, *keys.META_FIELDS) if f not in self.group["meta"]]
            if missing or not isinstance(attrs.get("specs"), dict):
                problem = f"{self.path} is corrupt: missing arrays {', '.join(missing) or '(no specs)'}"
        if problem and is_skeleton(self.path):
            raise StoreError(f"{self.path} is an incomplete store (its creation was interrupted; it holds no "
                             "data): re-run the command that makes it, which replaces it")  # fmt: skip
        if problem:
            raise StoreError(problem)

    def _schema_problems(self) -> list[str]:
        """Every spec against the data contract, every array's dtype and shape against its spec (or the
        metadata's fixed dtypes): metadata only, no chunk is read."""
        problems = []
        for key, spec in self.specs.items():
            problem = keys.spec_problem(key, spec)
            if problem:
                problems.append(f"schema: {problem}")
            array = self.group["data"][key]
            if str(array.dtype) != spec.dtype or tuple(array.shape[1:]) != tuple(spec.shape):
                problems.append(f"data/{key}: dtype {array.dtype} shape {tuple(array.shape[1:])} disagree with "
                                f"the schema {spec.dtype} {tuple(spec.shape)}")  # fmt: skip
            elif array.chunks[1:] != tuple(spec.shape):
                problems.append(f"data/{key}: chunks {array.chunks} are not along time only")
        for field, dtype in {keys.EPISODE_ENDS: "int64", **keys.META_DTYPES}.items():
            array = self.group["meta"][field]
            kind_ok = array.dtype.kind in "TUO" if dtype == "str" else str(array.dtype) == dtype
            if not kind_ok or array.ndim != 1:
                problems.append(
                    f"meta/{field}: dtype {array.dtype} with {array.ndim} dims; the format says {dtype} (1-d)"
                )
        return problems

    def _missing_chunks(self) -> list[str]:
        """Chunk files of the committed range that are absent, from one listing of the store. zarr would
        read them as the fill value (zeros: black frames, zero actions), so they must never pass."""
        listed = list_keys(self.group)
        problems = []
        arrays = [(f"data/{k}", self.num_steps) for k in self.specs]
        arrays += [(f"meta/{f}", self.num_episodes) for f in (keys.EPISODE_ENDS, *keys.META_FIELDS)]
        for name, length in arrays:
            array = self.group[name]
            chunk = array.chunks[0]
            expected = -(-length // chunk)
            missing = [c for c in range(expected) if chunk_key(array, c) not in listed]
            if missing:
                spans = ", ".join(f"{c * chunk}..{min((c + 1) * chunk, length) - 1}" for c in missing[:5])
                problems.append(f"{name}: {len(missing)} of {expected} chunk files are missing (steps {spans}"
                                f"{', ...' if len(missing) > 5 else ''})")  # fmt: skip
        return problems

    def _meta_problems(self) -> list[str]:
        """Per-episode metadata values: known sources, an instruction and a task for every episode."""
        try:
            sources, instructions, tasks = (self.meta(f) for f in (keys.SOURCE, keys.INSTRUCTION, keys.TASK))
        except Exception as e:
            return [f"meta: cannot read per-episode metadata: {e}"]
        problems = []
        bad_sources = sorted(set(sources.tolist()) - set(keys.SOURCES))
        if bad_sources:
            problems.append(f"meta/source: unknown values {bad_sources}; valid: {', '.join(keys.SOURCES)}")
        empty = [i for i, (ins, task) in enumerate(zip(instructions, tasks)) if not ins or not task]
        if empty:
            problems.append(f"meta: episodes {empty[:10]} have an empty instruction or task")
        return problems

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
        """Steps lo..hi-1 of `key` across episodes, raising a clear error on a missing or unreadable chunk."""
        array = self.array(key)
        hi = min(hi, array.shape[0])
        chunk = array.chunks[0]
        for c in range(lo // chunk, -(-hi // chunk)):
            if not self.has_chunk(key, c):
                raise StoreError(f"{self.path}: the chunk file of data/{key} steps {c * chunk}..{(c + 1) * chunk - 1}"
                                 " is missing (it would read as zeros); run `vla data check`")  # fmt: skip
        try:
            return array[lo:hi]
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read data/{key}[{lo}:{hi}] ({e}); run `vla data check`") from e

    def has_chunk(self, key: str, c: int) -> bool:
        """Whether the file of time-chunk `c` of data/`key` exists: one stat (local stores), against a decode
        that costs a thousand times more."""
        key = chunk_key(self.array(key), c)
        if is_local(self.path):
            return (local_path(self.path) / key).is_file()
        return sync(self.group.store_path.store.exists(f"{self.group.store_path.path}/{key}".lstrip("/")))

    def episode(self, i: int, keys_: list[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of episode i: {key: (T, *shape) array} in raw units."""
        sl = self.episode_slice(i)
        return {k: self.read(k, sl.start, sl.stop) for k in (keys_ or self.specs)}

    def meta(self, field: str) -> np.ndarray:
        """Per-episode metadata for the committed episodes; an optional field a store lacks reads as ""."""
        if field not in (*keys.META_FIELDS, *keys.OPTIONAL_META_FIELDS):
            valid = ", ".join((*keys.META_FIELDS, *keys.OPTIONAL_META_FIELDS))
            raise KeyError(f"unknown meta field {field!r}; valid: {valid}")
        if field not in self.group["meta"]:
            return np.full(self.num_episodes, "", dtype=object)
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
        scene: str = "",
    ) -> int:
        """Append one episode ({key: (T, *shape)} for every key of the schema) and commit it; returns its index.
        scene: the optional `keys.SCENE` metadata (a store made before it existed gains the field)."""
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to append")
        data = self._check_episode(data, source)  # every key checked before anything is written
        length = len(next(iter(data.values())))
        start = self.num_steps
        for key, spec in self.specs.items():
            arr = self._for_writing("data", key)
            arr.resize((start + length, *spec.shape))
            arr[start:] = data[key]
        n = self.num_episodes
        values = {
            keys.INSTRUCTION: instruction,
            keys.TASK: task,
            keys.SUCCESS: bool(success),
            keys.SEED: int(seed),
            keys.SOURCE: source,
        }
        if scene or keys.SCENE in self.group["meta"]:
            self._optional_meta(keys.SCENE)
            values[keys.SCENE] = scene
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

    def _optional_meta(self, field: str) -> None:
        """Create an optional meta field an older store lacks, "" for its committed episodes."""
        if field not in self.group["meta"]:
            array = self.group["meta"].create_array(field, shape=(self.num_episodes,), chunks=(4096,), dtype=str,
                                                    fill_value="", config=WRITE_ALL_CHUNKS)  # fmt: skip
            if self.num_episodes:
                array[:] = np.full(self.num_episodes, "", dtype=object)

    def _for_writing(self, group: str, name: str) -> zarr.Array:
        # The chunk config is not persisted in the store, so set it on every array a writer touches.
        return self.group[group][name].with_config(WRITE_ALL_CHUNKS)

    def _check_episode(self, data: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
        """The episode's arrays in the schema's dtypes, or an error naming what does not fit."""
        if source not in keys.SOURCES:
            raise UserError(f"unknown source {source!r}; valid: {', '.join(keys.SOURCES)}")
        if set(data) != set(self.specs):
            raise StoreError(
                f"episode keys {sorted(data)} do not match the store schema {sorted(self.specs)} of {self.path}"
            )
        out = {key: conform(key, spec, data[key]) for key, spec in self.specs.items()}
        lengths = {k: len(v) for k, v in out.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise UserError(f"episode arrays must share one non-zero length; got {lengths}")
        return out

    def _trim_uncommitted(self) -> None:
        """Drop what a killed writer left past the commit record, so appends start clean."""
        n, steps = self.num_episodes, self.num_steps
        for key, spec in self.specs.items():
            if self.group["data"][key].shape[0] != steps:
                self.group["data"][key].resize((steps, *spec.shape))
        optional = [f for f in keys.OPTIONAL_META_FIELDS if f in self.group["meta"]]
        for field in (keys.EPISODE_ENDS, *keys.META_FIELDS, *optional):
            if self.group["meta"][field].shape[0] != n:
                log.warning("trimming an uncommitted tail of meta/%s in %s", field, self.path)
                self.group["meta"][field].resize((n,))

    def _remove_partial_files(self) -> None:
        """zarr writes each file to `<name>.<hex>.partial` and renames it; a kill between the two leaves
        the temporary file. Only the writer (holding the lock) removes them: no other write is under way."""
        if not is_local(self.path):
            return
        for stray in local_path(self.path).rglob(f"*{PARTIAL}"):
            if stray.is_file():
                log.warning("removing %s, left by an interrupted write", stray)
                stray.unlink(missing_ok=True)

    # --- one writer at a time ---------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        """An advisory lock the OS releases when the writer dies, so a killed writer never blocks the next."""
        if not is_local(self.path):
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
