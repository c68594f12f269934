"""Is an image-text model grounded in the pixels? Caption -> image retrieval and the truth of its generated
captions, on a (held-out) image-text store.

- caption -> image retrieval: every caption scored under every scene's image, by the caption's log
  likelihood (the captioner) and, where the model has one, by the contrastive head's similarity; top-1 and
  top-5 with chance beside them (k / scenes);
- generated captions: one greedy caption per scene, parsed into claims (colours, kinds, relations,
  counts, states) and checked against the scene's facts recorded at collection (the store's `scene`
  metadata, `vla.envs.tabletop.caption_facts`): the share of captions whose claims of each kind are true;
- phrase grounding, where the policy has a grounding head (`policy.grounding_weight` > 0): for every object of
  a scene that colour and kind pick out ("the red block"), where the policy says it stands against where it
  stands (median error in cm, and the share within 3 cm), beside the mean position of those objects, the mean
  position of objects of its kind (the drawer and the button never move: their kind says where they are), and
  an object of the scene picked at random (knows where every object is, not which one is named); for the
  movable objects apart, those of the colour x kind combinations the tabletop unseen split holds out of robot
  data (a purple block) apart, and each kind.

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
from vla.envs.tabletop.caption_facts import Scene, referents, truth_shares
from vla.envs.tabletop.captions import MOVABLE_KINDS
from vla.envs.tabletop.splits import HELD_OUT_COLOURS
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
    out["generated"] = out["phrase_grounding"] = None  # a store collected before scene facts were recorded
    if all(facts[first]):
        scene_facts = [Scene.from_json(facts[i]) for i in first]
        out["generated"] = truth_shares(generated, scene_facts)
        if policy.model.grounding is not None:
            out["phrase_grounding"] = phrase_grounding(policy, key, frames[first], scene_facts)
    return out


def phrase_grounding(policy: VLAPolicy, key: str, frames: np.ndarray, scenes: list[Scene]) -> dict:
    """{group: {predictor: {"error_cm", "within_3cm"}, "objects": n}} over every referent of every scene. Groups:
    all, the movable objects (MOVABLE_KINDS) apart from the furniture (drawer, button: fixed in place, so their
    kind alone says where they are), the movable ones of the colour x kind combinations the unseen split holds
    out of robot data and of the others, and each kind."""
    rows = [(s, r) for s, scene in enumerate(scenes) for r in referents(scene)]
    target = np.array([(r.lateral, r.depth) for _, r in rows])
    kinds = np.array([r.kind for _, r in rows])
    idx = np.array([s for s, _ in rows])
    phrases = [r.phrase() for _, r in rows]
    pred = np.concatenate([policy.locate(frames[idx[i : i + 256]], phrases[i : i + 256], key)
                           for i in range(0, len(rows), 256)])  # fmt: skip
    kind_mean = {k: target[kinds == k].mean(0) for k in set(kinds)}
    errors = {
        "policy": np.linalg.norm(pred - target, axis=1),
        "mean_position": np.linalg.norm(target.mean(0) - target, axis=1),
        "kind_mean": np.linalg.norm(np.array([kind_mean[k] for k in kinds]) - target, axis=1),
    }
    # A random object of the scene: the mean distance to, and share within 3 cm of, each of its visible objects.
    others = [np.linalg.norm(np.array([(t.lateral, t.depth) for t in scenes[s].visible]) - t0, axis=1)
              for (s, _), t0 in zip(rows, target)]  # fmt: skip
    movable = np.isin(kinds, MOVABLE_KINDS)
    held = np.array([r.colour in HELD_OUT_COLOURS.get(r.kind, ()) for _, r in rows])
    groups = {"all": np.ones(len(rows), bool), "movable": movable, "furniture": ~movable,
              "movable_robot_colours": movable & ~held, "movable_held_out_colours": movable & held,
              **{f"kind_{k}": kinds == k for k in sorted(set(kinds))}}  # fmt: skip
    out = {}
    for group, keep in groups.items():
        if not keep.any():
            continue
        out[group] = {name: summary(err[keep]) for name, err in errors.items()}
        near = [o for o, k in zip(others, keep) if k]
        out[group]["random_object"] = {"error_cm": float(np.median([o.mean() for o in near]) * 100),
                                       "within_3cm": float(np.mean([np.mean(o < 0.03) for o in near]))}  # fmt: skip
        out[group]["objects"] = int(keep.sum())
    return out


def summary(err: np.ndarray) -> dict:
    return {"error_cm": float(np.median(err) * 100), "within_3cm": float(np.mean(err < 0.03))}


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
    if result["phrase_grounding"] is not None:
        columns = {"policy": "policy", "mean_position": "mean position", "kind_mean": "its kind's mean",
                   "random_object": "random object"}  # fmt: skip
        head = " ".join(f"{c:>16s}" for c in columns.values())
        lines += ["", f"{'phrase grounding':24s} {'objects':>7s} {head}"]
        for group, r in result["phrase_grounding"].items():
            cells = [f"{r[p]['error_cm']:5.1f} cm {r[p]['within_3cm']:6.1%}" for p in columns]
            lines.append(f"{group:24s} {r['objects']:7d} " + " ".join(f"{c:>16s}" for c in cells))
        lines.append("(median error, share within 3 cm)")
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
