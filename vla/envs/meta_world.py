"""Meta-World (MT10/MT50) behind the suite contract of `vla.envs.suite`.

`MetaWorldEnv` wraps one Meta-World v3 task and speaks the project's raw units:

    observation.images.<camera>  uint8 (S, S, 3), upright, rendered headless with shadows/reflections off
    observation.state            float32 (4,): end-effector x, y, z (m) and gripper opening in [0, 1]
    action                       float32 (4,): end-effector displacement x, y, z (m per step, |.| <= 0.01)
                                 and gripper effort in [-1, 1] (-1 open, +1 close)

Default camera: "corner". Of the fixed views it shows the whole table and every task's object large
and unoccluded at 64x64 ("corner2"/"corner3" see the scene from further away, so objects shrink to a
few pixels; "corner4" crops the far side of the table; "topview" hides height).

Meta-World quirks this module absorbs (the rest of the project never sees them):
- An env needs `set_task` before `reset`, and `reset(seed=...)` is ignored: the initial state varies
  only through the 50 task variants (object/goal positions) a benchmark draws per task. Here the seed
  picks the variant (`seed % 50`), so the same seed gives the same episode. The variants are split
  (`vla.envs.meta_world_splits`): collection draws 0-39 (`train`), evaluation 40-49 (`unseen`).
- Its reset places the goal site after the last forward pass, so without one more the first frame
  shows the goal where the previous episode's end put it; `reset` recomputes the positions, so a
  reused env's first frame equals a fresh env's (and `vla collect` gives one store whatever `--workers`).
- The corner cameras are mounted rolled by 180 degrees, so their raw images are upside down; they
  are rotated by 180 degrees (not mirrored), which is the view of the same camera held upright.
- Its actions are normalised to [-1, 1] with an action scale of 1 cm per step; Meta-World never
  terminates and raises if stepped past `max_path_length` (500), which is lifted here.
- Rendering is geometry-bound: the Sawyer meshes hold ~67k triangles, so one frame costs ~15 ms
  on llvmpipe whatever the image size (physics is ~0.25 ms per step). Make envs with `cameras=()`
  where images are not needed.
- The raw 39-d observation (hand, gripper, objects, the previous frame of those, goal) stays on
  `env.unwrapped.raw_obs` for the scripted experts.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the mujoco import

import gymnasium as gym
import metaworld
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML45_V3, MT10_V3, MT50_V3
from metaworld.policies import ENV_POLICY_MAP

from vla import keys
from vla.envs.meta_world_instructions import INSTRUCTIONS
from vla.envs.meta_world_splits import N_VARIANTS, SPLIT_VARIANTS
from vla.envs.meta_world_splits import describe as describe_variants
from vla.envs.render import make_renderer
from vla.envs.suite import check_image_size
from vla.errors import UserError, choice_error

log = logging.getLogger(__name__)

MT10 = list(MT10_V3)
MT50 = list(MT50_V3)
# Meta-World's meta-learning split (Yu et al. 2019, ML45): 45 train tasks, 5 test tasks that share none of their
# objects' motions. Video of the train tasks, robot data of the test tasks: transfer to tasks never seen.
ML45_TRAIN = list(ML45_V3["train"])
ML45_TEST = list(ML45_V3["test"])
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
DEFAULT_CAMERAS = ("corner",)
# Mounted upside down in Meta-World's XML (image-up points at the floor): rotate these by 180 degrees.
_ROTATED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
DEFAULT_MAX_EPISODE_STEPS = 500  # Meta-World's own horizon (max_path_length)
_VARIANT_SEED = 0  # the benchmark seed that draws the variants: fixed, so variants are stable
EXPERT_NOISE = 0.1  # std of the expert's Gaussian noise, in Meta-World's normalised action units
# Reward terms Meta-World reports in `info`, passed through as floats.
_INFO_TERMS = (
    "near_object",
    "grasp_success",
    "grasp_reward",
    "in_place_reward",
    "obj_to_target",
    "unscaled_reward",
)


@functools.cache
def _variants(task: str) -> tuple:
    """Meta-World's 50 task variants for `task`, drawn once per process from a fixed benchmark seed."""
    variants = tuple(metaworld.MT1(task, seed=_VARIANT_SEED).train_tasks)
    log.debug("drew %d Meta-World variants for %s", len(variants), task)
    return variants


def _check_task(task: str) -> None:
    if task not in ALL_V3_ENVIRONMENTS:
        raise choice_error("metaworld task", task, MT50)


