"""Does the image matter to image-text pretraining? Train captioning variants on one image-text store with
the same seeds and budget, then score each on held-out scenes: the caption loss with each caption's own
image against the same captions under another scene's image, and caption -> image retrieval (top-1/top-5).

    python bench/caption_ablation.py --train data/tt-captions.zarr --heldout data/tt-heldout.zarr \
        --variants caption,shuffled,contrastive --steps 400 --preset small

Variants (each a policy trained in this process, fp32, from the same initial weights and batch order, on
`--device`):

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
from caption_grounding import grounding
from common import bench_device

from vla import keys
from vla.config import StoreConfig, load_config
from vla.datasets.store import TrajectoryStore
from vla.grounding import derangement
from vla.policies.vla_policy import VLAPolicy
from vla.train_data import build_data

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


def make_policy(store: str, preset: str, seed: int, device: torch.device | str = "cpu", **policy) -> VLAPolicy:
    cfg = load_config(overrides=[f"policy.preset={preset}", "policy.history=1", "train.bf16=false"])
    cfg.data.stores = [StoreConfig(store)]
    _, _, _, features, stats = build_data(cfg)
    torch.manual_seed(seed)
    return VLAPolicy(replace(cfg.policy, features=features, **policy), stats).to(device)


def train_variant(policy: VLAPolicy, data, variant: str, steps: int, batch: int, lr: float, seed: int) -> float:
    """AdamW with linear warmup (20 steps) for `steps` steps; returns seconds taken."""
    frames, captions, seeds = data
    key = policy.image_keys[0]
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    rng = np.random.default_rng(seed)
    shown = derangement(seeds, np.random.default_rng(seed + 1)) if variant == "shuffled" else np.arange(len(seeds))
    start = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(len(captions), batch, replace=False)
        b = {key: torch.as_tensor(frames[shown[idx]])[:, None].to(policy._device()),
             keys.CAPTION: [captions[i] for i in idx]}  # fmt: skip
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
def evaluate(policy: VLAPolicy, data, store: str, seed: int = 0) -> dict:
    """Held-out caption loss (nats/token) with the own image and with another scene's, and `grounding`'s
    retrieval and generated-caption truth on the held-out store."""
    frames, captions, seeds = data
    policy.eval()
    nll_own = caption_nll(policy, frames, captions)
    nll_other = caption_nll(policy, frames[derangement(seeds, np.random.default_rng(seed))], captions)
    out = {"nll_own": nll_own, "nll_other": nll_other, "gap": nll_other - nll_own, **grounding(policy, store)}
    policy.train()
    return out


def caption_nll(policy: VLAPolicy, frames: np.ndarray, captions: list[str], batch: int = 64) -> float:
    """Mean next-token cross-entropy (nats per token) of `captions` under `frames` (one per caption)."""
    key, total, count = policy.image_keys[0], 0.0, 0
    for i in range(0, len(captions), batch):
        b = {key: torch.as_tensor(frames[i : i + batch])[:, None].to(policy._device()),
             keys.CAPTION: captions[i : i + batch]}  # fmt: skip
        n = len(b[keys.CAPTION])
        total += float(policy._text_loss(b)) * n
        count += n
    return total / count


def describe_data(train_store: str, held_store: str) -> dict:
    """What the captions leave to the pixels: distinct templates (scene words masked) and their entropy
    (bits), the share of words only the scene decides (colours, kinds, numbers), colour words per caption;
    and how large objects are in the held-out images (visible pixels per kind, median)."""
    from collections import Counter, defaultdict

    from vla.envs.tabletop.caption_facts import Scene, scene_words, template_of

    captions = load_pairs(train_store)[1]
    counts = np.array(list(Counter(template_of(c) for c in captions).values())) / len(captions)
    words = np.array([scene_words(c) for c in captions])
    pixels = defaultdict(list)
    for facts in dict.fromkeys(TrajectoryStore.open(held_store).meta(keys.SCENE).tolist()):
        for thing in Scene.from_json(facts).things if facts else []:
            pixels[thing.kind].append(thing.pixels)
    bits = float(-(counts * np.log2(counts)).sum())
    return {"captions": len(captions), "templates": len(counts), "template_bits": bits,
            "scene_word_share": float(words[:, 0].sum() / words[:, 1].sum()),
            "colour_words_per_caption": float(np.mean([template_of(c).count("<colour>") for c in captions])),
            "median_pixels": {k: float(np.median(v)) for k, v in pixels.items()}}  # fmt: skip


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
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) or a torch device")
    args = parser.parse_args()
    device = bench_device(args.device)
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    train, held = load_pairs(args.train), load_pairs(args.heldout)
    data = describe_data(args.train, args.heldout)
    print(f"training captions: {data['captions']}, {data['templates']} templates ({data['template_bits']:.2f} bits), "
          f"{data['scene_word_share']:.1%} of words only the scene decides, {data['colour_words_per_caption']:.2f} "
          f"colours per caption; median visible pixels per object: {data['median_pixels']}", flush=True)  # fmt: skip
    rows = []
    for variant in args.variants.split(","):
        policy = make_policy(args.train, args.preset, args.seed, device, **{**VARIANTS[variant], **extra})
        seconds = train_variant(policy, train, variant, args.steps, args.batch, args.lr, args.seed)
        rows.append({"variant": variant, "after": evaluate(policy, held, args.heldout), "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    print(format_rows(rows))
    print(json.dumps({"args": vars(args), "data": data, "rows": rows}))


def format_rows(rows: list[dict]) -> str:
    head = f"{'variant':12s} {'nll own':>8s} {'other':>7s} {'gap':>6s} {'LL top-1':>8s} {'top-5':>6s} "
    lines = [head + f"{'CLIP top-1':>10s} {'top-5':>6s} {'colours':>7s} {'kinds':>6s} {'relations':>9s} {'s':>5s}"]
    for r in rows:
        a, gen = r["after"], r["after"]["generated"] or {}
        clip = a["contrastive"] if a["contrastive"] and r["variant"] == "contrastive" else {"top1": None, "top5": None}
        cells = [pct(clip["top1"]), pct(clip["top5"])] + [pct(gen.get(k, {}).get("true")) for k in CLAIMS]
        lines.append(f"{r['variant']:12s} {a['nll_own']:8.3f} {a['nll_other']:7.3f} {a['gap']:6.3f} "
                     f"{a['likelihood']['top1']:8.1%} {a['likelihood']['top5']:6.1%} {cells[0]:>10s} {cells[1]:>6s} "
                     f"{cells[2]:>7s} {cells[3]:>6s} {cells[4]:>9s} {r['seconds']:5.0f}")  # fmt: skip
    a = rows[0]["after"]
    lines.append(f"chance: top-1 {a['chance']['top1']:.1%}, top-5 {a['chance']['top5']:.1%} over {a['scenes']} "
                 "held-out scenes; nll in nats per caption token; colours/kinds/relations: share of generated "
                 "captions (one per scene) whose claims of that kind are true")  # fmt: skip
    return "\n".join(lines)


CLAIMS = ("colour", "kind", "relation")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


if __name__ == "__main__":
    main()
