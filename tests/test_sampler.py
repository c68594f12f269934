import numpy as np
import pytest
import torch

from tests.conftest import CAMERA
from vla import keys
from vla.datasets.sampler import (
    EpochSampler,
    WindowDataset,
    WindowSpec,
    collate,
    make_datasets,
    split_episodes,
)
from vla.datasets.stats import get_stats
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError

WINDOW = WindowSpec(history=3, chunk=4, foresight_offsets=(2,))

# Episode 0 has 5 steps (0..4). Per anchor step: (observation steps, obs pads, action steps, action pads,
# future step, future pad), written out by hand.
TRUTH = {
    0: ([0, 0, 0], [1, 1, 0], [0, 1, 2, 3], [0, 0, 0, 0], 2, 0),
    1: ([0, 0, 1], [1, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0], 3, 0),
    2: ([0, 1, 2], [0, 0, 0], [2, 3, 4, 4], [0, 0, 0, 1], 4, 0),
    3: ([1, 2, 3], [0, 0, 0], [3, 4, 4, 4], [0, 0, 1, 1], 4, 1),
    4: ([2, 3, 4], [0, 0, 0], [4, 4, 4, 4], [0, 1, 1, 1], 4, 1),
}


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_windows_match_truth_table(small_store, cache_bytes):
    ds = WindowDataset(str(small_store), WINDOW, episodes=np.array([0]), cache_bytes=cache_bytes)
    assert len(ds) == 5
    for t, (obs, obs_pad, act, act_pad, fut, fut_pad) in TRUTH.items():
        item = ds[t]
        # state[:, 1] and the image's green channel hold the step index; action = state + 100
        np.testing.assert_array_equal(item[keys.OBS_STATE][:, 1], obs)
        np.testing.assert_array_equal(item[keys.pad_key(keys.OBS_STATE)], np.array(obs_pad, bool))
        np.testing.assert_array_equal(item[CAMERA][:, 0, 0, 1], obs)
        np.testing.assert_array_equal(item[keys.pad_key(CAMERA)], np.array(obs_pad, bool))
        np.testing.assert_array_equal(item[keys.ACTION][:, 1], np.array(act) + 100)
        np.testing.assert_array_equal(item[keys.pad_key(keys.ACTION)], np.array(act_pad, bool))
        assert item[keys.future_key(CAMERA)].shape == (1, 8, 8, 3)  # one horizon
        assert item[keys.future_key(CAMERA)][0, 0, 0, 1] == fut
        assert item[keys.pad_key(keys.future_key(CAMERA))].tolist() == [bool(fut_pad)]
        assert item[keys.INSTRUCTION] == "do thing 0"


# Every step supervised, horizons 1 and 2 steps, episode 0 (steps 0..4): per anchor and window step s,
# the action steps with their pads and the future steps with theirs, written out by hand.
EVERY_STEP = WindowSpec(history=3, chunk=4, foresight_offsets=(1, 2), every_step=True)
EVERY_STEP_TRUTH = {
    1: {  # window steps -1 (padded), 0, 1
        "action": [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]],
        "action_pad": [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        "future": [[0, 1], [1, 2], [2, 3]],
        "future_pad": [[0, 0], [0, 0], [0, 0]],
    },
    4: {  # window steps 2, 3, 4
        "action": [[2, 3, 4, 4], [3, 4, 4, 4], [4, 4, 4, 4]],
        "action_pad": [[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1]],
        "future": [[3, 4], [4, 4], [4, 4]],
        "future_pad": [[0, 0], [0, 1], [1, 1]],
    },
}


def test_every_step_windows_match_truth_table(small_store):
    ds = WindowDataset(str(small_store), EVERY_STEP, episodes=np.array([0]))
    for t, truth in EVERY_STEP_TRUTH.items():
        item = ds[t]
        assert item[keys.ACTION].shape == (3, 4, 4) and item[keys.future_key(CAMERA)].shape == (3, 2, 8, 8, 3)
        np.testing.assert_array_equal(item[keys.ACTION][..., 1], np.array(truth["action"]) + 100)
        np.testing.assert_array_equal(item[keys.pad_key(keys.ACTION)], np.array(truth["action_pad"], bool))
        np.testing.assert_array_equal(item[keys.future_key(CAMERA)][..., 0, 0, 1], truth["future"])
        np.testing.assert_array_equal(item[keys.pad_key(keys.future_key(CAMERA))], np.array(truth["future_pad"], bool))


def test_windows_never_cross_episodes(small_store):
    ds = WindowDataset(str(small_store), WINDOW)
    for i in range(len(ds)):
        item = ds[i]
        episode = item["episode_index"]
        assert (item[keys.OBS_STATE][:, 0] == episode).all()
        assert (item[keys.ACTION][:, 0] == episode + 100).all()
        assert (item[keys.future_key(CAMERA)][:, 0, 0, 0] == episode).all()


