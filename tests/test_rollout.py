"""The one rollout loop: when episodes end, what act and the observers see and in which order, latency
charging, recording for stores, and the episode seeds (part of the data contract)."""

import gymnasium as gym
import numpy as np
import pytest

from vla import envs, keys
from vla.envs.rollout import Observer, TimedAct, record_episode, rollout


class CountEnv(gym.Env):
    """Observation: the steps taken. Success from step `success_from` on; a new instruction from step
    `new_instruction_at`; terminates or truncates at the given steps."""

    observation_space = gym.spaces.Dict({keys.OBS_STATE: gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, success_from=None, terminate_at=None, truncate_at=None, new_instruction_at=None):
        self.success_from, self.terminate_at, self.truncate_at = success_from, terminate_at, truncate_at
        self.new_instruction_at = new_instruction_at
        self.t, self.applied, self.seeds = 0, [], []

    def _obs(self):
        return {keys.OBS_STATE: np.array([self.t], np.float32)}

    def _info(self):
        moved_on = self.new_instruction_at is not None and self.t >= self.new_instruction_at
        return {keys.TASK: "count", keys.INSTRUCTION: "then this" if moved_on else "count up"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.applied = 0, []
        self.seeds.append(seed)
        return self._obs(), self._info()

    def step(self, action):
        self.t += 1
        self.applied.append(action)
        info = {**self._info(), keys.SUCCESS: self.success_from is not None and self.t >= self.success_from}
        return self._obs(), 0.0, self.t == self.terminate_at, self.t == self.truncate_at, info


def zero(obs, instruction):
    return np.zeros(1)


@pytest.mark.parametrize(
    "env_kw, max_steps, after, steps, to_success",
    [
        ({}, 7, 2, 7, None),  # the step limit
        ({"success_from": 3}, 100, 0, 3, 3),  # ends on the success step
        ({"success_from": 3}, 100, 4, 7, 3),  # four more steps after it
        ({"success_from": 3}, 5, 4, 5, 3),  # the limit comes first
        ({"terminate_at": 4}, 100, 2, 4, None),
        ({"truncate_at": 6}, 100, 2, 6, None),
        ({"success_from": 2, "terminate_at": 3}, 100, 5, 3, 2),
    ],
)
def test_when_an_episode_ends(env_kw, max_steps, after, steps, to_success):
    env = CountEnv(**env_kw)
    run = rollout(env, zero, 11, max_steps, after)
    assert (run.steps, run.steps_to_success, run.success) == (steps, to_success, to_success is not None)
    assert len(env.applied) == steps and env.seeds == [11]
    assert run.task == "count" and run.seed == 11 and run.info[keys.SUCCESS] == (to_success is not None)


def test_hooks_see_each_step_in_order_and_act_gets_the_instruction_in_force():
    events = []

    class Log(Observer):
        def on_reset(self, run, obs, info):
            events.append(("reset", run.steps, int(obs[keys.OBS_STATE][0])))

        def on_act(self, run, obs, action):
            events.append(("act", run.steps, int(obs[keys.OBS_STATE][0]), float(action[0])))

        def on_step(self, run, obs, info):
            events.append(("step", run.steps, int(obs[keys.OBS_STATE][0]), run.success))

    seen = []

    def act(obs, instruction):
        seen.append(instruction)
        return np.array([obs[keys.OBS_STATE][0] / 10], np.float64)

    env = CountEnv(success_from=2, new_instruction_at=2)
    run = rollout(env, act, 0, 100, 1, [Log()])
    assert events == [
        ("reset", 0, 0),
        ("act", 0, 0, 0.0),
        ("step", 1, 1, False),
        ("act", 1, 1, np.float32(0.1)),
        ("step", 2, 2, True),
        ("act", 2, 2, np.float32(0.2)),
        ("step", 3, 3, True),
    ]
    assert seen == ["count up", "count up", "then this"]
    assert run.instructions == ["count up", "then this"] and run.instruction == "count up"
    assert all(a.dtype == np.float32 for a in env.applied)  # the loop casts what act returns


def test_timed_act_holds_the_previous_action_while_the_policy_thinks(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("vla.envs.rollout.time.perf_counter", lambda: clock[0])
    calls = []

    def slow(obs, instruction):  # 0.25 s a call: ceil(0.25 * 10 Hz) = 3 held steps at 10 Hz
        calls.append(int(obs[keys.OBS_STATE][0]))
        clock[0] += 0.25
        return np.array([len(calls)])

    env = CountEnv()
    timed = TimedAct(slow, idle=np.array([-1.0]), charge_fps=10.0)
    rollout(env, timed, 0, 10, 0)
    assert [float(a[0]) for a in env.applied] == [-1, -1, -1, 1, 1, 1, 1, 2, 2, 2]
    assert calls == [0, 4, 8]  # the policy sees the observation when it starts thinking
    assert timed.latencies == [0.25] * 3 and timed.steps_charged == 8  # the last two held steps too

    untimed = TimedAct(slow, idle=np.array([-1.0]))  # timed, nothing charged
    rollout(CountEnv(), untimed, 0, 3, 0)
    assert len(untimed.latencies) == 3 and untimed.steps_charged == 0


def test_record_episode_keeps_what_act_saw_and_did():
    env = CountEnv(success_from=4)
    episode = record_episode(env, lambda obs, _: obs[keys.OBS_STATE] + 0.5, 5, 100, steps_after_success=1)
    assert episode.success and episode.steps_to_success == 4 and episode.seed == 5
    assert episode.data[keys.OBS_STATE][:, 0].tolist() == [0, 1, 2, 3, 4]
    assert episode.data[keys.ACTION][:, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert episode.data[keys.ACTION].dtype == np.float32
    assert (episode.instruction, episode.task) == ("count up", "count")


def test_record_episode_with_perturb_keeps_the_chosen_action_and_steps_the_perturbed_one():
    """DART collection: the env executes the perturbed action, the episode keeps the one `act` chose."""
    env = CountEnv()
    episode = record_episode(env, lambda obs, _: obs[keys.OBS_STATE] * 0 + 0.25, 0, 3, perturb=lambda a: a - 1.0)
    assert episode.data[keys.ACTION][:, 0].tolist() == [0.25] * 3
    assert [float(a[0]) for a in env.applied] == [-0.75] * 3


def test_a_suite_episode_through_the_loop():
    suite = envs.get_suite("tabletop")
    env = suite.make_env("lift-block", image_size=16, cameras=("static",))
    try:
        expert = suite.make_expert(env)
        expert.reset(3)
        episode = record_episode(env, lambda obs, _: expert.act(obs), 3, 200, steps_after_success=2)
    finally:
        env.close()
    steps = len(episode.data[keys.ACTION])
    assert episode.success and steps == episode.steps_to_success + 2
    assert episode.data[keys.image_key("static")].shape == (steps, 16, 16, 3)
    assert episode.task == "lift-block" and episode.instruction


def test_episode_seeds_are_pinned():
    """Stores record these seeds and `vla collect` resumes by them: they must never change."""
    assert envs.episode_seed(0, "metaworld", "train", "reach-v3", 0) == 1888730717
    assert envs.episode_seed(0, "metaworld", "train", "reach-v3", 1) == 530163565
    assert envs.episode_seed(3, "tabletop", "eval/unseen", "chain", 7) == 993116112
    assert envs.episode_seed(0, "tabletop", "foresight", "lift-block", 0) == 839570735
