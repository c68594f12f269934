"""The compiled tabletop scene: one MjModel/MjData pair, ids looked up by name once, and the few
operations an episode needs (place, park, recolour, command the gripper, step, read state).

The XML lives in `vla/envs/assets/tabletop/` (`scene.xml` includes the robot, `gripper.xml`). It is
compiled once per env; every per-episode variation goes through model/data fields, never the XML.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the mujoco import

import mujoco
import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "tabletop"
SCENE_XML = ASSETS / "scene.xml"

CAMERAS = ("static", "wrist")
BLOCKS = ("block_0", "block_1", "block_2", "block_3")
FREE_OBJECTS = (*BLOCKS, "bottle")  # placed through free-joint qpos, parked when unused
STATIC_OBJECTS = ("bowl", "pad", "cabinet", "button_base")  # placed through body_pos
# Entity name -> body whose drawn geoms take the entity's colour.
COLOUR_BODIES = {**{b: b for b in BLOCKS}, "bottle": "bottle", "bowl": "bowl", "pad": "pad"}
COLOUR_BODIES.update({"drawer": "drawer", "button": "button"})

N_SUBSTEPS = 25  # 2 ms physics steps per control step: 20 Hz control
BLOCK_HALF = 0.025  # m, half edge of a block
BOTTLE_HALF = 0.065  # m, half height of the bottle
FINGER_MAX = 0.045  # m, opening of one finger (the gap is twice this)
GRIP_OFFSET = np.array([0.0, 0.0, -0.085])  # grip site relative to the hand joints' origin
# Where the grip site may be sent: inside the hand's joint ranges, above the table.
WORKSPACE_LOW = np.array([-0.34, -0.30, 0.005])
WORKSPACE_HIGH = np.array([0.34, 0.28, 0.33])
MAX_LEAD = 0.05  # m: a servo target never runs further than this ahead of the hand
BUTTON_PRESSED, BUTTON_RELEASED = -0.008, -0.003  # button travel (m) with hysteresis for the lamp
LAMP_ON = (1.0, 0.95, 0.35, 1.0)
LAMP_OFF = (0.2, 0.2, 0.2, 1.0)
PARK = np.array([0.0, 0.0, -1.5])  # under the floor: out of every camera's view
_DRAWN_GROUP = 2  # geoms in this group are drawn; group 3 holds collision-only geoms


class Scene:
    """The tabletop model and data with named handles; all positions are world-frame metres."""

    def __init__(self) -> None:
        self.model = mujoco.MjModel.from_xml_path(str(SCENE_XML))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._home = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, "home")
        self._grip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "grip")
        self._lamp = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "lamp")
        self._handle = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "drawer_handle")
        self.body = {m.body(i).name: i for i in range(m.nbody)}
        self._hand_qpos = np.array([m.joint(f"hand_{a}").qposadr[0] for a in "xyz"])
        self._finger_qpos = np.array([m.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")])
        self._drawer_qpos = m.joint("drawer").qposadr[0]
        self._button_qpos = m.joint("button").qposadr[0]
        self._free_qpos = {n: m.joint(n).qposadr[0] for n in FREE_OBJECTS}
        self._free_dof = {n: m.joint(n).dofadr[0] for n in FREE_OBJECTS}
        self._finger_bodies = {self.body["finger_left"], self.body["finger_right"]}
        body_geoms = {b: np.flatnonzero(m.geom_bodyid == self.body[b]) for b in self.body}
        self._drawn = {
            e: [g for g in body_geoms[b] if m.geom_group[g] == _DRAWN_GROUP] for e, b in COLOUR_BODIES.items()
        }
        self._colliding = {
            n: [g for g in body_geoms[n] if m.geom_contype[g] or m.geom_conaffinity[g]] for n in FREE_OBJECTS
        }
        self._contype = m.geom_contype.copy()
        self._conaffinity = m.geom_conaffinity.copy()
        self._static_home = {n: m.body_pos[self.body[n]].copy() for n in STATIC_OBJECTS}
        self.light_on = False
        self._button_down = False

    # --- episode setup ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the `home` keyframe with every object visible and where the XML puts it."""
        m = self.model
        mujoco.mj_resetDataKeyframe(m, self.data, self._home)
        m.geom_contype[:] = self._contype
        m.geom_conaffinity[:] = self._conaffinity
        for name in FREE_OBJECTS:
            m.body_gravcomp[self.body[name]] = 0.0
        for name, pos in self._static_home.items():
            m.body_pos[self.body[name]] = pos
        self.set_light(False)

    def place_free(self, name: str, pos: np.ndarray, yaw: float = 0.0) -> None:
        """Put free object `name` at `pos` (its body origin) with heading `yaw`, at rest."""
        adr, dof = self._free_qpos[name], self._free_dof[name]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        self.data.qvel[dof : dof + 6] = 0.0

    def park(self, name: str) -> None:
        """Take free object `name` out of the scene: far away, weightless and without contacts."""
        slot = FREE_OBJECTS.index(name)
        self.place_free(name, PARK + np.array([0.3 * slot, 0.0, 0.0]))
        self.model.body_gravcomp[self.body[name]] = 1.0  # no contacts left to hold it up
        for g in self._colliding[name]:
            self.model.geom_contype[g] = 0
            self.model.geom_conaffinity[g] = 0

    def place_static(self, name: str, xy: np.ndarray | None) -> None:
        """Move static object `name` to table position `xy`, or out of sight when None."""
        pos = PARK.copy() if xy is None else np.array([xy[0], xy[1], self._static_home[name][2]])
        self.model.body_pos[self.body[name]] = pos

    def set_colour(self, entity: str, rgb: tuple[float, float, float]) -> None:
        for g in self._drawn[entity]:
            self.model.geom_rgba[g] = (*rgb, 1.0)

    def set_drawer(self, opening: float) -> None:
        self.data.qpos[self._drawer_qpos] = opening

    def set_light(self, on: bool) -> None:
        self.light_on = bool(on)
        self.model.geom_rgba[self._lamp] = LAMP_ON if on else LAMP_OFF

    def set_grip_pos(self, pos: np.ndarray, opening: float = 1.0) -> None:
        """Teleport the hand so the grip site is at `pos`, fingers at `opening` in [0, 1], servos agreeing."""
        hand = np.asarray(pos) - GRIP_OFFSET
        self.data.qpos[self._hand_qpos] = hand
        self.data.qpos[self._finger_qpos] = opening * FINGER_MAX
        self.data.ctrl[:3] = hand
        self.data.ctrl[3:5] = opening * FINGER_MAX

    def forward(self) -> None:
        mujoco.mj_forward(self.model, self.data)
        self._button_down = self.button_depth() < BUTTON_PRESSED

    # --- control --------------------------------------------------------------------------------
    def command(self, displacement: np.ndarray, gripper: float) -> None:
        """Servo targets for one control step: grip site + `displacement` (m), gripper effort in [-1, 1]
        (-1 open, +1 close). Targets are relative to where the hand is, as on a real arm's
        Cartesian controller, so a blocked hand never winds up a large error."""
        target = np.clip(self.grip_pos() + displacement, WORKSPACE_LOW, WORKSPACE_HIGH)
        self.data.ctrl[:3] = target - GRIP_OFFSET
        self.data.ctrl[3:5] = FINGER_MAX * (1.0 - float(np.clip(gripper, -1.0, 1.0))) / 2.0

    def step(self, n: int = N_SUBSTEPS) -> None:
        """Advance `n` physics steps, toggling the lamp on each new press of the button."""
        for _ in range(n):
            mujoco.mj_step(self.model, self.data)
            depth = self.button_depth()
            if not self._button_down and depth < BUTTON_PRESSED:
                self._button_down = True
                self.set_light(not self.light_on)
            elif self._button_down and depth > BUTTON_RELEASED:
                self._button_down = False

    def warnings(self) -> dict[str, int]:
        """MuJoCo warnings raised since the last reset, by name (empty when there were none)."""
        counts = {mujoco.mjtWarning(i).name: int(w.number) for i, w in enumerate(self.data.warning)}
        return {k: v for k, v in counts.items() if v}

    # --- state ----------------------------------------------------------------------------------
    def grip_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._grip].copy()

    def opening(self) -> float:
        """Finger gap as a fraction of its maximum: 0 closed, 1 open."""
        return float(np.clip(self.data.qpos[self._finger_qpos].mean() / FINGER_MAX, 0.0, 1.0))

    def pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.body[name]].copy()

    def up(self, name: str) -> np.ndarray:
        """The body's local z axis in the world frame (standing bottle: about (0, 0, 1))."""
        return self.data.xmat[self.body[name]].reshape(3, 3)[:, 2].copy()

    def drawer_opening(self) -> float:
        return float(self.data.qpos[self._drawer_qpos])

    def button_depth(self) -> float:
        """Button travel in m: 0 at rest, negative when pressed."""
        return float(self.data.qpos[self._button_qpos])

    def handle_pos(self) -> np.ndarray:
        return self.data.geom_xpos[self._handle].copy()

    def held(self, name: str) -> bool:
        """Whether either finger touches body `name`."""
        d, target = self.data, self.body[name]
        for i in range(d.ncon):
            b1 = self.model.geom_bodyid[d.contact.geom1[i]]
            b2 = self.model.geom_bodyid[d.contact.geom2[i]]
            if (b1 == target and b2 in self._finger_bodies) or (b2 == target and b1 in self._finger_bodies):
                return True
        return False
