"""`TabletopEnv`: one tabletop task (or a chain of them) as a gymnasium env in raw units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from vla import keys
from vla.envs.render import make_renderer
from vla.envs.suite import check_image_size
from vla.envs.tabletop import chains, splits
from vla.envs.tabletop.episodes import BODY_OF, KIND_OF, EpisodeSpec, Subtask, recolour, sample_episode
from vla.envs.tabletop.scene import (
    BLOCK_HALF,
    BLOCKS,
    BOTTLE_HALF,
    CAMERAS,
    FREE_OBJECTS,
    N_SUBSTEPS,
    Scene,
)
from vla.envs.tabletop.tasks import TASKS
from vla.errors import UserError, choice_error

DEFAULT_CAMERAS = ("static", "wrist")
DEFAULT_MAX_EPISODE_STEPS = 200  # 10 s at 20 Hz; the experts need 40-120 steps
MAX_STEP = 0.025  # m per control step and axis (0.5 m/s at 20 Hz)
SETTLE_STEPS = 50  # physics steps (0.1 s) after placing objects, so contacts start at rest
# Bounds of observation.state: the hand's joint ranges at the grip site, with a margin for contact.
STATE_LOW = np.array([-0.4, -0.38, -0.05, 0.0], dtype=np.float32)
STATE_HIGH = np.array([0.4, 0.36, 0.42, 1.0], dtype=np.float32)
# Entity -> every body drawn as part of it (the drawer with its cabinet, the button with base and lamp).
DRAWN_BODIES = {"drawer": ("cabinet", "drawer"), "button": ("button_base", "button")}


@dataclass(frozen=True)
class SceneObject:
    """One coloured object of the current scene, as privileged state (for captions and tests)."""

    name: str  # the entity: "block_2", "bowl", "pad", "bottle", "drawer", "button"
    kind: str  # "block", "bowl", "pad", "bottle", "drawer", "button"
    colour: str  # a colour name of `splits.PALETTE`
    position: np.ndarray  # (3,) world m of its body (the cabinet's for the drawer, the base's for the button)
    pixels: int  # pixels of the camera's frame that show it now (0: hidden or out of view)


class TabletopEnv(gym.Env):
    """A tabletop task, or with `task="chain"` a chain of `chain_length` subtasks in one scene."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str,
        image_size: int = keys.IMAGE_SIZE,
        cameras: tuple[str, ...] | None = None,
        split: str = "train",
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        chain_length: int = chains.CHAIN_LENGTH,
        subtask_steps: int = chains.SUBTASK_STEPS,
    ) -> None:
        if task != chains.CHAIN and task not in TASKS:
            raise choice_error("tabletop task", task, [*TASKS, chains.CHAIN])
        cameras = DEFAULT_CAMERAS if cameras is None else tuple(cameras)
        for cam in cameras:
            if cam not in CAMERAS:
                raise choice_error("tabletop camera", cam, CAMERAS)
        if split not in splits.SPLITS:
            raise choice_error("tabletop split", split, splits.SPLITS)
        check_image_size(image_size)
        if render_mode not in (None, "rgb_array"):
            raise choice_error("render mode", render_mode, self.metadata["render_modes"])
        if chain_length < 1 or subtask_steps < 1:
            raise UserError(f"chain_length and subtask_steps must be >= 1, got {chain_length}, {subtask_steps}")
        self.task, self.cameras, self.split, self.image_size = task, cameras, split, int(image_size)
        self.is_chain = task == chains.CHAIN
        self.chain_size, self.subtask_steps = int(chain_length), int(subtask_steps)
        default_steps = self.chain_size * self.subtask_steps if self.is_chain else DEFAULT_MAX_EPISODE_STEPS
        self.max_episode_steps = int(max_episode_steps or default_steps)
        if self.max_episode_steps < 1:
            raise UserError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.render_mode = render_mode

        self.scene = Scene()
        self.fps = 1.0 / (self.scene.model.opt.timestep * N_SUBSTEPS)
        self.metadata = {**self.metadata, "render_fps": round(self.fps)}
        self._renderer: mujoco.Renderer | None = None
        self._closed = False
        self.observation_space = self._make_observation_space()
        high = np.array([MAX_STEP] * 3 + [1.0], dtype=np.float32)
        self.action_space = gym.spaces.Box(-high, high, dtype=np.float32)

        self.episode: EpisodeSpec | None = None
        self.resets = 0  # episodes started, so an expert can tell a new episode from the last one
        self.chain: list[Subtask] = []  # the episode's subtasks (one for a single task)
        self.subtask_index = 0  # which subtask runs now (== len(chain) once all are done)
        self.chain_length = 0  # subtasks completed in a row
        self.instruction = ""
        self._start: dict = {}
        self._steps = self._subtask_steps_taken = 0

    # --- spaces and specs -----------------------------------------------------------------------
    def _make_observation_space(self) -> gym.spaces.Dict:
        size = self.image_size
        spaces: dict[str, gym.spaces.Space] = {
            keys.image_key(cam): gym.spaces.Box(0, 255, (size, size, 3), dtype=np.uint8) for cam in self.cameras
        }
        spaces[keys.OBS_STATE] = gym.spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32)
        return gym.spaces.Dict(spaces)

    def feature_specs(self) -> dict[str, keys.Spec]:
        """Spec of every observation key and of the action, in raw units."""
        views = {"static": "fixed camera in front of and above the table", "wrist": "camera on the gripper"}
        specs = {
            keys.image_key(c): keys.image_spec(c, self.image_size, f"tabletop {views[c]}, upright")
            for c in self.cameras
        }
        specs[keys.OBS_STATE] = keys.state_spec(
            "grip point (between the finger pads) x, y, z in metres, world frame (table top at z = 0, "
            "x right and y away from the static camera); gripper opening in [0, 1] (finger gap / 9 cm: "
            "1 = open, 0 = closed)",
            4,
        )
        specs[keys.ACTION] = keys.action_spec(
            f"end-effector (grip point) displacement x, y, z in metres per step (|.| <= {MAX_STEP:g}); "
            "gripper command in [-1, 1] (-1 open, +1 close, in between: partly open)",
            4,
        )
        return specs

    # --- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw the episode from `seed` (the same seed gives the same episode) and place everything.
        options {"colours": "any"}: the same scene with colours drawn from all eight for every kind, the
        split's held-out colour x kind combinations included (`episodes.recolour`; image-text data only)."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        if self.is_chain:
            self.episode = chains.sample_chain(self.split, seed, self.chain_size)
        else:
            self.episode = sample_episode(self.task, self.split, seed)
        colours = (options or {}).get("colours", "split")
        if colours not in ("split", "any"):
            raise choice_error("reset option colours", colours, ("split", "any"))
        if colours == "any":
            self.episode = recolour(self.episode)
        self.resets += 1
        apply_episode(self.scene, self.episode)
        self.scene.step(SETTLE_STEPS)
        self.chain = self.episode.subtasks
        self.subtask_index = self.chain_length = self._steps = 0
        self._begin_subtask()
        return self._observe(), self._info(success=False, subtask_success=False)

    def step(self, action: np.ndarray):
        """Move the grip point by `action[:3]` metres and command the gripper with `action[3]`."""
        if self.episode is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            raise UserError(f"action must have shape (4,), got {action.shape}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        self.scene.command(action[:3], action[3])
        self.scene.step()
        self._steps += 1
        self._subtask_steps_taken += 1
        done_now = self._subtask_done()
        terminated = False
        if self.is_chain:
            if done_now:
                self.chain_length += 1
                self.subtask_index += 1
                terminated = self.subtask_index == len(self.chain)
                if not terminated:
                    self._begin_subtask()
            elif self._subtask_steps_taken >= self.subtask_steps:
                terminated = True  # the subtask ran out of time: the chain ends here
            success = self.chain_length == len(self.chain)
        else:
            success = done_now
        truncated = not terminated and self._steps >= self.max_episode_steps
        reward = float(done_now)
        return self._observe(), reward, terminated, truncated, self._info(success, done_now)

    def render(self) -> np.ndarray | None:
        """The static camera's view of the current state, for `render_mode="rgb_array"`."""
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera("static")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- chain bookkeeping ----------------------------------------------------------------------
    @property
    def subtask(self) -> Subtask:
        """The subtask running now (the last one once the chain is complete)."""
        return self.chain[min(self.subtask_index, len(self.chain) - 1)]

    def _begin_subtask(self) -> None:
        sub = self.subtask
        self.instruction = sub.instruction
        self._start = {e: self.scene.pos(BODY_OF.get(e, e)) for e in sub.binding.values()}
        self._start["light_on"] = self.scene.light_on
        self._subtask_steps_taken = 0

    def _subtask_done(self) -> bool:
        if self.subtask_index >= len(self.chain):
            return False
        sub = self.subtask
        return TASKS[sub.task].success(self.scene, sub.binding, self._start)

    def _info(self, success: bool, subtask_success: bool) -> dict[str, Any]:
        info = {"success": bool(success), "instruction": self.instruction, "task": self.task}
        if self.is_chain:
            info.update(
                subtask=self.subtask.task,
                subtask_index=self.subtask_index,
                subtask_success=bool(subtask_success),
                chain_length=self.chain_length,
            )
        return info

    # --- observation ----------------------------------------------------------------------------
    def _observe(self) -> dict[str, np.ndarray]:
        obs = {keys.image_key(cam): self.render_camera(cam) for cam in self.cameras}
        state = np.append(self.scene.grip_pos(), self.scene.opening()).astype(np.float32)
        obs[keys.OBS_STATE] = np.clip(state, STATE_LOW, STATE_HIGH)
        return obs

    def render_camera(self, camera: str) -> np.ndarray:
        """One upright uint8 (S, S, 3) frame from `camera` of the current state."""
        if self._closed:
            raise UserError("this env is closed")
        if self._renderer is None:
            self._renderer = make_renderer(self.scene.model, self.image_size)  # one left open closes at exit
        self._renderer.update_scene(self.scene.data, camera=camera)
        return self._renderer.render()

    def scene_objects(self, camera: str = "static") -> list[SceneObject]:
        """The episode's coloured objects (blocks, bowl, pad, bottle, drawer, button) now, with the
        pixels of each that `camera` shows at `image_size`; read-only, renders one segmentation frame."""
        if self.episode is None:
            raise gym.error.ResetNeeded("call reset() before scene_objects()")
        if camera not in CAMERAS:
            raise choice_error("tabletop camera", camera, CAMERAS)
        self.render_camera(camera)  # makes the renderer on first use
        self._renderer.enable_segmentation_rendering()
        try:
            self._renderer.update_scene(self.scene.data, camera=camera)
            seg = self._renderer.render()  # (S, S, 2): object id and object type per pixel
        finally:
            self._renderer.disable_segmentation_rendering()
        geom = np.where(seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[..., 0], -1)
        body = self.scene.model.geom_bodyid[geom[geom >= 0]]
        per_body = np.bincount(body, minlength=self.scene.model.nbody)
        return [
            SceneObject(
                name=entity,
                kind=KIND_OF[entity],
                colour=colour,
                position=self.scene.pos(BODY_OF.get(entity, entity)),
                pixels=int(sum(per_body[self.scene.body[b]] for b in DRAWN_BODIES.get(entity, (entity,)))),
            )
            for entity, colour in self.episode.colours.items()
        ]


def apply_episode(scene: Scene, spec: EpisodeSpec) -> None:
    """Put the scene in `spec`'s start state through model/data fields (no recompilation)."""
    scene.reset()
    for name in FREE_OBJECTS:
        if name not in spec.xy:
            scene.park(name)
            continue
        z = BLOCK_HALF if name in BLOCKS else BOTTLE_HALF
        scene.place_free(name, np.array([*spec.xy[name], z]), spec.yaw[name])
    for name in ("bowl", "pad", "cabinet", "button_base"):
        scene.place_static(name, spec.xy.get(name))
    for entity, colour in spec.colours.items():
        scene.set_colour(entity, splits.PALETTE[colour])
    scene.set_drawer(spec.drawer)
    scene.set_light(spec.light_on)
    scene.set_grip_pos(spec.hand, opening=1.0)
    scene.forward()
