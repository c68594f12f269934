"""Training-window read speed: zarr store versus MP4 files (PyAV, LeRobot's way) versus PNG files.

Windows: history 4, chunk 10, one 64x64 camera, the foresight frame, batch 32, read in one process.
All three paths return the same window; state and actions come from memory in every path, so the
figures compare only how frames are stored. zarr is measured warm (every chunk decoded once into the
sampler's per-worker cache, the state after one epoch), cold (a fresh cache, so the measured batches
mostly decode new chunks) and with the cache off. The frames are real simulator frames: a small Meta-World
store is collected unless --store names one.

    python bench/data_loading.py [--store runs/quickstart/demos.zarr] [--batches 30]

Prints a table and, as its last line, one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vla import keys
from vla.datasets.sampler import WindowDataset, WindowSpec, collate
from vla.datasets.store import TrajectoryStore

WINDOW = WindowSpec(history=4, chunk=10, foresight_offsets=(3,))
BATCH = 32


def ensure_store(path: str | None, workdir: Path) -> TrajectoryStore:
    if path:
        return TrajectoryStore.open(path)
    from vla.collect import CollectConfig, collect

    out = str(workdir / "bench.zarr")
    cfg = CollectConfig(
        suite="metaworld",
        tasks="reach-v3,drawer-close-v3,button-press-topdown-v3",
        episodes_per_task=4,
        out=out,
    )
    collect(cfg, progress=True)
    return TrajectoryStore.open(out)


def export_files(store: TrajectoryStore, camera_key: str, workdir: Path) -> tuple[Path, Path]:
    """One MP4 per episode (AV1 via SVT-AV1, GOP 2, CRF 30, yuv420p: LeRobot's defaults) and one PNG per frame."""
    # SVT-AV1 prints its banner and settings per encoder straight to stderr (not through FFmpeg's log, which
    # PyAV's log level would quiet): 1,600 lines for a store. SVT_LOG=1 keeps its errors only.
    os.environ.setdefault("SVT_LOG", "1")
    mp4_dir, png_dir = workdir / "mp4", workdir / "png"
    mp4_dir.mkdir(exist_ok=True)
    png_dir.mkdir(exist_ok=True)
    for ep in range(store.num_episodes):
        frames = store.episode(ep, [camera_key])[camera_key]
        with av.open(str(mp4_dir / f"{ep}.mp4"), "w") as container:
            stream = container.add_stream("libsvtav1", rate=int(store.fps))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"g": "2", "crf": "30"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(png_dir / f"{ep}_{t}.png")
    return mp4_dir, png_dir


class FileWindows(WindowDataset):
    """The same windows, with frames decoded from per-episode MP4s or per-frame PNGs."""

    def __init__(self, store, camera_key, mp4_dir=None, png_dir=None):
        super().__init__(store, WINDOW, cache_bytes=0)
        self.camera_key, self.mp4_dir, self.png_dir = camera_key, mp4_dir, png_dir

    def _rows(self, key, lo, hi):
        if key != self.camera_key:
            return super()._rows(key, lo, hi)
        episode = int(np.searchsorted(self.store.episode_ends, lo, side="right"))
        start = int(self.store.episode_starts[episode])
        steps = range(lo - start, hi - start)
        if self.png_dir:
            return np.stack([np.asarray(Image.open(self.png_dir / f"{episode}_{t}.png")) for t in steps])
        return self._decode(episode, steps)

    def _decode(self, episode: int, steps: range) -> np.ndarray:
        """Seek to the keyframe before the first step, decode up to the last (as LeRobot's decoder does)."""
        with av.open(str(self.mp4_dir / f"{episode}.mp4")) as container:
            stream = container.streams.video[0]
            first_pts = int(steps[0] / (stream.time_base * Fraction(self.store.fps)))
            container.seek(first_pts, stream=stream, backward=True)
            frames = {}
            for frame in container.decode(stream):
                t = round(float(frame.pts * stream.time_base) * self.store.fps)
                if t in steps:
                    frames[t] = frame.to_ndarray(format="rgb24")
                if t >= steps[-1]:
                    break
        return np.stack([frames[t] for t in steps])


def samples_per_second(dataset: WindowDataset, batches: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    order = rng.integers(0, len(dataset), size=(batches + 1, BATCH))
    collate([dataset[i] for i in order[0]])  # warm-up: imports, file handles
    start = time.perf_counter()
    for batch in order[1:]:
        collate([dataset[i] for i in batch])
    return batches * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--store", help="an existing store (default: collect a small Meta-World one)")
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        store = ensure_store(args.store, workdir)
        camera_key = next(k for k in store.specs if keys.is_image_key(k))
        mp4_dir, png_dir = export_files(store, camera_key, workdir)
        warm = WindowDataset(store, WINDOW)
        warm.preload()  # the steady state of training: after the first epoch every chunk is decoded
        paths = {
            "zarr": warm,
            "zarr_cold": WindowDataset(store, WINDOW),
            "zarr_nocache": WindowDataset(store, WINDOW, cache_bytes=0),
            "mp4": FileWindows(store, camera_key, mp4_dir=mp4_dir),
            "png": FileWindows(store, camera_key, png_dir=png_dir),
        }
        figures = {name: samples_per_second(ds, args.batches) for name, ds in paths.items()}
    print(f"store: {store.num_episodes} episodes, {store.num_steps} frames of {store.specs[camera_key].shape}")
    print(f"{'path':14s} {'samples/s':>10s} {'vs mp4':>8s}")
    for name, rate in figures.items():
        print(f"{name:14s} {rate:10.0f} {rate / figures['mp4']:7.1f}x")
    result = {f"{name}_samples_per_s": round(rate, 1) for name, rate in figures.items()}
    result["zarr_vs_mp4"] = round(figures["zarr"] / figures["mp4"], 1)
    result["zarr_cold_vs_mp4"] = round(figures["zarr_cold"] / figures["mp4"], 1)
    result["zarr_nocache_vs_mp4"] = round(figures["zarr_nocache"] / figures["mp4"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
