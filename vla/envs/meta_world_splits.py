"""Meta-World's scene splits, so that `vla eval` never replays a scene `vla collect` drew for training.

A Meta-World scene is one of the 50 variants (object and goal placements) its benchmark draws per task,
and an episode's seed picks it: variant `seed % 50` (`vla.envs.meta_world.MetaWorldEnv.reset`). The
variants are split once, for every task:

    train    variants 0-39    what `vla collect` draws (its default split)
    unseen   variants 40-49   held out from collection; what `vla eval` draws by default

Seeds come from `vla.envs.episode_seed`, which moves each seed onto its split's variants with
`fit_seed`. Light on purpose (no Meta-World import): seeds are derived without building an env.
"""

from __future__ import annotations

N_VARIANTS = 50  # object/goal placements Meta-World draws per task (metaworld._N_GOALS)
SPLIT_VARIANTS = {"train": range(0, 40), "unseen": range(40, 50)}
MAX_SEED = 2**31 - 1  # episode seeds are 31-bit


def variant(seed: int) -> int:
    """The variant (scene) an episode seed picks."""
    return int(seed) % N_VARIANTS


def fit_seed(seed: int, split: str) -> int:
    """`seed` if its variant is one of `split`'s; else the seed with its variant replaced by one of the
    split's, chosen by the seed's other digits (seed // 50), so that seeds drawn uniformly pick the split's
    variants uniformly. A pure function; seeds already in the split (every train seed stored before the
    variants were split, if its variant is 0-39) are unchanged."""
    variants = SPLIT_VARIANTS[split]
    if variant(seed) in variants:
        return int(seed)
    fitted = int(seed) - variant(seed) + variants[(int(seed) // N_VARIANTS) % len(variants)]
    return fitted if fitted <= MAX_SEED else fitted - N_VARIANTS


def describe(split: str) -> str:
    """What a split's scenes are, for evaluation reports."""
    variants = SPLIT_VARIANTS[split]
    which = f"variants {variants[0]}-{variants[-1]} of each task's {N_VARIANTS}"
    if split == "unseen":
        return f"held-out variants: {which}, never collected (vla collect draws variants 0-39)"
    return f"training variants: {which}, the scenes vla collect draws (the seeds differ, the scenes repeat)"
