"""Scripted experts: closed-loop waypoint plans on privileged simulator state, with seeded variation.

A plan is a list of `Phase`s, each with a grip-point target (recomputed every step from the live
scene, so a block nudged on the way is still grasped), a gripper command and a completion test.
Every plan begins by rising with the fingers open, so in a chain the hand lets go of whatever the
last subtask left between its fingers before it moves on.
`TabletopExpert` picks the plan for the subtask the env is running and rebuilds it whenever the
episode or the subtask changes, so the same expert drives single tasks and chains.

Demonstrations vary through `expert.reset(seed)`: per plan, speed, clearance height and grasp and
placement offsets are drawn once; every step adds small Gaussian noise to the displacement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from vla.envs.tabletop.env import TabletopEnv
from vla.envs.tabletop.episodes import Subtask
from vla.envs.tabletop.scene import BLOCK_HALF, FINGER_MAX, Scene
from vla.errors import UserError

OPEN, CLOSE = -1.0, 1.0
NOISE = 0.0015  # m, std of the per-step displacement noise
SLOT_OFFSET = 0.025  # m from the handle bar's centre to the middle of the slot behind it
PUSH_OFFSET = 0.04  # m from a pushed block's centre to the grip point behind it
# Fingers 28 mm apart for pushing: both touch the block's face (50 mm), so it cannot spin away.
PUSH_GRIP = 1.0 - 2 * 0.014 / FINGER_MAX


@dataclass
class Phase:
    name: str
    target: Callable[[], np.ndarray]  # grip-point target (m), re-evaluated every step
    grip: float  # gripper command
    tol: float = 0.01  # done once the grip point is this close to the target...
    min_steps: int = 0  # ...and at least this many steps were spent here
    max_steps: int = 80  # a phase that cannot finish moves on after this many steps
    until: Callable[[], bool] | None = None  # replaces the distance test when given
    speed: float | None = None  # per-axis step limit (m), default the plan's speed
    abort: Callable[[], bool] | None = None  # when true, restart the plan from phase `restart`
    restart: int = 0


@dataclass
class Style:
    """Per-plan variation drawn from the expert's seed."""

    speed: float  # m per step and axis
    safe_z: float  # grip-point height for moving across the table
    grasp: np.ndarray  # grasp-point offset from a block centre (m)
    place: np.ndarray  # placement offset (m, xy)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Style:
        grasp = np.array([rng.uniform(-0.004, 0.004), rng.uniform(-0.004, 0.004), rng.uniform(-0.006, 0.003)])
        return cls(rng.uniform(0.014, 0.022), rng.uniform(0.17, 0.22), grasp, rng.uniform(-0.006, 0.006, 2))


class Plan:
    """Runs phases in order, turning each phase's target into a bounded, noisy displacement."""

    def __init__(self, scene: Scene, phases: list[Phase], style: Style, rng: np.random.Generator) -> None:
        self.scene, self.phases, self.style, self.rng = scene, phases, style, rng
        self.index, self.steps = 0, 0
        self.last_grip = OPEN

    def act(self) -> np.ndarray:
        ee = self.scene.grip_pos()
        for _ in range(len(self.phases)):  # skip every phase that is already complete
            if self.index >= len(self.phases) or not self._complete(self.phases[self.index], ee):
                break
            self.index, self.steps = self.index + 1, 0
        if self.index >= len(self.phases):  # finished: stay put, gripper as it was
            return np.array([0.0, 0.0, 0.0, self.last_grip], dtype=np.float32)
        phase = self.phases[self.index]
        if phase.abort is not None and phase.abort():
            self.index, self.steps = phase.restart, 0
            phase = self.phases[self.index]
        self.steps += 1
        speed = phase.speed or self.style.speed
        delta = phase.target() - ee
        # Scale, not clip per axis, so the hand heads straight at the target (a sweep stays on its line).
        move = delta * min(1.0, speed / max(float(np.abs(delta).max()), 1e-9)) + self.rng.normal(0.0, NOISE, 3)
        self.last_grip = phase.grip
        return np.append(move, phase.grip).astype(np.float32)

    def _complete(self, phase: Phase, ee: np.ndarray) -> bool:
        if self.steps >= phase.max_steps:
            return True
        if self.steps < phase.min_steps:
            return False
        if phase.until is not None:
            return phase.until()
        return bool(np.linalg.norm(phase.target() - ee) < phase.tol)


