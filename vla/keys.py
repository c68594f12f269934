"""Every observation, action and metadata key, with its dtype, shape and units.

One name end to end: a zarr array in a store, a batch key from the sampler, an env observation key
and a robot observation key are the same string, defined here and nowhere else. Keys are dotted as
LeRobot names them, so the two interoperate.

Raw units everywhere until the policy: uint8 images (H, W, 3), metres for positions, radians for
angles. Only the policy normalises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# --- per-step data keys -------------------------------------------------------------------------
OBS_IMAGES = "observation.images"  # prefix: one key per camera, observation.images.<camera>
OBS_STATE = "observation.state"
ACTION = "action"

# --- per-episode metadata fields (meta/<field> in a store) --------------------------------------
EPISODE_ENDS = "episode_ends"  # int64 cumulative end index per episode: the commit record
INSTRUCTION = "instruction"  # the natural-language instruction the episode carried out
TASK = "task"  # the suite's task name, e.g. "reach-v3"
SUCCESS = "success"  # whether the episode ended in success (bool)
SEED = "seed"  # the seed that reproduces the episode (int64)
SOURCE = "source"  # where the episode came from: one of SOURCES

SOURCES = ("expert", "teleop", "policy", "video", "image-text")
META_FIELDS = (INSTRUCTION, TASK, SUCCESS, SEED, SOURCE)
META_DTYPES = {INSTRUCTION: "str", TASK: "str", SUCCESS: "bool", SEED: "int64", SOURCE: "str"}
# Optional per-episode metadata: absent from older stores (read as ""), "" where a writer has nothing to say.
SCENE = "scene"  # JSON of the simulator state an image-text caption was made from (vla.envs.tabletop.caption_facts)
OPTIONAL_META_FIELDS = (SCENE,)

# --- sampler outputs ----------------------------------------------------------------------------
PAD_SUFFIX = "_is_pad"
FUTURE_PREFIX = "future."
CAPTION = "caption"  # the text of an image-text episode, as the sampler emits it (stored as its instruction)
# Phrase grounding (referring-expression comprehension) from an image-text episode's `scene` facts: a phrase
# naming one object of the image ("the red block") and where it stands, (lateral, depth) in m in the view
# coordinates of the camera the facts were taken from (vla.envs.tabletop.caption_facts.referents).
REFERRING_EXPRESSION = "referring_expression"
REFERENT_POSITION = "referent_position"

# --- image size: the square side in pixels of every camera frame (envs, stores, robots) ----------
IMAGE_SIZE = 64  # the default wherever frames are rendered, imported or resized
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024  # the sizes a user may ask for
PATCH_SIZE = 8  # every preset's image patch side: frames a policy trains on are a whole number of patches
# The sizes a store may be collected or imported at, so that `vla train` can learn from it (see vla.options).
STORE_IMAGE_SIZES = dict(min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE, multiple_of=PATCH_SIZE)


def image_key(camera: str) -> str:
    """`observation.images.<camera>`."""
    return f"{OBS_IMAGES}.{camera}"


def camera_of(key: str) -> str:
    """Inverse of `image_key`."""
    if not is_image_key(key):
        raise ValueError(f"{key!r} is not an image key ({OBS_IMAGES}.<camera>)")
    return key[len(OBS_IMAGES) + 1 :]


def is_image_key(key: str) -> bool:
    return key.startswith(OBS_IMAGES + ".")


def pad_key(key: str) -> str:
    """The boolean mask that marks edge-padded steps of `key` in a sampled window."""
    return key + PAD_SUFFIX


def future_key(key: str) -> str:
    """The frames `foresight_offsets` steps ahead of the window's current step (one per horizon), for image `key`."""
    return FUTURE_PREFIX + key


# --- the gripper: what the last action dimension is, declared by the action's Spec -----------------
# binary: an open/close command (e.g. an effort in [-1, 1], -1 open, +1 close): classified, and executed as
#         the store's open or closed value; continuous: a position (e.g. LeRobot's 0-100): regressed with
#         the arm; none: no gripper, every dimension is regressed.
GRIPPER_KINDS = ("binary", "continuous", "none")


@dataclass(frozen=True)
class Spec:
    """What one per-step key holds: the store's schema, the env's observation space, the robot's features."""

    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # per-step shape
    units: str
    description: str
    # The action only: the kind of its last dimension (GRIPPER_KINDS); "" undeclared (stores from before
    # it was declared: the policy infers it from the data). Not part of a store's schema: a store written
    # before keeps taking episodes from envs that declare it.
    gripper: str = field(default="", compare=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if not self.gripper:
            del d["gripper"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Spec:
        return cls(dtype=d["dtype"], shape=tuple(d["shape"]), units=d["units"], description=d["description"],
                   gripper=d.get("gripper", ""))  # fmt: skip


def spec_problem(key: str, spec: Spec) -> str | None:
    """Why `spec` breaks the data contract for `key`, or None: images are uint8 (H, W, 3) frames, state
    and action float32 vectors (an int32 action would truncate displacements of a few millimetres, a
    float16 one round them); no other per-step keys exist."""
    if is_image_key(key):
        if spec.dtype == "uint8" and len(spec.shape) == 3 and spec.shape[-1] == 3 and min(spec.shape) > 0:
            return None
        return f"{key} is {spec.dtype} {tuple(spec.shape)}; image keys hold uint8 (H, W, 3) frames"
    if key in (OBS_STATE, ACTION):
        if spec.dtype == "float32" and len(spec.shape) == 1 and spec.shape[0] > 0:
            return None
        return f"{key} is {spec.dtype} {tuple(spec.shape)}; {key} holds float32 (dim,) vectors in raw units"
    return f"unknown key {key!r}; valid: {OBS_IMAGES}.<camera>, {OBS_STATE}, {ACTION}"


def image_spec(camera: str, size: int, description: str = "") -> Spec:
    return Spec("uint8", (size, size, 3), "pixel intensity 0-255, RGB, row 0 at the top", description or camera)


def state_spec(description: str, dim: int) -> Spec:
    return Spec("float32", (dim,), "m (positions), rad (angles), gripper as described", description)


def action_spec(description: str, dim: int, gripper: str = "binary") -> Spec:
    """End-effector displacements and, last, a gripper of kind `gripper` (GRIPPER_KINDS)."""
    if gripper not in GRIPPER_KINDS:
        raise ValueError(f"gripper kind {gripper!r}; valid: {', '.join(GRIPPER_KINDS)}")
    return Spec("float32", (dim,), "m (end-effector displacement per step), gripper as described", description, gripper)
