"""`PolicyConfig`: everything that defines a policy, and nothing about the run that trained it.

    policy = VLAPolicy(PolicyConfig(preset="tiny", features=store_features, history=2, chunk=8))

One flat dataclass, as lerobot's `ACTConfig`: the network's preset and sizes, the features it reads and
writes, the window it sees (`history`, `chunk`, `foresight_offsets`), how its chunks are executed
(`n_action_steps`, `temporal_ensemble`) and its loss weights. A checkpoint saves it as `policy.yaml`
beside the weights, so loading a policy needs nothing else; the run config (`vla.config.Config`) holds it
as its `policy` section, beside `data` and `train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from vla import keys
from vla.errors import UserError, choice_error
from vla.options import check_fields, option

PRESETS: dict[str, dict] = {
    # tests: seconds on a CPU
    "tiny": dict(
        d_model=64,
        n_layer=2,
        n_head=2,
        vit_dim=32,
        vit_layers=1,
        patch_size=8,
        n_img_tokens=2,
        n_obs_queries=2,
        decoder_dim=32,
        decoder_layers=1,
    ),
    # CPU runs: the quickstart trains it in minutes on 2 cores
    "small": dict(
        d_model=192,
        n_layer=4,
        n_head=4,
        vit_dim=128,
        vit_layers=2,
        patch_size=8,
        n_img_tokens=4,
        n_obs_queries=4,
        decoder_dim=128,
        decoder_layers=2,
    ),
    # GR-1's trunk: 384 wide, 12 layers, 12 heads; for GPUs
    "gr1": dict(
        d_model=384,
        n_layer=12,
        n_head=12,
        vit_dim=384,
        vit_layers=6,
        patch_size=8,
        n_img_tokens=9,
        n_obs_queries=9,
        decoder_dim=256,
        decoder_layers=3,
    ),
}
ACTION_HEADS = ("mlp", "flow")
FORESIGHT_DECODERS = ("residual", "mae")
GRIPPER_CHOICES = ("auto", *keys.GRIPPER_KINDS)
VISION_POS = ("learned", "sincos")
VISION_STEMS = ("patch", "conv")


@dataclass
class PolicyConfig:
    # --- the network: `preset` fills the size fields below unless they are set explicitly ---
    preset: str = option("small", choices=PRESETS, help="tiny | small | gr1")
    d_model: int = option(192, min=1, help="trunk width")
    n_layer: int = option(4, min=1, help="trunk depth")
    n_head: int = option(4, min=1, help="attention heads; must divide d_model")
    dropout: float = option(0.0, min=0.0, max=1.0, help="dropout in the trunk")
    vit_dim: int = option(128, min=1, help="vision encoder width (per camera, trained from scratch)")
    vit_layers: int = option(2, min=0, help="vision encoder depth")
    patch_size: int = option(8, min=1, help="image patch side in pixels; must divide the image size")
    n_img_tokens: int = option(4, min=1, help="perceiver-resampler latents per camera per frame")
    n_obs_queries: int = option(4, min=1, help="foresight readout tokens per camera per timestep")
    decoder_dim: int = option(128, min=1, help="foresight decoder width")
    decoder_layers: int = option(2, min=0, help="foresight decoder depth")
    foresight_decoder: str = option("residual", choices=FORESIGHT_DECODERS, help="residual (reads the current "
                                    "frame's patches, predicts the change) | mae (mask tokens rebuild the whole "
                                    "frame from the readouts)")  # fmt: skip
    action_head: str = option("mlp", choices=ACTION_HEADS, help="mlp (smooth-L1 arm + BCE gripper) | flow "
                              "(flow matching on a diffusers scheduler)")  # fmt: skip
    flow_steps: int = option(10, min=1, help="integration steps of the flow head at inference")
    gripper: str = option("auto", choices=GRIPPER_CHOICES, help="the last action dimension: binary (an open/close "
                          "command: BCE, executed as the data's open or closed value) | continuous (a position: "
                          "regressed with the arm) | none | auto (declared by the data's action spec, else "
                          "inferred from its values; training logs which)")  # fmt: skip
    vision_film: bool = option(False, help="the instruction modulates the vision encoder's patch features (FiLM, "
                               "as RT-1): its resampled tokens keep what the instruction is about")  # fmt: skip
    vision_pos: str = option("learned", choices=VISION_POS, help="the vision encoder's patch positions: learned "
                             "(from a small random start) | sincos (fixed 2D sine-cosine, MAE's)")  # fmt: skip
    vision_keypoints: int = option(0, min=0, help="spatial-softmax keypoints per camera (Levine et al. 2016) "
                                   "added to its tokens as coordinates; 0 off")  # fmt: skip
    vision_stem: str = option("patch", choices=VISION_STEMS, help="how a frame becomes patches: patch (one "
                              "linear map per patch, ViT's) | conv (stride-2 3x3 convolutions, Xiao et al. "
                              "2021)")  # fmt: skip
    language_model: str = option("minilm", help="minilm (the wheel's all-MiniLM-L6-v2) or a local transformers dir")
    max_text_len: int = option(24, min=2, help="caption tokens the text head reads and writes, [CLS] included")
    # --- what it reads and writes: {key: keys.Spec.to_json()}, filled from the training stores ---
    features: dict = field(default_factory=dict)
    # --- the window ---
    history: int = option(4, min=1, help="observation steps the model sees (GR-1's sequence length)")
    chunk: int = option(10, min=1, help="actions predicted per step (lerobot's chunk_size)")
    foresight_offsets: list[int] = option([3], min=1, help="the foreseen frames are these many steps ahead")
    every_step_loss: bool = option(False, help="supervise the readouts of every step of the window (GR-1), not "
                                   "only the last")  # fmt: skip
    random_shift: int = option(0, min=0, help="training only: shift each window's frames (history and future "
                               "together, per camera) by up to this many pixels, edges replicated (DrQ's random "
                               "shift); 0 off")  # fmt: skip
    # --- executing chunks (vla.policies.executor) ---
    n_action_steps: int = option(5, min=1, help="actions executed from each chunk before the next prediction")
    temporal_ensemble: float = option(0.0, min=0.0, help="k > 0: predict every step and average overlapping "
                                      "chunks with weights exp(-k * age) (ACT)")  # fmt: skip
    # --- loss weights ---
    action_weight: float = option(1.0, min=0.0, help="the action loss")
    foresight_weight: float = option(0.5, min=0.0, help="the foresight loss")
    text_weight: float = option(1.0, min=0.0, help="the captioning loss")
    contrastive_weight: float = option(0.0, min=0.0, help="the contrastive image-text loss beside captioning "
                                       "(CLIP's InfoNCE: image-text batches only; off until measured)")  # fmt: skip
    grounding_weight: float = option(0.0, min=0.0, help="phrase grounding on image-text batches with scene facts "
                                     "(where the named object stands, from [ACT]; off until measured)")  # fmt: skip
    gripper_weight: float = option(0.1, min=0.0, help="the gripper's BCE beside the arm's smooth-L1 (action loss)")
    foresight_stats_weight: float = option(10.0, min=0.0, help="the decoder's per-patch mean/std beside its "
                                           "normalised pixels")  # fmt: skip

    def __post_init__(self):
        check_fields(self, "policy")
        if not self.foresight_offsets or len(set(self.foresight_offsets)) != len(self.foresight_offsets):
            raise UserError(f"policy.foresight_offsets must be distinct steps ahead, at least one, got "
                            f"{self.foresight_offsets}")  # fmt: skip
        self.foresight_offsets = sorted(self.foresight_offsets)
        if self.d_model % self.n_head:
            raise UserError(f"policy.d_model {self.d_model} is not divisible by policy.n_head {self.n_head}")
        if self.n_action_steps > self.chunk:  # a chunk holds no more actions than that to execute
            raise UserError(f"policy.n_action_steps must be <= policy.chunk ({self.chunk}), got {self.n_action_steps}")


def gripper_kind(config: PolicyConfig, stats: dict | None) -> tuple[str, str]:
    """(kind, why) of the policy's gripper (`keys.GRIPPER_KINDS`): `config.gripper` unless `auto`; then the
    kind the action's feature spec declares; else inferred from the action's statistics (its last
    dimension's min, max, mean and std; see `infer_gripper`)."""
    if config.gripper != "auto":
        return config.gripper, "set in the policy config"
    action = config.features.get(keys.ACTION)
    if action is None:
        return "none", "the data has no actions"
    if action.get("gripper"):
        return action["gripper"], "declared by the data's action spec"
    if stats is None or keys.ACTION not in stats:
        raise UserError(
            "policy.gripper is auto, but the action spec declares no gripper kind and there are no "
            f"statistics to infer it from: set policy.gripper to one of {', '.join(keys.GRIPPER_KINDS)}"
        )
    return infer_gripper(*(float(np.asarray(stats[keys.ACTION][s])[-1]) for s in ("min", "max", "mean", "std")))


def infer_gripper(low: float, high: float, mean: float, std: float) -> tuple[str, str]:
    """(kind, why) of a last action dimension from its statistics, for data that does not declare it.

    binary: its values take two levels only (their variance is the most two levels allow,
    (mean - low) * (high - low - (mean - low))), or it is a command saturated at both ends of [-1, 1] (the
    convention of Meta-World's and tabletop's effort, whose experts add noise). Anything else (a
    position, a constant) is regressed as continuous.
    """
    described = f"values in [{low:g}, {high:g}]"
    if high <= low:
        return "continuous", f"inferred: a constant {low:g}"
    if low == -1.0 and high == 1.0:
        return "binary", f"inferred: {described}, a command saturated at both ends of [-1, 1]"
    if abs(std**2 - (mean - low) * (high - mean)) <= 1e-4 * (high - low) ** 2:
        return "binary", f"inferred: two values, {low:g} and {high:g}"
    return "continuous", f"inferred: {described} beyond two levels"


def resolve_gripper(config: PolicyConfig, stats: dict | None) -> tuple[PolicyConfig, str]:
    """`config` with `gripper` resolved (never `auto`), and why that kind; `config` itself is not changed."""
    kind, why = gripper_kind(config, stats)
    return replace(config, gripper=kind), why


def migrate_values(values: dict) -> dict:
    """Policy settings whose values changed form, in today's form: `gripper: true/false` (before grippers had
    kinds, true meant a binary one) -> binary / none."""
    if isinstance(values.get("gripper"), bool):
        return {**values, "gripper": "binary" if values["gripper"] else "none"}
    return values


def with_preset(values: dict) -> dict:
    """Config values with the named preset's sizes filled in where `values` does not set them."""
    preset = values.get("preset", PolicyConfig.preset)
    if preset not in PRESETS:
        raise choice_error("policy.preset", preset, PRESETS)
    return {**PRESETS[preset], **values}


# Where the fields of the run config before the policy contract (model / data / train / features) live now.
LEGACY_KEYS: dict[str, str] = {
    **{f"model.{name}": f"policy.{name}" for name in PolicyConfig.__dataclass_fields__},
    "features": "policy.features",
    **{f"data.{name}": f"policy.{name}" for name in ("history", "chunk")},
    "data.foresight_offset": "policy.foresight_offsets",
    "policy.foresight_offset": "policy.foresight_offsets",
    **{
        f"train.{name}": f"policy.{name}"
        for name in ("n_action_steps", "temporal_ensemble", "action_weight", "foresight_weight", "text_weight")
    },
}


def legacy_keys(tree: dict):
    """(old key, its new key, the section dict holding it, the field name) for each old key in `tree`."""
    for old, new in LEGACY_KEYS.items():
        *parents, leaf = old.split(".")
        node = tree
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            yield old, new, node, leaf


def migrate_legacy(tree: dict) -> dict:
    """A run config tree written by an earlier version -> today's layout (checkpoints from this repository
    keep loading). Trees without old keys come back unchanged.

    - before the policy contract: `model`/`data`/`train`/`features` keys move to `policy` (`LEGACY_KEYS`);
    - before several foresight horizons: `foresight_offset: 3` becomes `foresight_offsets: [3]`;
    - before the residual decoder: a policy without `foresight_decoder` has the MAE-style one, and was
      supervised at the last step only."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for _, new, node, leaf in list(legacy_keys(tree)):
        tree.setdefault("policy", {})[new.split(".", 1)[1]] = node.pop(leaf)
    if tree.get("model") == {}:
        del tree["model"]
    policy = tree.setdefault("policy", {})
    if isinstance(policy.get("foresight_offsets"), int):
        policy["foresight_offsets"] = [policy["foresight_offsets"]]
    policy.setdefault("foresight_decoder", "mae")
    policy.setdefault("every_step_loss", False)
    return tree