# --- building blocks ----------------------------------------------------------------------------------
def _at(xy: Callable[[], np.ndarray], z: float | Callable[[], float]) -> Callable[[], np.ndarray]:
    return lambda: np.array([*xy()[:2], z() if callable(z) else z])


def rise(s: Scene, style: Style, grip: float) -> Phase:
    return Phase("rise", _at(s.grip_pos, style.safe_z), grip, tol=0.02)


def pick(s: Scene, style: Style, block: str, lift_z: float) -> list[Phase]:
    """Open, go over `block`, descend, close, lift its centre to `lift_z`."""
    over = lambda: s.pos(block) + style.grasp  # noqa: E731
    held = {}

    def grasped() -> np.ndarray:
        held.setdefault("xy", s.grip_pos()[:2])
        return held["xy"]

    return [
        rise(s, style, OPEN),
        Phase("over", _at(over, style.safe_z), OPEN, tol=0.012),
        Phase("descend", over, OPEN, tol=0.007),
        Phase("close", over, CLOSE, min_steps=6, until=lambda: True),
        Phase("lift", _at(grasped, lambda: lift_z + s.grip_pos()[2] - s.pos(block)[2]), CLOSE, tol=0.015),
    ]


def place(s: Scene, style: Style, block: str, goal: Callable[[], np.ndarray], z: float) -> list[Phase]:
    """Carry the held `block` over `goal` (xy), lower its centre to `z`, let go and rise."""

    def over_goal() -> np.ndarray:  # the grip point, corrected for where the block sits in the hand
        return goal()[:2] + s.grip_pos()[:2] - s.pos(block)[:2]

    in_hand = lambda: s.grip_pos()[2] - s.pos(block)[2]  # noqa: E731
    return [
        Phase("carry", _at(over_goal, style.safe_z), CLOSE, tol=0.01),
        Phase("lower", _at(over_goal, lambda: z + in_hand()), CLOSE, tol=0.006, speed=0.012),
        Phase("release", _hold(s), OPEN, min_steps=5, until=lambda: True),
        rise(s, style, OPEN),
    ]


def _hold(s: Scene) -> Callable[[], np.ndarray]:
    spot = {}
    return lambda: spot.setdefault("p", s.grip_pos())


def push(s: Scene, style: Style, block: str, goal: Callable[[], np.ndarray], axis) -> list[Phase]:
    """Push `block` along `axis` until it is level with `goal`, on a straight line through where the
    block stood when the approach began; re-approach when it drifts off that line by 2 cm."""
    axis = np.asarray(axis, dtype=float)
    side = np.array([-axis[1], axis[0]])
    line: dict[str, float] = {}
    along = lambda xy: float(xy[:2] @ axis)  # noqa: E731

    def on_line(t: float) -> np.ndarray:
        return t * axis + line.setdefault("side", float(s.pos(block)[:2] @ side)) * side

    def new_line() -> np.ndarray:  # rising: the next approach draws a fresh line
        line.clear()
        return s.grip_pos()

    def misaligned() -> bool:
        drift = abs(float(s.pos(block)[:2] @ side) - line.get("side", 0.0))
        return drift > 0.02 or along(s.pos(block)) - along(s.grip_pos()) < 0.02

    return [
        Phase("rise", _at(new_line, style.safe_z), OPEN, tol=0.02),
        Phase("behind", _at(lambda: on_line(along(s.pos(block)) - PUSH_OFFSET - 0.03), style.safe_z), PUSH_GRIP,
              tol=0.008),
        Phase("down", _at(lambda: on_line(along(s.pos(block)) - PUSH_OFFSET - 0.03), 0.022), PUSH_GRIP, tol=0.008),
        Phase("push", _at(lambda: on_line(along(s.pos(block)) - PUSH_OFFSET + 0.02), 0.022), PUSH_GRIP,
              until=lambda: along(goal()) - along(s.pos(block)) < 0.008, speed=0.01, max_steps=120,
              abort=misaligned, restart=0),
        rise(s, style, PUSH_GRIP),
    ]  # fmt: skip


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


