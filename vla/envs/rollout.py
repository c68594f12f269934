"""The one rollout loop: expert collection, policy evaluation and foresight all run episodes through it.

    run = rollout(env, act, seed, max_steps, steps_after_success, observers=[...])

`act(obs, instruction) -> action` is called once per env step with the current observation and the
instruction in force: the reset's, until a step's info gives another (a chain moving on). The action
is cast to float32 and stepped, or `perturb(action)` is stepped where given (DART collection: the env
executes a noisy action, observers see, and a store keeps, the one `act` chose). Observers see the
episode as it happens, always in this order:

    on_reset(run, obs, info)   after env.reset(seed)
    on_act(run, obs, action)   after act, before the env steps; run.steps: the steps taken before it
    on_step(run, obs, info)    after the env stepped; run.steps counts that step, run.success is sticky

An episode ends `steps_after_success` steps after the first step whose info reports success, after
`max_steps` steps, or when the env terminates or truncates.

`TimedAct` wraps an `act` to time it and, optionally, charge its latency to the sim clock (`vla eval`);
`record_episode` keeps what a store needs (`vla collect`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from vla import keys

Act = Callable[[dict[str, np.ndarray], str], np.ndarray]  # (observation, instruction) -> (action_dim,) action


@dataclass
class Rollout:
    """One episode as the loop saw it; observers read it while it grows."""

    task: str
    seed: int
    instructions: list[str]  # every instruction in force, in order: the reset's, then a chain's next ones
    steps: int = 0  # env steps taken
    steps_to_success: int | None = None  # env steps up to and including the first one reporting success
    info: dict = field(default_factory=dict)  # the latest info (the reset's before the first step)

    @property
    def instruction(self) -> str:
        """The first instruction (a chain's later ones follow in `instructions`)."""
        return self.instructions[0]

    @property
    def success(self) -> bool:
        return self.steps_to_success is not None


class Observer:
    """Per-step hooks of `rollout` (see the module docstring); override the ones you need."""

    def on_reset(self, run: Rollout, obs: dict[str, np.ndarray], info: dict) -> None:
        pass

    def on_act(self, run: Rollout, obs: dict[str, np.ndarray], action: np.ndarray) -> None:
        pass

    def on_step(self, run: Rollout, obs: dict[str, np.ndarray], info: dict) -> None:
        pass


def rollout(
    env: gym.Env,
    act: Act,
    seed: int,
    max_steps: int,
    steps_after_success: int = 0,
    observers: Sequence[Observer] = (),
    perturb: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Rollout:
    """Roll `act` out from `env.reset(seed=seed)` until the episode ends (see the module docstring)."""
    obs, info = env.reset(seed=seed)
    run = Rollout(info[keys.TASK], seed, [info[keys.INSTRUCTION]], info=info)
    for o in observers:
        o.on_reset(run, obs, info)
    done = False
    while not done and run.steps < max_steps:
        action = np.asarray(act(obs, run.instructions[-1]), np.float32)
        for o in observers:
            o.on_act(run, obs, action)
        obs, _, terminated, truncated, info = env.step(perturb(action) if perturb else action)
        run.steps, run.info = run.steps + 1, info
        if info[keys.SUCCESS] and not run.success:
            run.steps_to_success = run.steps
        instruction = info.get(keys.INSTRUCTION, run.instructions[-1])
        if instruction != run.instructions[-1]:
            run.instructions.append(instruction)  # a chain moved on to its next subtask
        after = run.success and run.steps - run.steps_to_success >= steps_after_success
        done = bool(terminated or truncated or after)
        for o in observers:
            o.on_step(run, obs, info)
    return run


class TimedAct:
    """`act`, timed; with `charge_fps`, its latency is charged to the sim clock.

    Each call's wall time L becomes ceil(L * fps) env steps during which the previous action keeps
    being applied before the new one takes effect, as on a robot that keeps moving while the policy
    thinks; before an episode's first action the held action is `idle`. While held steps remain, a
    call returns the held action without calling `act`. Build one per episode.
    """

    def __init__(self, act: Act, idle: np.ndarray, charge_fps: float | None = None):
        self.act, self.charge_fps = act, charge_fps
        self.previous = np.asarray(idle, np.float32)
        self.latencies: list[float] = []  # wall time of each call to `act`, seconds
        self.steps_charged = 0  # held steps returned so far
        self._queue: deque[tuple[np.ndarray, bool]] = deque()  # (action, held) still to return

    def __call__(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if not self._queue:
            start = time.perf_counter()
            action = np.asarray(self.act(obs, instruction), np.float32)
            self.latencies.append(time.perf_counter() - start)
            held = math.ceil(self.latencies[-1] * self.charge_fps) if self.charge_fps else 0
            self._queue.extend([(self.previous, True)] * held + [(action, False)])
            self.previous = action
        action, held = self._queue.popleft()
        self.steps_charged += held
        return action


# --- collection: what a store keeps of an episode ----------------------------------------------
@dataclass
class Episode:
    data: dict[str, np.ndarray]  # {key: (T, *shape)}: observations seen and actions taken
    instruction: str
    task: str
    success: bool
    seed: int
    steps_to_success: int | None  # env steps up to and including the first one reporting success


class Recorder(Observer):
    """Keeps every observation an action was chosen from, and that action."""

    def __init__(self):
        self.observations: dict[str, list[np.ndarray]] = {}
        self.actions: list[np.ndarray] = []

    def on_act(self, run: Rollout, obs: dict[str, np.ndarray], action: np.ndarray) -> None:
        for k, v in obs.items():
            self.observations.setdefault(k, []).append(v)
        self.actions.append(action)

    def data(self) -> dict[str, np.ndarray]:
        """{key: (T, *shape)} observations and actions, T the steps taken."""
        return {**{k: np.stack(v) for k, v in self.observations.items()}, keys.ACTION: np.stack(self.actions)}


def record_episode(
    env: gym.Env,
    act: Act,
    seed: int,
    max_steps: int,
    steps_after_success: int = 10,
    perturb: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Episode:
    """`rollout`, keeping the observations seen and the actions `act` chose (with `perturb`, not the
    actions executed)."""
    recorder = Recorder()
    run = rollout(env, act, seed, max_steps, steps_after_success, [recorder], perturb)
    return Episode(recorder.data(), run.instruction, run.task, run.success, seed, run.steps_to_success)
