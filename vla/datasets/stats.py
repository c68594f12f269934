"""Per-key statistics of a store, computed once and cached in its attrs.

For each key: mean, std, min, max and the 1st/99th percentiles per feature (per channel for images).
The policy's normalizer is fitted from these. The cache records the number of steps it covers, so
appending episodes invalidates it.
"""

from __future__ import annotations

import logging

import numpy as np
import zarr

from vla.datasets.store import TrajectoryStore

log = logging.getLogger(__name__)

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
MAX_IMAGE_FRAMES = 4096  # images: statistics from an evenly spaced subsample of frames


def _key_stats(values: np.ndarray) -> dict[str, list]:
    """values: (N, *feature_shape) -> stats over N and, for images, over pixels: one value per channel."""
    values = values.reshape(-1, values.shape[-1]).astype(np.float64)
    q01, q99 = np.percentile(values, [1, 99], axis=0)
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "q01": q01.tolist(),
        "q99": q99.tolist(),
    }


def compute_stats(store: TrajectoryStore) -> dict[str, dict[str, list]]:
    """{key: {stat: [per feature]}} over every committed step (image keys: a frame subsample)."""
    stats = {}
    n = store.num_steps
    for key, spec in store.specs.items():
        if len(spec.shape) == 3:
            rows = np.unique(np.linspace(0, n - 1, min(n, MAX_IMAGE_FRAMES)).astype(np.int64))
            values = store.array(key).get_orthogonal_selection((rows,))
        else:
            values = store.array(key)[:n]
        stats[key] = _key_stats(np.asarray(values))
    return stats


def get_stats(store: TrajectoryStore) -> dict[str, dict[str, np.ndarray]]:
    """Cached statistics, recomputed when the store has grown since they were cached."""
    cached = zarr.open_group(store.path, mode="r").attrs.get("stats")  # fresh: another process may have cached
    if not cached or cached.get("num_steps") != store.num_steps:
        if store.num_steps == 0:
            raise ValueError(f"{store.path} has no committed steps to compute statistics from")
        cached = {"num_steps": store.num_steps, "keys": compute_stats(store)}
        try:  # the cache is a convenience: a read-only store still gets its statistics
            zarr.open_group(store.path, mode="r+").attrs["stats"] = cached
        except Exception as e:
            log.info("could not cache statistics in %s: %s", store.path, e)
    return {k: {s: np.asarray(v, dtype=np.float32) for s, v in d.items()} for k, d in cached["keys"].items()}
