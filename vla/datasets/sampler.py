"""Training windows from a trajectory store, with edge padding, pad masks and an episode split.

A window anchored at step t of an episode holds, for K = len(foresight_offsets):

    observation keys   steps t-history+1 .. t          (history, *shape)   + `<key>_is_pad` (history,)
    action             steps t .. t+chunk-1            (chunk, action_dim) + `action_is_pad` (chunk,)
    future.<image key> steps t+offset, per offset      (K, H, W, 3)        + `future.<key>_is_pad` (K,)
    instruction, task  the episode's metadata (str)

With `every_step` (GR-1's supervision at every timestep of the window) the action chunk and the future
frames are given for each of the window's steps s = t-history+1 .. t instead: action (history, chunk,
action_dim) from steps s .. s+chunk-1, future frames (history, K, H, W, 3) at s+offset, each with its
pad mask of the same leading shape.

An image-text store's windows are its one frame (history 1, no future frame) and `caption` in place
of `instruction`; where its episodes record their `scene` (tabletop collection), also a phrase grounding
pair: `referring_expression` naming one object of the scene that colour and kind pick out ("the red
block") and `referent_position` (2,) where it stands (m, the view coordinates of `caption_facts`), with
`referent_position_is_pad` where the scene has no such object. Which object, and which noun names it,
cycles with the window's index, so a scene's captions ground different objects. Video stores simply
have no state or action keys.

Steps outside the episode repeat its first or last step (edge padding) and are marked in the mask,
which every loss honours.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vla import keys
from vla.datasets.store import StoreError, TrajectoryStore
from vla.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowSpec:
    history: int = 4  # observation steps up to and including the current one
    chunk: int = 10  # future actions predicted from the current step
    foresight_offsets: tuple[int, ...] = (3,)  # how far ahead the foreseen frames are, in steps
    every_step: bool = False  # actions and future frames for every step of the window, not just the last

    def __post_init__(self):
        for name in ("history", "chunk"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "foresight_offsets", tuple(int(o) for o in self.foresight_offsets))
        if not self.foresight_offsets or min(self.foresight_offsets) < 1:
            raise UserError(f"foresight_offsets must be steps >= 1, got {list(self.foresight_offsets)}")

    @classmethod
    def of(cls, policy) -> WindowSpec:
        """The windows a `PolicyConfig` learns from."""
        return cls(policy.history, policy.chunk, tuple(policy.foresight_offsets), policy.every_step_loss)

    def offsets(self, specs: dict[str, keys.Spec], kind: str = "robot") -> dict[str, tuple[str, np.ndarray]]:
        """{output key: (store key, step offsets relative to the anchor, of the output's leading shape)}."""
        if kind == "image-text":
            return {key: (key, np.array([0])) for key in specs}
        steps = np.arange(-self.history + 1, 1)
        supervised = steps[:, None] if self.every_step else np.zeros((1, 1), int)  # (S, 1): S = history or 1

        def ahead(offsets: np.ndarray) -> np.ndarray:  # (S, n) from each supervised step, or (n,) from the last
            rows = supervised + offsets
            return rows if self.every_step else rows[0]

        out = {}
        for key in specs:
            out[key] = (key, ahead(np.arange(self.chunk)) if key == keys.ACTION else steps)
            if keys.is_image_key(key):
                out[keys.future_key(key)] = (key, ahead(np.array(self.foresight_offsets)))
        return out


def split_episodes(tasks: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices, disjoint and sorted: a pure function of the episodes' tasks (one name
    per episode, in store order), `val_fraction` and `seed`.

    Split by task: validation episodes are drawn within each task of at least two episodes, about
    `val_fraction` of it (largest remainders, so the total is round(val_fraction x those episodes)), and
    every task keeps at least one episode for training, so a task with a single episode always trains on
    it. With val_fraction > 0 and a task of two or more episodes, val holds at least one episode. Which of
    a task's episodes are drawn depends on the seed and the task's name, not on the order of the tasks.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tasks = np.asarray([str(t) for t in tasks])
    groups = {name: np.flatnonzero(tasks == name) for name in sorted(set(tasks.tolist()))}
    eligible = {name: episodes for name, episodes in groups.items() if len(episodes) >= 2}
    n_eligible = sum(len(e) for e in eligible.values())
    total = int(round(n_eligible * val_fraction))
    if val_fraction > 0 and eligible:
        total = max(total, 1)
    total = min(total, n_eligible - len(eligible))  # every task keeps one episode for training
    counts = {name: min(len(e) * total // n_eligible, len(e) - 1) for name, e in eligible.items()}
    # The remaining episodes go to the tasks with the largest remainders; ties in a seeded order.
    tie = dict(zip(eligible, np.random.default_rng(seed).permutation(len(eligible))))
    by_remainder = sorted(eligible, key=lambda name: (-(len(eligible[name]) * total % n_eligible), tie[name]))
    while sum(counts.values()) < total:
        for name in by_remainder:
            if sum(counts.values()) < total and counts[name] < len(eligible[name]) - 1:
                counts[name] += 1
    val = [
        episodes[np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(episodes))[: counts[name]]]
        for name, episodes in eligible.items()
    ]
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(tasks)), val)
    return train, val


class _ChunkCache:
    """Decoded time-chunks of one zarr array, least recently used evicted past a byte budget.

    Random windows touch few chunks, and decoding a chunk costs far more than slicing it, so a
    worker keeps what it decoded. Budget 0 reads straight from zarr.
    """

    def __init__(self, store: TrajectoryStore, key: str, budget_bytes: int):
        self.store, self.key = store, key
        self.chunk = store.array(key).chunks[0]
        self.budget = budget_bytes
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.bytes = 0

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1."""
        if self.budget == 0:
            return self.store.read(self.key, lo, hi)
        first, last = lo // self.chunk, (hi - 1) // self.chunk
        parts = [self._chunk(c) for c in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        base = first * self.chunk
        return block[lo - base : hi - base]

    def _chunk(self, c: int) -> np.ndarray:
        if c in self.cache:
            self.cache.move_to_end(c)
            return self.cache[c]
        data = self.store.read(self.key, c * self.chunk, (c + 1) * self.chunk)
        self.cache[c] = data
        self.bytes += data.nbytes
        while self.bytes > self.budget and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.bytes -= old.nbytes
        return data


class WindowDataset(Dataset):
    """Windows anchored at every step of the chosen episodes; works with DataLoader workers.

    Low-dimensional keys are read into memory once; images come through a per-worker chunk cache.
    Items are numpy arrays (images uint8, raw units); default_collate turns them into tensors.
    """

    def __init__(
        self,
        store: TrajectoryStore | str,
        window: WindowSpec = WindowSpec(),
        episodes: np.ndarray | None = None,
        cache_bytes: int = 1 << 30,
    ):
        self.store = store if isinstance(store, TrajectoryStore) else TrajectoryStore.open(store)
        self.window = window
        self.episodes = np.arange(self.store.num_episodes) if episodes is None else np.asarray(episodes)
        if len(self.episodes) == 0:
            raise UserError(f"no episodes to sample from in {self.store.path}")
        self.offsets = window.offsets(self.store.specs, self.store.kind)
        self.text_key = keys.CAPTION if self.store.kind == "image-text" else keys.INSTRUCTION
        self.cache_bytes = cache_bytes
        starts, ends = self.store.episode_starts, self.store.episode_ends
        self._starts, self._ends = starts, ends
        self._by_source: dict[str, list[tuple[str, np.ndarray]]] = {}
        for out_key, (key, offs) in self.offsets.items():
            self._by_source.setdefault(key, []).append((out_key, offs))
        lengths = ends[self.episodes] - starts[self.episodes]
        self.anchor_episode = np.repeat(self.episodes, lengths)  # episode index per window
        self.anchor_step = np.concatenate([np.arange(s, e) for s, e in zip(starts[self.episodes], ends[self.episodes])])
        self.instructions = self.store.meta(keys.INSTRUCTION)
        self.tasks = self.store.meta(keys.TASK)
        self._low_dim = {k: self.store.array(k)[:] for k, s in self.store.specs.items() if len(s.shape) == 1}
        for key, values in self._low_dim.items():  # read whole anyway: refuse what `vla data check` would
            bad = np.flatnonzero(~np.isfinite(values[: self.store.num_steps]).all(axis=1))
            if len(bad):
                raise StoreError(f"{self.store.path}: data/{key} holds non-finite values at steps {bad[:5].tolist()}"
                                 f"{' ...' if len(bad) > 5 else ''}; run `vla data check`")  # fmt: skip
        self._caches: dict[str, _ChunkCache] | None = None  # built lazily, once per worker process
        self._referents = self._scene_referents() if self.store.kind == "image-text" else None

    def _scene_referents(self) -> dict | None:
        """{episode: its scene's referents} for the sampled episodes, or None where the store records no scenes."""
        from vla.envs.tabletop.caption_facts import Scene, referents

        stored = self.store.meta(keys.SCENE)
        scenes = {int(e): str(stored[e]) for e in self.episodes}
        if not any(scenes.values()):
            return None
        return {e: referents(Scene.from_json(text)) if text else [] for e, text in scenes.items()}

    def __len__(self) -> int:
        return len(self.anchor_step)

    def _cache(self, key: str) -> _ChunkCache:
        if self._caches is None:
            self._caches = {}
        if key not in self._caches:
            self._caches[key] = _ChunkCache(self.store, key, self.cache_bytes)
        return self._caches[key]

    def _rows(self, key: str, lo: int, hi: int) -> np.ndarray:
        if key in self._low_dim:
            return self._low_dim[key][lo:hi]
        return self._cache(key).rows(lo, hi)

    def preload(self) -> None:
        """Decode every image chunk into this process's cache now (as far as its budget allows), so the
        first batches read as fast as the later ones."""
        for key in self.store.specs:
            if key not in self._low_dim:
                cache = self._cache(key)
                for c in range(-(-self.store.num_steps // cache.chunk)):
                    cache._chunk(c)

    def __getitem__(self, i: int) -> dict:
        episode, t = int(self.anchor_episode[i]), int(self.anchor_step[i])
        start, end = int(self._starts[episode]), int(self._ends[episode])
        item = {}
        for key, outputs in self._by_source.items():
            # One read per stored key covers its history and its future frame.
            steps = [t + offs for _, offs in outputs]
            clipped = [np.clip(s, start, end - 1) for s in steps]
            lo = min(int(c.min()) for c in clipped)
            block = self._rows(key, lo, max(int(c.max()) for c in clipped) + 1)
            for (out_key, _), s, c in zip(outputs, steps, clipped):
                item[out_key] = block[c - lo]  # (*offsets.shape, *value shape)
                item[keys.pad_key(out_key)] = s != c
        item[self.text_key] = str(self.instructions[episode])
        item[keys.TASK] = str(self.tasks[episode])
        item["episode_index"] = episode
        if self._referents is not None:
            item.update(self._grounding(i, self._referents[episode]))
        return item

    @staticmethod
    def _grounding(i: int, referents: list) -> dict:
        if not referents:
            return {keys.REFERRING_EXPRESSION: "", keys.REFERENT_POSITION: np.zeros(2, np.float32),
                    keys.pad_key(keys.REFERENT_POSITION): np.True_}  # fmt: skip
        referent = referents[i % len(referents)]
        return {
            keys.REFERRING_EXPRESSION: referent.phrase(i // len(referents)),
            keys.REFERENT_POSITION: np.array([referent.lateral, referent.depth], np.float32),
            keys.pad_key(keys.REFERENT_POSITION): np.False_,
        }


class EpochSampler(Sampler[int]):
    """A shuffle order that is a pure function of (seed, epoch): resuming at an epoch replays it exactly."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self):
        return iter(self.order(self.epoch).tolist())

    def __len__(self) -> int:
        return self.size


def make_datasets(
    store: TrajectoryStore | str, window: WindowSpec, val_fraction: float = 0.1, seed: int = 0, **kw
) -> tuple[WindowDataset, WindowDataset | None]:
    """Train and validation datasets split by episode, within each task (see `split_episodes`)."""
    store = TrajectoryStore.open(store) if isinstance(store, str) else store
    tasks = store.meta(keys.TASK)
    train_eps, val_eps = split_episodes(tasks, val_fraction, seed)
    singles = sorted(name for name, n in zip(*np.unique(tasks, return_counts=True)) if n == 1)
    if val_fraction > 0 and len(val_eps) == 0:
        log.warning("%s: no validation episodes (no validation loss): no task has two episodes, and a task's "
                    "only episode stays in training", store.path)  # fmt: skip
    elif singles:
        log.info("%s: %d task(s) with a single episode keep it for training: %s", store.path, len(singles),
                 ", ".join(singles[:5]) + (", ..." if len(singles) > 5 else ""))  # fmt: skip
    train = WindowDataset(store, window, train_eps, **kw)
    val = WindowDataset(store, window, val_eps, **kw) if len(val_eps) else None
    return train, val


def collate(items: list[dict]) -> dict:
    """Stack arrays into tensors; strings stay lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = values if isinstance(values[0], str) else torch.from_numpy(np.stack(values))
    return out