def test_split_is_disjoint_and_deterministic():
    for n in (2, 7, 50):
        tasks = ["a"] * n
        train, val = split_episodes(tasks, 0.2, seed=3)
        assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(n))
        assert len(val) >= 1 and len(train) >= 1
        again = split_episodes(tasks, 0.2, seed=3)
        np.testing.assert_array_equal(train, again[0])
        np.testing.assert_array_equal(val, again[1])
    assert len(split_episodes(["a"] * 10, 0.0)[1]) == 0


def test_split_never_takes_a_tasks_only_episode():
    # The case: 31 episodes, one task of them has a single episode (episode 17).
    tasks = [f"task-{i % 3}" for i in range(30)]
    tasks.insert(17, "lonely")
    for seed in range(100):
        train, val = split_episodes(tasks, 0.1, seed)
        assert 17 in train and 17 not in val
        assert len(val) == 3  # round(0.1 x the 30 episodes of tasks that have two or more)
        assert sorted({tasks[i] for i in val}) == ["task-0", "task-1", "task-2"]  # one from each task of 10
        assert {tasks[i] for i in train} == set(tasks)  # every task keeps training data
    assert len({tuple(split_episodes(tasks, 0.1, seed)[1]) for seed in range(100)}) > 50  # the seed matters


def test_split_is_proportional_per_task():
    tasks = ["a"] * 7 + ["b"] * 5 + ["c"] * 2 + ["d"]
    train, val = split_episodes(tasks, 0.3, seed=0)
    counts = {t: sum(tasks[i] == t for i in val) for t in "abcd"}
    assert counts == {"a": 2, "b": 1, "c": 1, "d": 0}  # 4 of 14: quotas 2.0, 1.43, 0.57 -> largest remainders
    # A task's only episode trains even when the fraction asks for more than the other tasks can give.
    train, val = split_episodes(["a", "a", "b"], 0.8, seed=0)
    assert len(val) == 1 and 2 in train
    assert len(split_episodes(["a", "b", "c"], 0.5, seed=0)[1]) == 0  # no task can spare an episode


def test_split_does_not_depend_on_the_order_of_tasks():
    tasks = ["a"] * 6 + ["b"] * 6
    _, val = split_episodes(tasks, 0.34, seed=4)
    _, swapped = split_episodes(tasks[6:] + tasks[:6], 0.34, seed=4)
    assert sorted((val % 6).tolist()) == sorted((np.asarray(swapped) % 6).tolist())


def test_datasets_split_by_episode(small_store):
    train, val = make_datasets(str(small_store), WINDOW, val_fraction=0.34, seed=1)
    train_eps = {train[i]["episode_index"] for i in range(len(train))}
    val_eps = {val[i]["episode_index"] for i in range(len(val))}
    assert train_eps.isdisjoint(val_eps) and len(train_eps | val_eps) == 6


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(100, seed=5), EpochSampler(100, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert sorted(a) == list(range(100))
    assert list(EpochSampler(100, seed=6)) != list(EpochSampler(100, seed=5))


def test_dataloader_with_workers(small_store):
    ds = WindowDataset(str(small_store), WINDOW)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=8, sampler=EpochSampler(len(ds)), num_workers=2, collate_fn=collate
    )
    batches = list(loader)
    assert sum(len(b["instruction"]) for b in batches) == len(ds)
    batch = batches[0]
    assert batch[CAMERA].shape == (8, 3, 8, 8, 3) and batch[CAMERA].dtype == torch.uint8
    assert batch[keys.ACTION].shape == (8, 4, 4)
    assert batch[keys.pad_key(keys.ACTION)].dtype == torch.bool


def test_stats_match_numpy_and_are_cached(small_store):
    store = TrajectoryStore.open(small_store)
    stats = get_stats(store)
    state = np.concatenate([store.episode(i)[keys.OBS_STATE] for i in range(6)])
    np.testing.assert_allclose(stats[keys.OBS_STATE]["mean"], state.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats[keys.OBS_STATE]["std"], state.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[keys.OBS_STATE]["q99"], np.percentile(state, 99, axis=0), rtol=1e-5)
    np.testing.assert_array_equal(stats[keys.ACTION]["min"], state.min(0) + 100)
    assert stats[CAMERA]["mean"].shape == (3,)  # per channel
    assert TrajectoryStore.open(small_store).attrs["stats"]["num_steps"] == store.num_steps  # cached on disk
    from tests.conftest import add_synthetic

    with TrajectoryStore.open(small_store, mode="a") as writer:
        add_synthetic(writer, 6, 20)
    grown = get_stats(TrajectoryStore.open(small_store))
    assert grown[keys.OBS_STATE]["max"][1] == 19  # recomputed after the append


def test_window_spec_validates():
    with pytest.raises(UserError, match="history"):
        WindowSpec(history=0)


def test_preloaded_cache_reads_the_same_windows(small_store):
    plain = WindowDataset(str(small_store), WINDOW, cache_bytes=0)
    cached = WindowDataset(str(small_store), WINDOW)
    cached.preload()
    assert cached._caches[CAMERA].cache  # the chunks are decoded up front
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
