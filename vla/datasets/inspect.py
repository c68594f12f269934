"""`vla data info` and `vla data check`: what a store holds, and whether all of it reads back."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from vla import keys
from vla.datasets.store import StoreError, TrajectoryStore
from vla.datasets.store_files import PARTIAL, is_local


def _bytes_on_disk(path: str) -> int | None:
    if not is_local(path):
        return None
    return sum(f.stat().st_size for f in Path(path.removeprefix("file://")).rglob("*") if f.is_file())


def store_info(path: str | os.PathLike) -> dict:
    """Episodes, steps, keys (shape, dtype, units), tasks, instructions, size on disk, compression ratio."""
    store = TrajectoryStore.open(path)
    n = store.num_episodes
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    raw_bytes = sum(store.num_steps * np.dtype(s.dtype).itemsize * int(np.prod(s.shape)) for s in store.specs.values())
    disk = _bytes_on_disk(store.path)
    success = store.meta(keys.SUCCESS).astype(bool)
    return {
        "path": store.path,
        "kind": store.kind,
        "fps": store.fps,
        "episodes": n,
        "steps": store.num_steps,
        "episode_length": {
            "min": int(lengths.min()) if n else 0,
            "mean": float(lengths.mean()) if n else 0.0,
            "max": int(lengths.max()) if n else 0,
        },
        "success_rate": float(success.mean()) if n else None,
        "keys": {k: {"shape": list(s.shape), "dtype": s.dtype, "units": s.units} for k, s in store.specs.items()},
        "cameras": [keys.camera_of(k) for k in store.specs if keys.is_image_key(k)],
        "tasks": dict(sorted(Counter(store.meta(keys.TASK).tolist()).items())),
        "instructions": sorted(set(store.meta(keys.INSTRUCTION).tolist())),
        "sources": dict(Counter(store.meta(keys.SOURCE).tolist())),
        "bytes_raw": int(raw_bytes),
        "bytes_on_disk": disk,
        "compression_ratio": round(raw_bytes / disk, 2) if disk else None,
    }


def format_info(info: dict) -> str:
    """Human-readable summary of `store_info`."""
    lines = [
        f"{info['path']}  ({info['kind']}, {info['fps']:g} fps)",
        f"  episodes {info['episodes']}, steps {info['steps']}, "
        f"length min/mean/max {info['episode_length']['min']}/{info['episode_length']['mean']:.1f}"
        f"/{info['episode_length']['max']}",
    ]
    if info["success_rate"] is not None:
        lines.append(f"  success rate {info['success_rate']:.1%}, sources {info['sources']}")
    lines.append("  keys:")
    for key, spec in info["keys"].items():
        lines.append(f"    {key:32s} {str(tuple(spec['shape'])):14s} {spec['dtype']:8s} {spec['units']}")
    lines.append(f"  tasks ({len(info['tasks'])}):")
    lines += [f"    {task:32s} {count} episodes" for task, count in info["tasks"].items()]
    lines.append(f"  instructions ({len(info['instructions'])}):")
    shown = info["instructions"][:12]
    lines += [f"    {text}" for text in shown]
    if len(info["instructions"]) > len(shown):
        lines.append(f"    ... and {len(info['instructions']) - len(shown)} more")
    if info["bytes_on_disk"]:
        lines.append(
            f"  size {info['bytes_on_disk'] / 2**20:.1f} MiB on disk, {info['bytes_raw'] / 2**20:.1f} MiB raw, "
            f"compression {info['compression_ratio']:.1f}x"
        )
    return "\n".join(lines)


def check_store(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(problems, notes). Problems make the store unusable or untrustworthy; notes are benign.

    Checks what opening a store checks (zarr v3, format, version, the schema against the data contract
    and the arrays, the commit record, every chunk file of the committed range present, per-episode
    metadata values: training and evaluation refuse a store that fails these), then that every chunk
    decodes, non-finite values, and image episodes that are nothing but the array's fill value (what a
    lost chunk or a misconverted frame reads as: it must never pass for data)."""
    try:
        store = TrajectoryStore.open(path, strict=False)
    except StoreError as e:
        return [str(e)], []
    problems, notes = list(store.problems), []
    raw_ends = store.group["meta"][keys.EPISODE_ENDS].shape[0]
    if raw_ends > store.num_episodes:
        notes.append("one uncommitted episode entry (a writer was interrupted); the next append trims it")
    if is_local(store.path):
        strays = [p for p in Path(store.path.removeprefix("file://")).rglob(f"*{PARTIAL}") if p.is_file()]
        if strays:
            notes.append(f"{len(strays)} temporary files (*{PARTIAL}) from an interrupted write; the next append "
                         "removes them")  # fmt: skip
    for key, spec in store.specs.items():
        problems += _check_array(store, key, spec)
        extra = store.array(key).shape[0] - store.num_steps
        if extra > 0:
            notes.append(f"data/{key}: {extra} uncommitted steps past the last episode; the next append trims them")
    return problems, notes


def _check_array(store: TrajectoryStore, key: str, spec: keys.Spec) -> list[str]:
    """Every chunk of the committed range decodes (missing ones are among the store's own problems), floats
    are finite, and no image episode is the fill value throughout."""
    array = store.array(key)
    problems = []
    chunk, steps = array.chunks[0], store.num_steps
    fill = array.fill_value
    is_fill = np.zeros(steps, bool)  # per step: every value equals the fill value
    for lo in range(0, steps, chunk):
        hi = min(lo + chunk, steps)
        if not store.has_chunk(key, lo // chunk):
            continue  # a missing chunk file: among the store's own problems, and it would read as the fill value
        try:
            values = array[lo:hi]
        except Exception as e:
            problems.append(f"data/{key}: steps {lo}..{hi - 1} do not decode: {e}")
            continue
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            problems.append(f"data/{key}: non-finite values in steps {lo}..{hi - 1}")
        is_fill[lo:hi] = (values.reshape(hi - lo, -1) == fill).all(axis=1)
    if keys.is_image_key(key) and steps:
        which = np.flatnonzero(np.logical_and.reduceat(is_fill, store.episode_starts))
        if len(which):
            more = " ..." if len(which) > 10 else ""
            problems.append(
                f"data/{key}: episodes {which[:10].tolist()}{more} hold nothing but {np.asarray(fill).item()!r}, "
                "the array's fill value (a lost chunk, a camera that sent nothing, or frames stored in the wrong dtype)"
            )
    return problems
