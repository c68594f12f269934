import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from tests.conftest import SPECS, add_synthetic, synthetic_episode
from vla import keys
from vla.datasets.store import StoreError, TrajectoryStore


def test_round_trip_and_reopen(small_store):
    store = TrajectoryStore.open(small_store)
    assert store.num_episodes == 6
    assert store.num_steps == sum(range(5, 11))
    assert store.specs == SPECS
    for i in range(6):
        expected = synthetic_episode(i, 5 + i)
        got = store.episode(i)
        for key in SPECS:
            np.testing.assert_array_equal(got[key], expected[key])
            assert got[key].dtype == np.dtype(SPECS[key].dtype)
        assert store.episode_meta(i) == {
            "instruction": f"do thing {i}",
            "task": f"task-{i % 3}",
            "success": i % 2 == 0,
            "seed": 1000 + i,
            "source": "expert",
        }
    assert store.attrs["format"] == "vla-trajectories"
    assert store.attrs["specs"][keys.ACTION]["units"].startswith("m ")


def test_append_after_reopen(small_store):
    with TrajectoryStore.open(small_store, mode="a") as store:
        add_synthetic(store, 6, 3)
    store = TrajectoryStore.open(small_store)
    assert store.num_episodes == 7
    np.testing.assert_array_equal(store.episode(6)[keys.OBS_STATE], synthetic_episode(6, 3)[keys.OBS_STATE])


def test_one_writer_at_a_time(small_store):
    with TrajectoryStore.open(small_store, mode="a"):
        with pytest.raises(StoreError, match="another process"):
            TrajectoryStore.open(small_store, mode="a")
        TrajectoryStore.open(small_store)  # readers are never blocked
    TrajectoryStore.open(small_store, mode="a").close()  # released on close


def test_create_refuses_existing_path(small_store):
    with pytest.raises(StoreError, match="already exists"):
        TrajectoryStore.create(small_store, SPECS, fps=10)


def test_bad_episodes_are_refused(small_store):
    with TrajectoryStore.open(small_store, mode="a") as store:
        episode = synthetic_episode(9, 4)
        with pytest.raises(StoreError, match="schema"):
            store.add_episode(
                {keys.ACTION: episode[keys.ACTION]},
                instruction="x",
                task="t",
                success=True,
                seed=0,
                source="expert",
            )
        episode[keys.OBS_STATE] = episode[keys.OBS_STATE][:, :3]
        with pytest.raises(StoreError, match="per-step shape"):
            store.add_episode(episode, instruction="x", task="t", success=True, seed=0, source="expert")
        with pytest.raises(ValueError, match="unknown source"):
            store.add_episode(synthetic_episode(9, 4), instruction="x", task="t", success=True, seed=0, source="dream")
        assert store.num_episodes == 6
    assert TrajectoryStore.open(small_store).num_steps == sum(range(5, 11))


def test_not_a_store_and_missing(tmp_path):
    with pytest.raises(StoreError, match="no store"):
        TrajectoryStore.open(tmp_path / "nothing.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="not a vla trajectory store"):
        TrajectoryStore.open(tmp_path / "other.zarr")


def test_truncated_store_raises_clear_error(small_store):
    ends = zarr.open_array(small_store / "meta" / keys.EPISODE_ENDS, mode="r+")
    ends.resize((7,))
    ends[6] = 10_000  # claims steps that data does not hold
    with pytest.raises(StoreError, match="truncated"):
        TrajectoryStore.open(small_store)


def test_uncommitted_tail_is_ignored_then_trimmed(small_store):
    # What a writer killed after writing data but before the commit leaves behind.
    data = zarr.open_array(small_store / "data" / keys.OBS_STATE, mode="r+")
    data.resize((data.shape[0] + 5, 4))
    ends = zarr.open_array(small_store / "meta" / keys.EPISODE_ENDS, mode="r+")
    ends.resize((7,))  # resized, value not yet written: reads as the fill value 0
    assert TrajectoryStore.open(small_store).num_episodes == 6
    with TrajectoryStore.open(small_store, mode="a") as store:
        add_synthetic(store, 6, 4)
    store = TrajectoryStore.open(small_store)
    assert store.num_episodes == 7
    np.testing.assert_array_equal(store.episode(6)[keys.OBS_STATE], synthetic_episode(6, 4)[keys.OBS_STATE])


WRITER = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import SPECS, add_synthetic
from vla.datasets.store import TrajectoryStore
path = {path!r}
if TrajectoryStore.exists(path):
    store = TrajectoryStore.open(path, mode="a")
else:
    store = TrajectoryStore.create(path, SPECS, fps=10)
i = store.num_episodes
print("ready", flush=True)
while True:
    add_synthetic(store, i, 3 + i % 7)
    i += 1
"""


def test_killed_writer_leaves_committed_episodes(tmp_path):
    """SIGKILL a writer at random instants; every reopen sees exactly a prefix of whole episodes."""
    path = str(tmp_path / "killed.zarr")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=root, path=path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = TrajectoryStore.open(path)
        assert store.num_episodes >= seen
        seen = store.num_episodes
        for i in range(store.num_episodes):
            expected = synthetic_episode(i, 3 + i % 7)
            got = store.episode(i)
            for key in SPECS:
                np.testing.assert_array_equal(got[key], expected[key])
            assert store.episode_meta(i)["instruction"] == f"do thing {i}"
    assert seen > 0
