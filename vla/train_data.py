"""Training data: the stores of `data.stores` as one mixture (`build_data`), the order its windows are
visited in (`MixtureOrder`, a pure function of seed and epoch, so a resumed run sees the batches it would
have), and the batch stream (`batches`) each training process draws its share of every global batch from."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from vla import envs, keys
from vla.config import Config
from vla.datasets.sampler import WindowSpec, collate, make_datasets
from vla.datasets.stats import get_stats
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError

log = logging.getLogger(__name__)


class MixtureOrder:
    """Which windows each epoch visits, batch by batch: a pure function of (seed, epoch). One store: a
    permutation cut into batches. Several: each batch comes from one store, picked by weight, with its
    windows drawn uniformly from that store, so a batch never mixes robot, video and image-text data
    (each kind has its own token layout and losses); a store's weight is its share of the batches."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        self.sizes, self.seed = sizes, seed
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Whole batches in an epoch; a UserError when the windows do not fill one."""
        n = sum(self.sizes) // batch_size
        if n == 0:
            raise UserError(f"{sum(self.sizes)} training windows are fewer than one batch of {batch_size}")
        return n

    def __call__(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        n = self.batches_per_epoch(batch_size)
        if len(self.sizes) == 1:
            return list(rng.permutation(self.sizes[0])[: n * batch_size].reshape(n, batch_size))
        stores = rng.choice(len(self.sizes), size=n, p=self.weights)
        return [self.offsets[s] + rng.integers(self.sizes[s], size=batch_size) for s in stores]


def loader_generator(seed: int, *stream: int) -> torch.Generator:
    """The generator a DataLoader draws its worker seeds from (each worker's torch, numpy and python
    seeds): a pure function of (seed, *stream) (training: 0, epoch, rank; validation: 1), so a resumed
    epoch gets the workers it had, and opening a loader draws nothing from the global generator that
    training's own random draws continue from."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]))


def batches(dataset, order: MixtureOrder, batch_size: int, epoch: int, start: int, rank=0, world=1, workers=0):
    """Yield (epoch, index of the batch in its epoch, batch) forever, starting at (epoch, start).
    Each process takes its share of every global batch, so all processes see the same kind of data."""
    while True:
        plan = [b[rank::world].tolist() for b in order(epoch, batch_size * world)[start:]]
        loader = DataLoader(dataset, batch_sampler=plan, collate_fn=collate, num_workers=workers,
                            generator=loader_generator(order.seed, 0, epoch, rank))  # fmt: skip
        for i, batch in enumerate(loader, start=start):
            yield epoch, i, batch
        epoch, start = epoch + 1, 0


def build_data(cfg: Config):
    """Train dataset (a mixture), validation datasets (one per store), and the features and statistics
    of the union of the stores (a key's statistics come from the first store that has it)."""
    if not cfg.data.stores:
        raise UserError("no training stores: set data.stores in the config (a list of {path, weight})")
    window = WindowSpec.of(cfg.policy)
    stores = [TrajectoryStore.open(s.path) for s in cfg.data.stores]
    splits = [make_datasets(s, window, cfg.data.val_fraction, cfg.train.seed) for s in stores]
    train = ConcatDataset([t for t, _ in splits])
    vals = [v for _, v in splits if v is not None]
    order = MixtureOrder([len(t) for t, _ in splits], [s.weight for s in cfg.data.stores], cfg.train.seed)
    features, stats = {}, {}
    for store in stores:
        _warn_of_eval_scenes(store)
        store_stats = get_stats(store)
        for key, spec in store.specs.items():
            if key in features and keys.Spec.from_json(features[key]) != spec:
                earlier = f"{tuple(features[key]['shape'])} {features[key]['dtype']}"
                raise UserError(f"{store.path} holds {key} as {spec.shape} {spec.dtype}, an earlier store as {earlier}")
            declared = features.get(key, {}).get("gripper")
            if declared and spec.gripper and declared != spec.gripper and cfg.policy.gripper == "auto":
                raise UserError(f"{store.path} declares a {spec.gripper} gripper, an earlier store a {declared} one; "
                                "train on one kind, or set policy.gripper")  # fmt: skip
            if key not in features or (spec.gripper and not declared):
                features[key] = spec.to_json()  # the first store's, or the first that declares its gripper
            stats.setdefault(key, store_stats[key])
    if not any(keys.is_image_key(k) for k in features):
        raise UserError("the training stores hold no camera images (observation.images.<camera>)")
    return train, vals, order, features, stats


def _warn_of_eval_scenes(store: TrajectoryStore) -> None:
    """Say so when a store holds scenes `vla eval` draws by default (Meta-World's held-out variants: a
    store collected before they were held out, or with --split unseen)."""
    suite = (store.attrs.get("collect") or {}).get("suite", "")
    n = envs.seeds_in_split(suite, store.meta(keys.SEED).tolist(), "unseen")
    if n:
        log.warning("%s: %d of %d episodes show %s's held-out scenes (split unseen), which vla eval draws by "
                    "default: evaluating this policy there replays training scenes; collect the store again "
                    "(vla collect draws split train) or evaluate with --split train", store.path, n,
                    store.num_episodes, suite)  # fmt: skip