def _check_cameras(cameras: tuple[str, ...]) -> None:
    for cam in cameras:
        if cam not in CAMERAS:
            raise choice_error("metaworld camera", cam, CAMERAS)


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task in raw units: upright camera images, end-effector state, metre actions."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        image_size: int = keys.IMAGE_SIZE,
        cameras: tuple[str, ...] | None = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        _check_task(task)
        cameras = DEFAULT_CAMERAS if cameras is None else tuple(cameras)
        _check_cameras(cameras)
        check_image_size(image_size)
        if max_episode_steps is None:
            max_episode_steps = DEFAULT_MAX_EPISODE_STEPS
        if max_episode_steps < 1:
            raise UserError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise choice_error("render mode", render_mode, self.metadata["render_modes"])
        self.task, self.cameras, self.image_size = task, cameras, int(image_size)
        self.max_episode_steps, self.render_mode = int(max_episode_steps), render_mode

        self._mw = ALL_V3_ENVIRONMENTS[task]()
        # Meta-World raises once its own step count passes max_path_length; truncation is ours.
        self._mw.max_path_length = sys.maxsize
        self._mw.set_task(_variants(task)[0])  # Meta-World refuses reset() before set_task()
        self.action_scale = float(self._mw.action_scale)  # metres per unit of normalised action
        self.fps = 1.0 / (self._mw.frame_skip * self._mw.model.opt.timestep)
        self.metadata = {**self.metadata, "render_fps": round(self.fps)}
        self._renderer = make_renderer(self._mw.model, self.image_size) if cameras else None
        self._closed = False

        self.observation_space = self._make_observation_space()
        act_high = np.array([self.action_scale] * 3 + [1.0], dtype=np.float32)
        self.action_space = gym.spaces.Box(-act_high, act_high, dtype=np.float32)
        self.instruction = INSTRUCTIONS[task][0]
        self.variant = 0
        self.raw_obs = np.zeros(39)
        self._obs: dict[str, np.ndarray] = {}
        self._steps = 0

    # --- construction helpers -------------------------------------------------------------------
    def _make_observation_space(self) -> gym.spaces.Dict:
        size = self.image_size
        spaces: dict[str, gym.spaces.Space] = {
            keys.image_key(cam): gym.spaces.Box(0, 255, (size, size, 3), dtype=np.uint8) for cam in self.cameras
        }
        # Meta-World clips the hand to this box and the gripper opening to [0, 1] in every observation.
        hand = self._mw._HAND_SPACE
        low = np.append(hand.low, 0.0).astype(np.float32)
        high = np.append(hand.high, 1.0).astype(np.float32)
        spaces[keys.OBS_STATE] = gym.spaces.Box(low, high, dtype=np.float32)
        return gym.spaces.Dict(spaces)

    def feature_specs(self) -> dict[str, keys.Spec]:
        """Spec of every observation key and of the action, in raw units."""
        specs = {
            keys.image_key(cam): keys.image_spec(cam, self.image_size, f"Meta-World camera {cam!r}, upright")
            for cam in self.cameras
        }
        specs[keys.OBS_STATE] = keys.state_spec(
            "end-effector (hand) position x, y, z in metres, world frame; gripper opening as Meta-World "
            "reports it (obs[3]: finger distance / 0.1 m, clipped to [0, 1]; 1 = open, about 0 = closed)",
            4,
        )
        specs[keys.ACTION] = keys.action_spec(
            f"end-effector displacement x, y, z in metres per step (|.| <= {self.action_scale:g}); "
            "gripper effort in [-1, 1] (-1 open, +1 close)",
            4,
        )
        return specs

    # --- gymnasium API --------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; the seed picks Meta-World's variant (`seed % 50`) and the instruction."""
        super().reset(seed=seed)
        if seed is not None:
            self.variant = int(seed) % N_VARIANTS
        else:
            self.variant = int(self.np_random.integers(N_VARIANTS))
        phrasings = INSTRUCTIONS[self.task]
        self.instruction = phrasings[int(self.np_random.integers(len(phrasings)))]
        self._mw.set_task(_variants(self.task)[self.variant])
        raw, _ = self._mw.reset()
        # Meta-World moves the goal site after its last forward pass, so the derived positions (what a
        # camera sees) still hold the site as the previous episode's end left it: recompute them, so the
        # first frame is a function of the seed alone (a reused env renders what a fresh one does). Only
        # the position stage: a full mj_forward would also touch the solver's warm start, and so the physics.
        mw = self._mw
        for stage in (mujoco.mj_kinematics, mujoco.mj_comPos, mujoco.mj_camlight):
            stage(mw.model, mw.data)
        self._steps = 0
        obs = self._observe(raw)
        info = {"instruction": self.instruction, "task": self.task, "success": False, "variant": self.variant}
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Move the end effector by `action[:3]` metres and apply gripper effort `action[3]`."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            raise UserError(f"action must have shape (4,), got {action.shape}")
        raw, reward, _, _, mw_info = self._mw.step(self.to_metaworld_action(action))
        self._steps += 1
        info = {"success": bool(mw_info["success"]), "task": self.task, "instruction": self.instruction}
        info.update({k: float(mw_info[k]) for k in _INFO_TERMS if k in mw_info})
        truncated = self._steps >= self.max_episode_steps
        # Meta-World never terminates, not even on success: callers decide when to stop.
        return self._observe(raw), float(reward), False, truncated, info

    def to_metaworld_action(self, action: np.ndarray) -> np.ndarray:
        """Raw-unit action (m, m, m, effort) -> Meta-World's normalised action in [-1, 1]^4."""
        mw = np.empty(4, dtype=np.float32)
        mw[:3] = np.asarray(action[:3], dtype=np.float64) / self.action_scale
        mw[3] = action[3]
        return np.clip(mw, -1.0, 1.0)

    def render(self) -> np.ndarray | None:
        """The first camera's latest frame (rendered at reset/step), for `render_mode="rgb_array"`."""
        if self.render_mode != "rgb_array" or not self.cameras:
            return None
        return self._obs[keys.image_key(self.cameras[0])].copy()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._mw.close()

    # --- observation ----------------------------------------------------------------------------
    def _observe(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        self.raw_obs = np.array(raw, dtype=np.float64)
        obs = {keys.image_key(cam): self.render_camera(cam) for cam in self.cameras}
        obs[keys.OBS_STATE] = self.raw_obs[:4].astype(np.float32)
        self._obs = obs
        return obs

    def render_camera(self, camera: str) -> np.ndarray:
        """One upright uint8 (S, S, 3) frame from `camera` of the current state."""
        if self._renderer is None:
            raise UserError("this env was made with no cameras; pass cameras=(...) to render")
        self._renderer.update_scene(self._mw.data, camera=camera)
        image = self._renderer.render()
        if camera in _ROTATED_CAMERAS:
            image = image[::-1, ::-1]  # 180-degree rotation: the camera is mounted upside down
        return np.ascontiguousarray(image)


class MetaWorldExpert:
    """Meta-World's scripted policy for the env's task, plus seeded Gaussian noise, in raw units.

    The policy reads the privileged 39-d observation `env.unwrapped.raw_obs`; the `obs` passed to
    `act` is ignored. Noise (std `noise`, in normalised units) perturbs all four action components.
    """

    def __init__(self, env: gym.Env, noise: float = EXPERT_NOISE) -> None:
        unwrapped = env.unwrapped
        if not isinstance(unwrapped, MetaWorldEnv):
            raise UserError(f"the Meta-World expert needs a MetaWorldEnv, got {type(unwrapped).__name__}")
        self.env = unwrapped
        self.noise = float(noise)
        self.policy = ENV_POLICY_MAP[unwrapped.task]()
        self._rng = np.random.default_rng()

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        with warnings.catch_warnings():
            # The policies use deliberately high gains and warn on every saturated step; the env clips.
            warnings.simplefilter("ignore", UserWarning)
            mw_action = np.asarray(self.policy.get_action(self.env.raw_obs), dtype=np.float64)
        mw_action = np.clip(mw_action + self._rng.normal(0.0, self.noise, 4), -1.0, 1.0)
        action = np.empty(4, dtype=np.float32)
        action[:3] = mw_action[:3] * self.env.action_scale
        action[3] = mw_action[3]
        space = self.env.action_space
        return np.clip(action, space.low, space.high)


class MetaWorldSuite:
    """Meta-World (groups MT10, MT50 and ML45's train and test tasks) as a `vla.envs.suite.Suite`."""

    name = "metaworld"
    cameras = CAMERAS
    default_cameras = DEFAULT_CAMERAS
    splits = tuple(SPLIT_VARIANTS)  # train: variants 0-39 (collection), unseen: 40-49 (evaluation)
    eval_split = "unseen"
    groups = {"mt10": MT10, "mt50": MT50, "ml45-train": ML45_TRAIN, "ml45-test": ML45_TEST}

    def describe_split(self, split: str) -> str:
        """What a split's scenes are, for evaluation reports."""
        return describe_variants(split)

    def tasks(self) -> list[str]:
        return list(MT50)

    def make_env(
        self,
        task: str,
        *,
        image_size: int = keys.IMAGE_SIZE,
        cameras: tuple[str, ...] | None = None,
        split: str = "train",
        max_episode_steps: int | None = None,
    ) -> MetaWorldEnv:
        if split not in self.splits:
            raise choice_error("metaworld split", split, self.splits)
        return MetaWorldEnv(task, image_size=image_size, cameras=cameras, max_episode_steps=max_episode_steps)

    def make_expert(self, env: gym.Env) -> MetaWorldExpert:
        return MetaWorldExpert(env)


def _register() -> None:
    """Register `vla/metaworld-<task>` for every task; a second import registers nothing."""
    for task in MT50:
        env_id = f"vla/metaworld-{task}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{__name__}:MetaWorldEnv", kwargs={"task": task})


_register()
