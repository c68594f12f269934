"""The trajectory store's files: its zarr layout (groups, arrays, time chunks), listings of what is on
disk, and the leftovers of an interrupted creation (`*.partial` directories, metadata-only skeletons).
`vla.datasets.store` builds on these; the module docstring there describes the layout."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from vla import keys

log = logging.getLogger(__name__)

FORMAT = "vla-trajectories"
VERSION = 1
KINDS = ("robot", "video", "image-text")
TIME_CHUNK_BYTES = 1 << 19  # ~512 KiB of raw data per chunk: small enough for fast random windows


# zarr skips chunks equal to the fill value by default; writing them all lets `vla data check` tell a
# deleted chunk file from a chunk of zeros.
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}


def time_chunk(spec: keys.Spec) -> int:
    step_bytes = np.dtype(spec.dtype).itemsize * int(np.prod(spec.shape, dtype=np.int64))
    return int(np.clip(TIME_CHUNK_BYTES // max(step_bytes, 1), 16, 4096))


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> Path:
    return Path(path.removeprefix("file://"))


PARTIAL = ".partial"  # the suffix of zarr's temporary files, and of a store being created


def list_keys(group: zarr.Group) -> set[str]:
    """Every key (file) under the store's root, relative to it: one listing."""
    store = group.store_path.store

    async def listing():
        return [k async for k in store.list_prefix(group.store_path.path)]

    prefix = group.store_path.path
    return {k[len(prefix) :].lstrip("/") if prefix else k for k in sync(listing())}


def chunk_key(array: zarr.Array, c: int) -> str:
    """The key, relative to the store's root, of time-chunk `c` (arrays are chunked along time only)."""
    return f"{array.path}/{array.metadata.encode_chunk_key((c,) + (0,) * (array.ndim - 1))}"


def is_skeleton(path: str) -> bool:
    """Whether `path` holds an incomplete store that is safe to replace: nothing but zarr metadata and
    temporary files (no chunk of data), our format or none, and not the whole set of groups and arrays
    (a whole empty store is a store). What a kill during creation by an older version leaves."""
    if is_local(path) and not local_path(path).is_dir():
        return False
    try:
        group = zarr.open_group(path, mode="r")
    except Exception:
        if not is_local(path):
            return False
        files = [p for p in local_path(path).rglob("*") if p.is_file()]
        return all(p.name.endswith(PARTIAL) for p in files)  # an empty directory, or temporary files only
    listed = list_keys(group)
    if any(not (k == "zarr.json" or k.endswith("/zarr.json") or k.endswith(PARTIAL)) for k in listed):
        return False
    attrs = group.attrs
    if attrs.get("format") not in (None, FORMAT):
        return False
    specs = attrs.get("specs") or {}
    arrays = [f"data/{k}" for k in specs] + [f"meta/{f}" for f in (keys.EPISODE_ENDS, *keys.META_FIELDS)]
    return attrs.get("format") is None or not specs or any(f"{a}/zarr.json" not in listed for a in arrays)


def build(path: str, specs: Mapping[str, keys.Spec], attrs: dict) -> None:
    """The store's groups and empty arrays at `path` (a fresh location)."""
    group = zarr.open_group(path, mode="w-")
    group.attrs.update(attrs)
    data, meta = group.create_group("data"), group.create_group("meta")
    for key, spec in specs.items():
        data.create_array(
            key,
            shape=(0, *spec.shape),
            chunks=(time_chunk(spec), *spec.shape),
            dtype=spec.dtype,
            config=WRITE_ALL_CHUNKS,
        )
    meta.create_array(keys.EPISODE_ENDS, shape=(0,), chunks=(4096,), dtype="int64", config=WRITE_ALL_CHUNKS)
    for field, dtype in keys.META_DTYPES.items():
        dtype = str if dtype == "str" else dtype
        meta.create_array(field, shape=(0,), chunks=(4096,), dtype=dtype, config=WRITE_ALL_CHUNKS)
    for field in keys.OPTIONAL_META_FIELDS:
        meta.create_array(field, shape=(0,), chunks=(4096,), dtype=str, config=WRITE_ALL_CHUNKS)


def remove_stale_partials(final: Path) -> None:
    """Remove `<name>.<hex>.partial` directories that creators of `final` killed mid-way left behind; one
    still being built is locked by its creator and kept."""
    for stale in final.parent.glob(f"{final.name}.*{PARTIAL}"):
        if not stale.is_dir():
            continue
        fd = os.open(stale, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live creator
        finally:
            os.close(fd)
        log.warning("removing %s, left by an interrupted store creation", stale)
        shutil.rmtree(stale, ignore_errors=True)
