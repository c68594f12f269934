"""`--init-from`: start a run from another checkpoint's weights, matched by name and shape (the slot tables by
token group), and the report of what matched, what was skipped and what starts fresh."""

from __future__ import annotations

import logging

from vla import checkpoint, keys
from vla.model.layout import TokenLayout
from vla.policies.vla_policy import VLAPolicy

log = logging.getLogger(__name__)


def init_from(policy: VLAPolicy, directory: str) -> dict[str, list[str]]:
    """Load the weights of a checkpoint whose names and shapes match; report what matched, what was
    skipped (absent here, another shape, or the normalizer: statistics come from this run's data) and
    what starts fresh.

    The slot tables (`model.obs_slots`, `model.readout_slots`: one row per token of each layout group) differ
    in shape whenever the two models have other cameras or one has no state (pretraining on image-text data of
    one camera): at the same width they are matched by group instead, the rows of every group both layouts have
    at the same size (the [ACT] readout, a shared camera's image tokens) loaded, the others left fresh; such a
    table counts as matched when any of its rows were."""
    source = checkpoint.load_weights(directory)
    own = policy.state_dict()
    matched = [k for k, v in source.items()
               if k in own and own[k].shape == v.shape and not k.startswith("normalizer.")]  # fmt: skip
    loaded = {k: source[k] for k in matched}
    theirs, ours = _layout(checkpoint.load_policy_config(directory)), policy.model.layout
    for name, groups in (("model.obs_slots", "observation"), ("model.readout_slots", "readout")):
        if name in own and name in source and name not in matched and own[name].shape[1:] == source[name].shape[1:]:
            rows = _shared_rows(theirs, ours, groups)
            if rows:
                table = own[name].clone()
                for mine, their in rows:
                    table[mine] = source[name][their]
                loaded[name] = table
                matched.append(name)
    skipped = [k for k in source if k not in matched]
    fresh = [k for k in own if k not in matched]
    policy.load_state_dict({**own, **loaded})
    if len(matched) < len(own) / 2:  # a pretrained model leaves only a few heads fresh, not most of the model
        log.warning("--init-from %s matched only %d of this model's %d tensors (another preset or other sizes?); "
                    "the other %d start fresh", directory, len(matched), len(own), len(fresh))  # fmt: skip
    return {"matched": matched, "skipped": skipped, "fresh": fresh}


def _layout(config) -> TokenLayout:
    """The token layout of a policy config (its cameras in feature order, as `VLAPolicy` builds it)."""
    cameras = [keys.camera_of(k) for k in config.features if keys.is_image_key(k)]
    return TokenLayout(cameras, config.n_img_tokens, config.n_obs_queries)


def _shared_rows(theirs: TokenLayout, ours: TokenLayout, groups: str) -> list[tuple[slice, slice]]:
    """(our rows, their rows) of every group of `groups` ("observation" or "readout") both layouts have, at the
    same number of tokens."""
    their_groups, our_groups = getattr(theirs, groups), getattr(ours, groups)
    their_rows, our_rows = theirs.group_slices(their_groups), ours.group_slices(our_groups)
    sizes = {g.name: g.n_tokens for g in their_groups}
    return [(our_rows[g.name], their_rows[g.name]) for g in our_groups if sizes.get(g.name) == g.n_tokens]


def module_group(name: str) -> str:
    """The module a tensor belongs to, for reports: `model.trunk`, `model.vision`, `normalizer`."""
    return "normalizer" if name.startswith("normalizer.") else ".".join(name.split(".")[:2])


def summarize_init(report: dict[str, list[str]]) -> str:
    """One line per category, tensors grouped by module: `matched 96 (model.trunk 50, model.vision 30, ...)`."""
    lines = []
    for category in ("matched", "skipped", "fresh"):
        groups: dict[str, int] = {}
        for name in report[category]:
            group = module_group(name)
            groups[group] = groups.get(group, 0) + 1
        detail = ", ".join(f"{g} {n}" for g, n in sorted(groups.items()))
        lines.append(f"  {category:8s} {len(report[category]):4d} tensors" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)
