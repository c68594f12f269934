"""Is a captioner grounded in the image? Score every caption of a (held-out) image-text store under every
scene's image and count how often its own image makes it most likely (chance: one over the scenes).

    python bench/caption_grounding.py --policy runs/pretrain --store data/tt-captions-heldout.zarr

Greedy captions (`vla caption`) tend towards the captions most frequent in training, since a scene has
many true descriptions; retrieval asks the sharper question of whether the image changes the model's
belief about the text. Scenes are told apart by the store's seed (collected) or first frame index.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vla import keys
from vla.checkpoint import load_policy
from vla.datasets.store import TrajectoryStore
from vla.policies.vla_policy import VLAPolicy


@torch.no_grad()
def caption_log_likelihoods(policy: VLAPolicy, images: torch.Tensor, text: str) -> torch.Tensor:
    """log p(text | image) for each image (N, 1, H, W, 3) uint8 -> (N,)."""
    tokens = policy.language.tokenizer([text] * len(images), return_tensors="pt", truncation=True,
                                       max_length=policy.config.max_text_len + 1)  # fmt: skip
    ids = tokens["input_ids"]
    lang, obs = policy._caption_inputs({policy.image_keys[0]: images})
    logits = policy.model.text.logits(policy.model.text_states(lang, obs, ids[:, :-1])).float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0].sum(1)


@torch.no_grad()
def caption_scores(policy: VLAPolicy, frames: np.ndarray, captions: list[str]) -> np.ndarray:
    """log p(caption | scene image) for every caption under every scene: frames (S, H, W, 3) uint8 ->
    (C, S). The image tokens are encoded once; each caption is scored against all S images in one batch."""
    images = torch.as_tensor(frames)[:, None]
    lang, obs = policy._caption_inputs({policy.image_keys[0]: images})
    tokenizer, out = policy.language.tokenizer, np.zeros((len(captions), len(frames)))
    for c, text in enumerate(captions):
        ids = tokenizer([text], return_tensors="pt", truncation=True, max_length=policy.config.max_text_len + 1)
        ids = ids["input_ids"].expand(len(frames), -1)
        logits = policy.model.text.logits(policy.model.text_states(lang, obs, ids[:, :-1])).float()
        out[c] = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0].sum(1).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--policy", required=True)
    parser.add_argument("--store", required=True, help="an image-text store (one image per scene seed)")
    args = parser.parse_args()
    policy = load_policy(args.policy)
    store = TrajectoryStore.open(args.store)
    key = policy.image_keys[0]
    frames = store.read(key, 0, store.num_steps)
    texts = [str(t) for t in store.meta(keys.INSTRUCTION)]
    seeds = store.meta(keys.SEED).tolist()
    scenes = sorted(set(seeds))
    images = torch.as_tensor(np.stack([frames[seeds.index(s)] for s in scenes]))[:, None]
    hits = sum(scenes[int(caption_log_likelihoods(policy, images, t).argmax())] == s for t, s in zip(texts, seeds))
    print(f"caption -> image retrieval: {hits}/{len(texts)} = {hits / len(texts):.1%} "
          f"(chance {1 / len(scenes):.1%}, {len(scenes)} scenes)")  # fmt: skip
    print(json.dumps({"policy": args.policy, "store": args.store, "captions": len(texts), "scenes": len(scenes),
                      "retrieval": hits / len(texts), "chance": 1 / len(scenes)}))  # fmt: skip


if __name__ == "__main__":
    main()
