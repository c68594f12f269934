"""`vla pretrain` and `vla caption`: GR-1 style pretraining on action-free video and image-text pairs.

Pretraining is `vla train` on stores of kind `video` (predict the frames `foresight_offsets` ahead from
the instruction and past frames) and `image-text` (describe the image), mixed by weight; the same
model, loop and checkpoints. A pretraining checkpoint starts a finetuning run with `--init-from`.

    vla pretrain --config configs/pretrain.yaml
    vla caption --policy runs/pretrain --image photo.png
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vla import keys
from vla.config import Config
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError

log = logging.getLogger(__name__)

PRETRAINING_KINDS = ("video", "image-text")


def check_pretraining_stores(cfg: Config) -> None:
    """Pretraining needs at least one video or image-text store (robot stores may join the mixture)."""
    kinds = {s.path: TrajectoryStore.open(s.path).kind for s in cfg.data.stores}
    if kinds and not any(k in PRETRAINING_KINDS for k in kinds.values()):
        listed = ", ".join(f"{p} ({k})" for p, k in kinds.items())
        raise UserError(f"no video or image-text store among {listed}; use `vla train` to finetune on robot data")


def check_finetuning_stores(cfg: Config) -> None:
    """`vla train` learns a policy that acts: at least one store must hold actions (video and image-text
    stores may join the mixture). Without, it would silently make a policy without an action head."""
    stores = {s.path: TrajectoryStore.open(s.path) for s in cfg.data.stores}
    if stores and not any(keys.ACTION in store.specs for store in stores.values()):
        listed = ", ".join(f"{p} ({store.kind})" for p, store in stores.items())
        raise UserError(f"no store among {listed} holds actions; vla train finetunes a policy that acts: pretrain "
                        "on video/image-text with vla pretrain, then vla train --init-from on robot data")  # fmt: skip


def load_image(path: str | Path, size: int) -> np.ndarray:
    from vla.datasets.importers import read_image

    try:
        return read_image(Path(path), size)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def _fit(frame: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    from vla.datasets.importers import square_resize

    return frame if frame.shape[:2] == (size, size) else square_resize(Image.fromarray(frame), size)


def captions(policy_dir: str, images: list[str] | None = None, store: str | None = None, episodes=(0,)) -> list[dict]:
    """Generated captions for image files, or for a store's episodes (their first frame), with the
    store's own text beside them."""
    from vla.checkpoint import load_policy

    if not images and not store:
        raise UserError("give --image FILE (one or more) or --store STORE --episode N")
    policy = load_policy(policy_dir)
    if policy.model.text is None:
        raise UserError(f"{policy_dir} has no text head (it was saved before captioning existed)")
    if not policy.model.text.trained:
        log.warning("%s was never trained on image-text data: its text head is untrained and its captions are "
                    "noise; pretrain one with image-text stores (vla pretrain)", policy_dir)  # fmt: skip
    size = policy.features[policy.image_keys[0]].shape[0]
    out = []
    for path in images or []:
        out.append({"source": str(path), "caption": policy.caption(load_image(path, size))})
    if store:
        s = TrajectoryStore.open(store)
        image_keys = [k for k in s.specs if keys.is_image_key(k)]
        for i in episodes:
            if not 0 <= i < s.num_episodes:
                raise UserError(f"episode {i} is out of range: {store} has {s.num_episodes} episodes")
            start = int(s.episode_starts[i])
            frame = s.read(image_keys[0], start, start + 1)[0]
            text = str(s.meta(keys.INSTRUCTION)[i])
            out.append({"source": f"{store}#{i}", "caption": policy.caption(_fit(frame, size)), "stored": text})
    return out