# --- one plan per task ----------------------------------------------------------------------------------
def plan_lift(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    return [*pick(s, st, b["block"], 0.16), Phase("hold", _hold(s), CLOSE, max_steps=10**9, until=lambda: False)]


def plan_bowl(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    goal = lambda: s.pos(b["bowl"])[:2] + st.place  # noqa: E731
    return [*pick(s, st, b["block"], st.safe_z), *place(s, st, b["block"], goal, 0.045)]


def plan_pad(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    goal = lambda: s.pos(b["pad"])[:2] + st.place  # noqa: E731
    return [*pick(s, st, b["block"], st.safe_z), *place(s, st, b["block"], goal, BLOCK_HALF + 0.006)]


def plan_push(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    return push(s, st, b["block"], lambda: s.pos(b["pad"])[:2], params["direction"])


def plan_stack(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    goal = lambda: s.pos(b["base"])[:2] + st.place * 0.3  # noqa: E731
    top_z = lambda: s.pos(b["base"])[2] + 2 * BLOCK_HALF + 0.006  # noqa: E731
    return [*pick(s, st, b["top"], st.safe_z), *place(s, st, b["top"], goal, top_z())]


def plan_slide(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    """Grasp, drag the block sideways a centimetre above the table, set it down."""
    start = s.pos(b["block"])[:2]
    goal = lambda: start + np.array(params["direction"]) * (0.13 + st.place[0])  # noqa: E731
    return [*pick(s, st, b["block"], BLOCK_HALF + 0.012), *place(s, st, b["block"], goal, BLOCK_HALF + 0.004)]


def _slot(s: Scene, st: Style) -> np.ndarray:
    return s.handle_pos() + np.array([st.place[0], SLOT_OFFSET, 0.0])


def plan_drawer(s: Scene, st: Style, b: dict, params: dict, opening: bool) -> list[Phase]:
    """Hook the closed fingers into the handle's slot from above, pull (or push) along y, rise."""
    sign = -1.0 if opening else 1.0
    done = (lambda: s.drawer_opening() > 0.09) if opening else (lambda: s.drawer_opening() < 0.004)
    slot = lambda: _slot(s, st)  # noqa: E731
    return [
        rise(s, st, OPEN),
        Phase("over", _at(slot, st.safe_z), CLOSE, tol=0.006),
        Phase("into", _at(slot, 0.07), CLOSE, tol=0.006, speed=0.015),
        Phase("move", lambda: slot() + np.array([0.0, 0.04 * sign, 0.0]), CLOSE, until=done, speed=0.012),
        rise(s, st, CLOSE),
    ]


def plan_button(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    light = s.light_on
    cap = lambda: s.pos(b["button"])[:2] + st.place * 0.5  # noqa: E731
    return [
        rise(s, st, OPEN),
        Phase("over", _at(cap, st.safe_z), CLOSE, tol=0.008),  # high: the path may cross the cabinet
        Phase("press", _at(cap, 0.04), CLOSE, until=lambda: s.light_on != light, max_steps=40),
        Phase("up", _at(cap, st.safe_z), CLOSE, tol=0.02),
    ]


def plan_knock(s: Scene, st: Style, b: dict, params: dict) -> list[Phase]:
    """Come down behind the bottle and sweep through its upper half along the chosen direction."""
    d = np.array(params["direction"])
    start = s.pos(b["bottle"])[:2]
    fallen = lambda: bool(s.up(b["bottle"])[2] < 0.3)  # noqa: E731
    return [
        rise(s, st, OPEN),
        Phase("behind", _at(lambda: start - d * 0.08, st.safe_z), CLOSE, tol=0.01),
        Phase("down", _at(lambda: start - d * 0.08, 0.085), CLOSE, tol=0.01),
        Phase("sweep", _at(lambda: start + d * 0.12, 0.085), CLOSE, until=fallen, speed=0.015, max_steps=40),
        rise(s, st, CLOSE),
    ]


PLANS: dict[str, Callable[..., list[Phase]]] = {
    "lift-block": plan_lift,
    "place-in-bowl": plan_bowl,
    "place-on-pad": plan_pad,
    "push-block-to-pad": plan_push,
    "stack-blocks": plan_stack,
    "slide-block-left": plan_slide,
    "slide-block-right": plan_slide,
    "open-drawer": lambda s, st, b, p: plan_drawer(s, st, b, p, opening=True),
    "close-drawer": lambda s, st, b, p: plan_drawer(s, st, b, p, opening=False),
    "press-button": plan_button,
    "knock-over": plan_knock,
}


class TabletopExpert:
    """The scripted expert for a `TabletopEnv`: single tasks and chains alike."""

    def __init__(self, env: gym.Env) -> None:
        unwrapped = env.unwrapped
        if not isinstance(unwrapped, TabletopEnv):
            raise UserError(f"the tabletop expert needs a TabletopEnv, got {type(unwrapped).__name__}")
        self.env = unwrapped
        self._seed = 0
        self._plan: Plan | None = None
        self._key: tuple | None = None

    def reset(self, seed: int) -> None:
        self._seed = int(seed)
        self._plan, self._key = None, None

    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The next action for the env's current state (`obs` is not needed: the expert is privileged)."""
        env = self.env
        if env.episode is None:
            raise UserError("reset the env before asking the expert for an action")
        if env.subtask_index >= len(env.chain):  # chain complete: keep still
            return np.zeros(4, dtype=np.float32)
        key = (env.resets, env.subtask_index)
        if key != self._key:
            self._plan, self._key = self._make_plan(env.subtask, env.subtask_index), key
        return np.clip(self._plan.act(), env.action_space.low, env.action_space.high)

    def _make_plan(self, sub: Subtask, index: int) -> Plan:
        rng = np.random.default_rng([self._seed & 0xFFFFFFFF, index])
        style = Style.draw(rng)
        phases = PLANS[sub.task](self.env.scene, style, sub.binding, sub.params)
        return Plan(self.env.scene, phases, style, rng)


def run_expert(env: TabletopEnv, expert: TabletopExpert, seed: int, after_success: int = 5) -> tuple[bool, int, dict]:
    """Roll the expert out from `reset(seed)`: (success still held `after_success` steps after it first
    did, steps taken, the last info)."""
    expert.reset(seed)
    obs, info = env.reset(seed=seed)
    first = None
    for t in range(env.max_episode_steps):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        first = t if info["success"] and first is None else first
        if terminated or truncated or (first is not None and t - first >= after_success):
            break
    return bool(first is not None and info["success"]), t + 1, info


def measure(task: str, split: str = "train", seeds=range(20), after_success: int = 5) -> dict[str, float]:
    """The expert's record on `task` (or "chain") over `seeds`, state only (no rendering). An episode
    counts as a success when success still holds `after_success` steps after it first does."""
    env = TabletopEnv(task, cameras=(), split=split)
    expert = TabletopExpert(env)
    wins, steps, chain_lengths = 0, [], []
    for seed in seeds:
        won, n_steps, info = run_expert(env, expert, seed, after_success)
        wins += won
        steps.append(n_steps)
        chain_lengths.append(info.get("chain_length", float(info["success"])))
    env.close()
    n = len(steps)
    return {"episodes": n, "success_rate": wins / n, "mean_steps": float(np.mean(steps)),
            "mean_chain_length": float(np.mean(chain_lengths))}  # fmt: skip
