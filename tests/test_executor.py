"""The chunk executor: queue order, ensembling weights, stale actions, instruction changes, both clocks."""

import re

import numpy as np
import pytest

from vla import keys
from vla.errors import UserError
from vla.policies.base import ExpertPolicy, Prediction, ZeroPolicy
from vla.policies.executor import ChunkExecutor

SPECS = {keys.OBS_STATE: keys.state_spec("x", 1), keys.ACTION: keys.action_spec("dx", 1)}


class Counting:
    """Chunk n (the n-th prediction since reset) is [100n, 100n + 1, ...]; records every call."""

    features, history = SPECS, 1

    def __init__(self, chunk: int = 8, n_action_steps: int = 4, temporal_ensemble: float = 0.0):
        self.chunk, self.n_action_steps, self.temporal_ensemble = chunk, n_action_steps, temporal_ensemble
        self.calls: list[tuple[str, float]] = []

    def reset(self) -> None:
        self.calls = []

    def observe(self, obs, instruction: str) -> None:
        self.calls.append(("observe", float(obs[keys.OBS_STATE][0])))

    def predict(self, obs, instruction: str) -> Prediction:
        n = sum(kind == "predict" for kind, _ in self.calls)
        self.calls.append(("predict", float(obs[keys.OBS_STATE][0])))
        return Prediction(100 * n + np.arange(self.chunk, dtype=np.float32)[:, None])


def obs(t: float) -> dict:
    return {keys.OBS_STATE: np.array([t], np.float32)}


def run_steps(executor: ChunkExecutor, ticks: int, instruction="go") -> list[float]:
    return [float(executor.act(obs(t), instruction, t)[0][0]) for t in range(ticks)]


def test_quickstart_queue_plays_four_of_eight_then_predicts():
    """The quickstart's settings (n_action_steps 4 of chunk 8, no ensembling), by hand: the first four
    actions of each chunk, a prediction every fourth tick, the policy observing every other tick."""
    policy = Counting(chunk=8, n_action_steps=4)
    executor = ChunkExecutor(policy)
    predicted = []
    for t in range(10):
        _, prediction = executor.act(obs(t), "go", t)
        predicted.append(prediction is not None)
    executor.reset()
    assert run_steps(executor, 10) == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201]
    assert predicted == [True, False, False, False] * 2 + [True, False]
    assert [t for _, t in policy.calls] == list(range(10))  # every observation reached the history, in order
    assert [t for kind, t in policy.calls if kind == "predict"] == [0, 4, 8]


def test_overrides_and_short_chunks():
    policy = Counting(chunk=3, n_action_steps=4)
    assert run_steps(ChunkExecutor(policy), 7) == [0, 1, 2, 100, 101, 102, 200]  # a chunk never outlasts itself
    assert run_steps(ChunkExecutor(policy, n_action_steps=1), 3) == [0, 100, 200]
    with pytest.raises(UserError, match=re.escape("n_action_steps must be in [1, 3] (the policy predicts chunks of 3")):
        ChunkExecutor(policy, n_action_steps=0)
    with pytest.raises(UserError, match=re.escape("n_action_steps must be in [1, 3]") + ".*got 99"):
        ChunkExecutor(policy, n_action_steps=99)  # more actions than a chunk holds: refused, not silently capped


def test_temporal_ensembling_weights_the_oldest_most():
    """k = ln 2: weights 1, 1/2, 1/4, 1/8 for the chunks predicted 3, 2, 1, 0 ticks ago."""
    policy = Counting(chunk=4, temporal_ensemble=np.log(2))
    executor = ChunkExecutor(policy)
    actions = run_steps(executor, 6)
    assert [kind for kind, _ in policy.calls] == ["predict"] * 6  # a chunk every tick
    # Tick t: chunk s (predicted at tick s, values 100s + i) gives action t - s, for s = max(0, t-3)..t.
    for t, action in enumerate(actions):
        votes = [100 * s + (t - s) for s in range(max(0, t - 3), t + 1)]
        w = 0.5 ** np.arange(len(votes))
        assert action == pytest.approx((w * votes).sum() / w.sum())
    assert actions[3] == pytest.approx((3 + 0.5 * 102 + 0.25 * 201 + 0.125 * 300) / 1.875)
    assert len(executor.chunks) == 3  # the chunk from tick 2 has played its last action: it left


