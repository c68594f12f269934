"""Does the image matter to image-text pretraining? Train captioning variants on one image-text store with
the same seeds and budget, then score each on held-out scenes: the caption loss with each caption's own
image against the same captions under another scene's image, and caption -> image retrieval (top-1/top-5).

    python bench/caption_ablation.py --train data/tt-captions.zarr --heldout data/tt-heldout.zarr \
        --variants caption,shuffled,contrastive --steps 400 --preset small

Variants (each a policy trained in this process, fp32, from the same initial weights and batch order):

    caption      captioning alone (the text loss), the README's recipe
    shuffled     captioning with every training caption under a random other image: the control; what it
                 learns is the captions' language prior alone
    contrastive  captioning plus the contrastive image-text loss (policy.contrastive_weight, CLIP)

If `caption` ends no lower on the own images than under shuffled ones, and no lower than `shuffled`, the
captioner has learnt the language of the captions, not the images.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
import yaml

from vla import keys
from vla.config import StoreConfig, load_config
from vla.datasets.store import TrajectoryStore
from vla.grounding import derangement, retrieval_ranks, topk_accuracy
from vla.policies.vla_policy import VLAPolicy
from vla.train import build_data

VARIANTS = {
    "caption": dict(contrastive_weight=0.0),
    "shuffled": dict(contrastive_weight=0.0),
    "contrastive": dict(contrastive_weight=1.0),
}


def load_pairs(path: str, key: str | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """An image-text store in memory: frames (N, H, W, 3) uint8, captions (N,), scene seeds (N,)."""
    store = TrajectoryStore.open(path)
    key = key or next(k for k in store.specs if keys.is_image_key(k))
    frames = store.read(key, 0, store.num_steps)[store.episode_starts]
    return frames, [str(t) for t in store.meta(keys.INSTRUCTION)], store.meta(keys.SEED)


def make_policy(store: str, preset: str, seed: int, **policy) -> VLAPolicy:
    cfg = load_config(overrides=[f"policy.preset={preset}", "policy.history=1", "train.bf16=false"])
    cfg.data.stores = [StoreConfig(store)]
    _, _, _, features, stats = build_data(cfg)
    torch.manual_seed(seed)
    return VLAPolicy(replace(cfg.policy, features=features, **policy), stats)


def train_variant(policy: VLAPolicy, data, variant: str, steps: int, batch: int, lr: float, seed: int) -> float:
    """AdamW with linear warmup (20 steps) for `steps` steps; returns seconds taken."""
    frames, captions, seeds = data
    key = policy.image_keys[0]
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    rng = np.random.default_rng(seed)
    shown = derangement(seeds, rng) if variant == "shuffled" else np.arange(len(captions))
    start = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(len(captions), batch, replace=False)
        b = {key: torch.as_tensor(frames[shown[idx]])[:, None], keys.CAPTION: [captions[i] for i in idx]}
        loss, metrics = policy(b)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  {variant} step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(policy: VLAPolicy, data, seed: int = 0) -> dict:
    """Held-out caption loss (nats/token) with own vs another scene's image; retrieval by caption likelihood."""
    from bench.caption_grounding import caption_scores

    policy.eval()
    frames, captions, seeds = data
    scenes, first = np.unique(seeds, return_index=True)
    own = np.searchsorted(scenes, seeds)
    other = derangement(seeds, np.random.default_rng(seed))
    nll_own = caption_nll(policy, frames, captions)
    nll_other = caption_nll(policy, frames[other], captions)
    scores = caption_scores(policy, frames[first], captions)  # (captions, scenes) log p(caption | scene)
    ranks = retrieval_ranks(scores, own)
    policy.train()
    return {"nll_own": nll_own, "nll_other": nll_other, "gap": nll_other - nll_own,
            "top1": topk_accuracy(ranks, 1), "top5": topk_accuracy(ranks, 5), "scenes": len(scenes),
            "chance_top1": 1 / len(scenes), "chance_top5": min(1.0, 5 / len(scenes))}  # fmt: skip


def caption_nll(policy: VLAPolicy, frames: np.ndarray, captions: list[str], batch: int = 64) -> float:
    """Mean next-token cross-entropy (nats per token) of `captions` under `frames` (one per caption)."""
    key, total, count = policy.image_keys[0], 0.0, 0
    for i in range(0, len(captions), batch):
        b = {key: torch.as_tensor(frames[i : i + batch])[:, None], keys.CAPTION: captions[i : i + batch]}
        n = len(b[keys.CAPTION])
        total += float(policy._text_loss(b)) * n
        count += n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--variants", default="caption,shuffled,contrastive")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="policy field=value for every variant")
    args = parser.parse_args()
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    train, held = load_pairs(args.train), load_pairs(args.heldout)
    rows = []
    for variant in args.variants.split(","):
        policy = make_policy(args.train, args.preset, args.seed, **{**VARIANTS[variant], **extra})
        before = evaluate(policy, held) if not rows else rows[0]["before"]
        seconds = train_variant(policy, train, variant, args.steps, args.batch, args.lr, args.seed)
        rows.append({"variant": variant, "before": before, "after": evaluate(policy, held), "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    print(f"{'variant':12s} {'nll own':>8s} {'nll other':>9s} {'gap':>6s} {'top-1':>6s} {'top-5':>6s} {'s':>5s}")
    for r in rows:
        a = r["after"]
        print(f"{r['variant']:12s} {a['nll_own']:8.3f} {a['nll_other']:9.3f} {a['gap']:6.3f} {a['top1']:6.1%} "
              f"{a['top5']:6.1%} {r['seconds']:5.0f}")  # fmt: skip
    a = rows[0]["after"]
    print(f"chance: top-1 {a['chance_top1']:.1%}, top-5 {a['chance_top5']:.1%} over {a['scenes']} held-out scenes")
    print(json.dumps({"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
