"""Is an image-text model grounded in the pixels? Retrieval metrics and image shuffles.

Retrieval: every caption of a held-out store is scored under every scene's image (a caption's log
likelihood, or a contrastive similarity); the rank of its own scene among them gives top-k accuracy,
against chance k / scenes. A model that ignores the image ranks every scene alike and sits at chance.

The facts a generated caption states (colours, kinds, relations, counts) are checked against the scene
in `vla.envs.tabletop.caption_facts`.
"""

from __future__ import annotations

import numpy as np


def retrieval_ranks(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """scores (C, S): caption c's score under scene s, higher is better; own (C,): each caption's scene
    -> (C,) 0-based rank of the own scene. Ties count against it (a model that scores every scene alike
    ranks its own last, never first by luck)."""
    scores, own = np.asarray(scores, dtype=np.float64), np.asarray(own)
    if scores.ndim != 2 or len(own) != len(scores):
        raise ValueError(f"scores must be (captions, scenes) with one own scene per caption, got {scores.shape} "
                         f"and {len(own)} own scenes")  # fmt: skip
    mine = scores[np.arange(len(own)), own][:, None]
    return (scores >= mine).sum(1) - 1


def topk_accuracy(ranks: np.ndarray, k: int) -> float:
    """Share of captions whose own scene ranks among the top `k` (ranks from `retrieval_ranks`)."""
    ranks = np.asarray(ranks)
    return float((ranks < k).mean()) if len(ranks) else float("nan")


def derangement(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) indices that send every item to an item of another group (e.g. a caption to an image of another
    scene), drawn from `rng`. Raises ValueError when one group holds more than half the items (no such map)."""
    groups = np.asarray(groups)
    n = len(groups)
    _, counts = np.unique(groups, return_counts=True)
    if n and counts.max() * 2 > n:
        raise ValueError(f"no shuffle sends every item to another group: one group holds {counts.max()} of {n}")
    order = rng.permutation(n)
    # Sorting by group and rolling by the largest group's size sends every item outside its group.
    order = order[np.argsort(groups[order], kind="stable")]
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, counts.max())
    return out