def test_stale_actions_are_dropped_on_the_wall_clock():
    """hz 10: action i of a chunk from an observation at t is due at t + i/10, picked at the nearest slot."""
    executor = ChunkExecutor(Counting(chunk=8, n_action_steps=8), hz=10)
    executor.update(obs(0), "go", obs_time=50.0, now=50.0)
    assert executor.pick(50.04).action[0] == 0  # 0.4 of a slot late: still slot 0
    pick = executor.pick(50.31)  # an overrun: slots 1 and 2 passed
    assert pick.action[0] == 3 and pick.dropped == 2
    assert executor.pick(50.31).action[0] == 4  # the same instant again: the next action, never 3 twice
    # A slow synchronous prediction: asked for at 51.0 (the chunk ran out), ready 0.32 s later.
    assert executor.left(51.0) == 0
    assert executor.update(obs(1), "go", obs_time=51.0, now=51.0) is not None
    pick = executor.pick(51.32)
    assert pick.action[0] == 103 and pick.dropped == 3 and pick.first_use_of == 51.0


def test_a_new_instruction_drops_the_queued_chunks():
    policy = Counting(chunk=8, n_action_steps=4)
    executor = ChunkExecutor(policy)
    actions = [executor.act(obs(t), "open", t)[0][0] for t in range(2)]
    action, prediction = executor.act(obs(2), "close", 2)
    assert actions == [0, 1] and action[0] == 100 and prediction is not None
    ensembling = ChunkExecutor(Counting(chunk=4, temporal_ensemble=1.0))
    ensembling.act(obs(0), "open", 0)
    ensembling.act(obs(1), "open", 1)
    assert ensembling.act(obs(2), "close", 2)[0][0] == 200  # the chunks for "open" have no say
    assert len(ensembling.chunks) == 1


@pytest.mark.parametrize("settings", [dict(n_action_steps=3), dict(temporal_ensemble=0.3)])
def test_step_clock_and_wall_clock_agree_when_ticks_are_on_time(settings):
    """The robot's sync path on a wall clock plays exactly what evaluation's step clock plays, as long as
    ticks keep within half a period of their slot counted from the chunk's capture (here: capture jitter
    up to +-0.2 of a period, a prediction taking 0.05)."""
    by_step = run_steps(ChunkExecutor(Counting(chunk=5), **settings), 12)
    hz, t0 = 20.0, 1000.0
    wall = ChunkExecutor(Counting(chunk=5), hz, **settings)
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, 12) / hz
    by_wall = []
    for k in range(12):
        captured = t0 + k / hz + jitter[k]
        wall.update(obs(k), "go", obs_time=captured, now=captured)
        pick = wall.pick(captured + 0.05 / hz)
        assert pick.dropped == 0
        by_wall.append(float(pick.action[0]))
    np.testing.assert_allclose(by_wall, by_step, rtol=1e-6)


def test_zero_policy_through_the_executor():
    zero = ZeroPolicy(SPECS)  # evaluation's baseline: a chunk of one action every step
    executor = ChunkExecutor(zero)
    for t in range(3):
        action, prediction = executor.act(obs(t), "go", t)
        assert action.shape == (1,) and action.dtype == np.float32 and not action.any()
        assert prediction is not None and prediction.foresight == {}
    rehearsal = ChunkExecutor(ZeroPolicy(SPECS, chunk=10), hz=10)  # `vla control --policy zero`
    predicted = [rehearsal.update(obs(0), "go", t / 10, t / 10) is not None for t in range(12)]
    assert predicted == [True] + [False] * 9 + [True, False]
    assert not rehearsal.pick(1.1).action.any()


class _FakeEnv:
    unwrapped = property(lambda self: self)

    def feature_specs(self):
        return SPECS


class _FakeExpert:
    """Moves towards x = 1; its reset seed is recorded."""

    def __init__(self):
        self.seeds = []

    def reset(self, seed):
        self.seeds.append(seed)

    def act(self, o):
        return np.array([1.0 - o[keys.OBS_STATE][0]])


def test_expert_policy_acts_on_every_observation():
    expert = _FakeExpert()
    policy = ExpertPolicy(_FakeEnv(), expert, seed=7)
    executor = ChunkExecutor(policy)  # resets the expert with its seed
    actions = [executor.act(obs(x), "go", t) for t, x in enumerate([0.0, 0.25, 0.5])]
    assert [float(a[0]) for a, _ in actions] == [1.0, 0.75, 0.5]  # from each tick's own observation
    assert all(p is not None and p.actions.shape == (1, 1) for _, p in actions)
    assert expert.seeds == [7]


def test_latencies_are_recorded_per_prediction():
    executor = ChunkExecutor(Counting(chunk=8, n_action_steps=4))
    run_steps(executor, 9)
    assert len(executor.latencies) == 3 and all(s >= 0 for s in executor.latencies)
    executor.reset()
    assert executor.latencies == [] and executor.chunks == []
    assert executor.due(0.0, "go", lead=0)  # nothing queued
