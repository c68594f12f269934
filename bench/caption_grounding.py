"""Is an image-text model grounded in the pixels? Caption -> image retrieval and the truth of its generated
captions, on a (held-out) image-text store.

- caption -> image retrieval: every caption scored under every scene's image, by the caption's log
  likelihood (the captioner) and, where the model has one, by the contrastive head's similarity; top-1 and
  top-5 with chance beside them (k / scenes);
- generated captions: one greedy caption per scene, parsed into claims (colours, kinds, relations,
  counts, states) and checked against the scene's facts recorded at collection (the store's `scene`
  metadata, `vla.envs.tabletop.caption_facts`): the share of captions whose claims of each kind are true.

    python bench/caption_grounding.py --policy runs/pretrain --store data/tt-captions-heldout.zarr

Scenes are told apart by the store's seed. Collect the held-out store with another `--seed` than the
training store (its scenes are then new). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vla import keys
from vla.checkpoint import load_policy
from vla.datasets.store import TrajectoryStore
from vla.envs.tabletop.caption_facts import Scene, truth_shares
from vla.grounding import retrieval_ranks, topk_accuracy
from vla.policies.vla_policy import VLAPolicy


@torch.no_grad()
def caption_scores(policy: VLAPolicy, frames: np.ndarray, captions: list[str]) -> np.ndarray:
    """log p(caption | scene image) for every caption under every scene: frames (S, H, W, 3) uint8 ->
    (C, S). The image tokens are encoded once; each caption is scored against all S images in one batch."""
    images = torch.as_tensor(frames)[:, None].to(policy._device())
    lang, obs = policy._caption_inputs({policy.image_keys[0]: images})
    tokenizer, out = policy.language.tokenizer, np.zeros((len(captions), len(frames)))
    for c, text in enumerate(captions):
        ids = tokenizer([text], return_tensors="pt", truncation=True, max_length=policy.config.max_text_len + 1)
        ids = ids["input_ids"].to(policy._device()).expand(len(frames), -1)
        logits = policy.model.text.logits(policy.model.text_states(lang, obs, ids[:, :-1])).float()
        out[c] = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0].sum(1).cpu().numpy()
    return out


@torch.no_grad()
def contrastive_scores(policy: VLAPolicy, frames: np.ndarray, captions: list[str]) -> np.ndarray | None:
    """The contrastive head's similarity of every caption to every scene image -> (C, S); None without a head."""
    head = policy.model.contrastive
    if head is None:
        return None
    lang, obs = policy._caption_inputs({policy.image_keys[0]: torch.as_tensor(frames)[:, None].to(policy._device())})
    cls = torch.full((len(frames), 1), policy.language.tokenizer.cls_token_id, device=policy._device())
    _, image = policy.model.image_text_states(lang, obs, cls)  # the image tokens never read the text
    return head.similarity(image.mean(1), policy._lang(captions)).T.float().cpu().numpy()


def retrieval(scores: np.ndarray, own: np.ndarray) -> dict:
    ranks = retrieval_ranks(scores, own)
    return {"top1": topk_accuracy(ranks, 1), "top5": topk_accuracy(ranks, 5)}


def grounding(policy: VLAPolicy, store_path: str) -> dict:
    """Retrieval (by likelihood and by contrast) and the truth of generated captions on one store."""
    policy.eval()
    store = TrajectoryStore.open(store_path)
    key = next(k for k in policy.image_keys if k in store.specs)
    frames = store.read(key, 0, store.num_steps)[store.episode_starts]
    texts = [str(t) for t in store.meta(keys.INSTRUCTION)]
    seeds, facts = store.meta(keys.SEED), store.meta(keys.SCENE)
    scenes, first = np.unique(seeds, return_index=True)
    own = np.searchsorted(scenes, seeds)
    out = {"store": store_path, "captions": len(texts), "scenes": len(scenes),
           "chance": {"top1": 1 / len(scenes), "top5": min(1.0, 5 / len(scenes))},
           "likelihood": retrieval(caption_scores(policy, frames[first], texts), own)}  # fmt: skip
    similarity = contrastive_scores(policy, frames[first], texts)
    out["contrastive"] = retrieval(similarity, own) if similarity is not None else None
    generated = [policy.caption(frames[i]) for i in first]
    out["examples"] = [{"generated": g, "stored": texts[i]} for g, i in list(zip(generated, first))[:5]]
    if all(facts[first]):
        out["generated"] = truth_shares(generated, [Scene.from_json(facts[i]) for i in first])
    else:
        out["generated"] = None  # a store collected before scene facts were recorded
    return out


def format_table(result: dict) -> str:
    chance = result["chance"]
    lines = [f"retrieval over {result['scenes']} held-out scenes ({result['captions']} captions)",
             f"{'by':12s} {'top-1':>7s} {'top-5':>7s}",
             f"{'chance':12s} {chance['top1']:7.1%} {chance['top5']:7.1%}"]  # fmt: skip
    for by in ("likelihood", "contrastive"):
        if result[by] is not None:
            lines.append(f"{by:12s} {result[by]['top1']:7.1%} {result[by]['top5']:7.1%}")
    if result["generated"] is None:
        lines.append("generated captions: not checked (the store has no scene facts: re-collect it)")
        return "\n".join(lines)
    lines += ["", f"generated captions, one per scene: {'claim':10s} {'captions':>8s} {'true':>7s}"]
    for claim, share in result["generated"].items():
        true = "-" if share["true"] is None else f"{share['true']:.1%}"
        lines.append(f"{'':35s} {claim:10s} {share['captions']:8d} {true:>7s}")
    lines += [f"  e.g. {e['generated']!r} (stored: {e['stored']!r})" for e in result["examples"][:3]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    parser.add_argument("--policy", required=True)
    parser.add_argument("--store", required=True, help="an image-text store of held-out scenes")
    args = parser.parse_args()
    result = grounding(load_policy(args.policy), args.store)
    print(format_table(result))
    print(json.dumps({"policy": args.policy, **result}))


if __name__ == "__main__":
    main()
