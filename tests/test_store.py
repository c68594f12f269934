import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from tests.conftest import CAMERA, SPECS, add_synthetic, synthetic_episode
from vla import keys
from vla.datasets.store import StoreError, TrajectoryStore


def _chunk_files(store_path, key: str, group: str = "data") -> list:
    return sorted(p for p in (store_path / group / key / "c").rglob("*") if p.is_file())


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


# --- writes must fit the schema (issue 15.1) --------------------------------------------------------------
def _frames(values, dtype):
    return np.broadcast_to(np.asarray(values, dtype), (5, 8, 8, 3)).copy()


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            CAMERA,
            _frames(0.5, np.float32),
            "observation.images.front given as float32 (values 0.5..0.5); the store's spec says uint8",
        ),  # fmt: skip
        (CAMERA, _frames(300, np.int64), "given as int64 (values 300..300), outside uint8's 0..255"),
        (CAMERA, _frames(-1, np.int16), "outside uint8's 0..255"),
        (CAMERA, _frames(True, bool), "given as bool"),
        (
            CAMERA,
            np.zeros((5, 8, 8), np.uint8),
            "observation.images.front has per-step shape (8, 8); the store's spec says (8, 8, 3)",
        ),  # fmt: skip
        (keys.OBS_STATE, np.full((5, 4), np.nan, np.float32), "observation.state given as float32 with non-finite"),
        (keys.ACTION, np.full((5, 4), 1e300), "action given as float64 with beyond float32's range values"),
        (keys.ACTION, np.zeros((5, 4), "U1"), "action given as <U1"),
    ],
)
def test_a_write_that_does_not_fit_the_schema_is_refused_and_writes_nothing(small_store, key, value, message):
    with TrajectoryStore.open(small_store, mode="a") as store:
        before = {k: store.array(k).shape for k in SPECS}
        episode = synthetic_episode(6, 5)
        episode[key] = value
        with pytest.raises(StoreError) as error:
            store.add_episode(episode, instruction="x", task="t", success=True, seed=0, source="expert")
        assert message in str(error.value)
        assert {k: store.array(k).shape for k in SPECS} == before
    assert TrajectoryStore.open(small_store).num_episodes == 6


def test_values_that_convert_exactly_are_accepted(small_store):
    """Integer frames within 0..255 and float64 or integer state/actions convert without loss."""
    episode = synthetic_episode(6, 5)
    episode[CAMERA] = episode[CAMERA].astype(np.int64)
    episode[keys.ACTION] = episode[keys.ACTION].astype(np.float64)
    episode[keys.OBS_STATE] = np.arange(20).reshape(5, 4)
    with TrajectoryStore.open(small_store, mode="a") as store:
        store.add_episode(episode, instruction="x", task="t", success=True, seed=0, source="expert")
    got = TrajectoryStore.open(small_store).episode(6)
    np.testing.assert_array_equal(got[CAMERA], synthetic_episode(6, 5)[CAMERA])
    assert got[keys.OBS_STATE].dtype == np.float32 and got[keys.OBS_STATE][4, 3] == 19.0


def test_a_schema_that_breaks_the_data_contract_is_refused_at_create(tmp_path):
    for key, spec, message in [
        (keys.ACTION, keys.Spec("int32", (4,), "m", "x"), "action is int32 (4,); action holds float32"),
        (keys.ACTION, keys.Spec("float16", (4,), "m", "x"), "action is float16 (4,)"),
        (CAMERA, keys.Spec("float32", (8, 8, 3), "0-1", "x"), "image keys hold uint8 (H, W, 3) frames"),
        ("observation.depth", keys.Spec("float32", (8, 8), "m", "x"), "unknown key 'observation.depth'"),
    ]:
        with pytest.raises(StoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
            TrajectoryStore.create(tmp_path / "bad.zarr", {**SPECS, key: spec}, fps=10)
        assert not (tmp_path / "bad.zarr").exists() and not list(tmp_path.iterdir())


# --- what `vla data check` rejects, opening refuses (issue 15.2) --------------------------------------------
def _retype(path, key, dtype, spec_too: bool):
    """Rewrite data/`key` as `dtype` (values converted), and the schema in the attrs too if `spec_too`."""
    group = zarr.open_group(path, mode="r+")
    values = group["data"][key][:]
    group["data"].create_array(key, shape=values.shape, chunks=group["data"][key].chunks, dtype=dtype, overwrite=True)
    group["data"][key][:] = values.astype(dtype)
    if spec_too:
        specs = dict(group.attrs["specs"])
        specs[key] = {**specs[key], "dtype": dtype}
        group.attrs["specs"] = specs


def _set(path, name, index, value):
    zarr.open_group(path, mode="r+")[name][index] = value


def _v2_copy(src, dst):
    """The same store as a zarr v2 group: the same attrs, arrays and values."""
    store = TrajectoryStore.open(src)
    group = zarr.open_group(dst, mode="w-", zarr_format=2)
    group.attrs.update(store.attrs)
    for name in ("data", "meta"):
        sub = group.create_group(name)
        for key, array in store.group[name].arrays():
            values = array[:]
            dtype = str if values.dtype.kind in "TUO" else values.dtype
            sub.create_array(key, shape=values.shape, chunks=array.chunks, dtype=dtype)
            sub[key][:] = values


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda p: _retype(p, keys.ACTION, "float16", False), "data/action: dtype float16 shape (4,) disagree"),
        (lambda p: _retype(p, keys.ACTION, "int32", False), "data/action: dtype int32 shape (4,) disagree"),
        (lambda p: _retype(p, keys.ACTION, "float16", True), "schema: action is float16 (4,); action holds float32"),
        (lambda p: _chunk_files(p, CAMERA)[0].unlink(), f"data/{CAMERA}: 1 of 1 chunk files are missing (steps 0..44)"),
        (lambda p: _chunk_files(p, keys.SEED, "meta")[0].unlink(), "meta/seed: 1 of 1 chunk files are missing"),
        (lambda p: _set(p, "meta/source", 2, "dream"), "meta/source: unknown values ['dream']"),
        (lambda p: _set(p, "meta/instruction", 4, ""), "meta: episodes [4] have an empty instruction or task"),
    ],
)
def test_opening_refuses_what_data_check_rejects(small_store, break_it, message):
    from tests.conftest import tiny_config
    from vla.datasets.inspect import check_store
    from vla.datasets.sampler import WindowDataset
    from vla.train_data import build_data

    break_it(small_store)
    problems, _ = check_store(small_store)
    assert any(message in p for p in problems), problems
    for opening in (TrajectoryStore.open, WindowDataset, lambda p: build_data(tiny_config(p, p.parent / "run"))):
        with pytest.raises(StoreError, match="fails its checks") as error:
            opening(small_store)
        assert message in str(error.value) and "vla data check" in str(error.value)
    assert TrajectoryStore.open(small_store, strict=False).problems  # inspection still opens it


def test_nonfinite_values_are_refused_where_they_are_read(small_store):
    """A store written before writes were checked may hold NaN; the sampler reads state and action whole
    anyway, and refuses them as `vla data check` does."""
    from tests.conftest import tiny_config
    from vla.datasets.inspect import check_store
    from vla.datasets.sampler import WindowDataset
    from vla.train_data import build_data

    _set(small_store, f"data/{keys.ACTION}", 7, np.nan)
    assert check_store(small_store)[0] == ["data/action: non-finite values in steps 0..44"]
    for opening in (WindowDataset, lambda p: build_data(tiny_config(p, p.parent / "run"))):
        with pytest.raises(StoreError, match=r"data/action holds non-finite values at steps \[7\]; run `vla data"):
            opening(small_store)


def test_a_zarr_v2_group_is_refused_by_open_and_by_check(small_store, tmp_path):
    from vla.datasets.inspect import check_store

    _v2_copy(small_store, tmp_path / "v2.zarr")
    with pytest.raises(StoreError, match="is a zarr v2 group; vla stores are zarr v3"):
        TrajectoryStore.open(tmp_path / "v2.zarr")
    problems, _ = check_store(tmp_path / "v2.zarr")
    assert len(problems) == 1 and "zarr v2" in problems[0]


def test_a_chunk_lost_after_opening_fails_the_read(small_store):
    """A read never returns the fill value for a missing chunk: the sampler would train on zeros."""
    from vla.datasets.sampler import WindowDataset

    dataset = WindowDataset(str(small_store), cache_bytes=0)
    dataset[0]
    _chunk_files(small_store, CAMERA)[0].unlink()
    with pytest.raises(StoreError, match=f"the chunk file of data/{CAMERA} steps 0..[0-9]+ is missing"):
        dataset[0]


def test_check_flags_an_image_episode_that_is_only_the_fill_value(small_store):
    from vla.datasets.inspect import check_store

    with TrajectoryStore.open(small_store, mode="a") as store:
        episode = synthetic_episode(6, 5)
        episode[CAMERA][:] = 0  # what float frames in [0, 1] became, or a camera that sent nothing
        store.add_episode(episode, instruction="x", task="t", success=True, seed=0, source="expert")
    problems, _ = check_store(small_store)
    assert problems == [f"data/{CAMERA}: episodes [6] hold nothing but 0, the array's fill value (a lost chunk, a "
                        "camera that sent nothing, or frames stored in the wrong dtype)"]  # fmt: skip


# --- creation is atomic; what a kill leaves is cleaned up (issue 15.3) --------------------------------------
def test_a_failed_creation_leaves_nothing(tmp_path, monkeypatch):
    import vla.datasets.store as store_module

    def crash(path, specs, attrs):
        zarr.open_group(path, mode="w-").attrs.update(attrs)
        raise RuntimeError("killed")

    monkeypatch.setattr(store_module, "build", crash)
    with pytest.raises(RuntimeError, match="killed"):
        TrajectoryStore.create(tmp_path / "s.zarr", SPECS, fps=10)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_creations_leftovers_are_replaced(tmp_path):
    path = tmp_path / "s.zarr"
    # A creation killed before the rename (its directory unlocked), and one of an older version's skeletons.
    stale = tmp_path / "s.zarr.0123456789ab.partial"
    zarr.open_group(stale, mode="w-").attrs["format"] = "vla-trajectories"
    zarr.open_group(path, mode="w-")  # only the root zarr.json, attrs not yet written
    assert not TrajectoryStore.exists(path)
    with pytest.raises(StoreError, match="is an incomplete store .* re-run the command that makes it"):
        TrajectoryStore.open(path)
    with TrajectoryStore.create(path, SPECS, fps=10) as store:
        add_synthetic(store, 0, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert TrajectoryStore.open(path).num_episodes == 1


def test_whole_empty_stores_and_foreign_data_are_not_skeletons(tmp_path):
    TrajectoryStore.create(tmp_path / "empty.zarr", SPECS, fps=10).close()
    assert TrajectoryStore.exists(tmp_path / "empty.zarr") and TrajectoryStore.open(tmp_path / "empty.zarr")
    other = zarr.open_group(tmp_path / "other.zarr", mode="w-")
    other.create_array("x", shape=(3,), dtype="int64")[:] = [1, 2, 3]
    assert TrajectoryStore.exists(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="already exists"):
        TrajectoryStore.create(tmp_path / "other.zarr", SPECS, fps=10)
    assert zarr.open_group(tmp_path / "other.zarr")["x"][:].tolist() == [1, 2, 3]


def test_stray_partial_files_are_noted_then_removed_by_the_next_writer(small_store):
    from vla.datasets.inspect import check_store

    strays = [
        small_store / "zarr.0a1b2c3d.partial",
        _chunk_files(small_store, keys.ACTION)[0].with_suffix(".9f.partial"),
    ]
    for stray in strays:
        stray.write_bytes(b"half a file")
    assert TrajectoryStore.open(small_store).num_episodes == 6  # readers neither mind nor touch them
    problems, notes = check_store(small_store)
    assert problems == [] and any("2 temporary files (*.partial)" in n for n in notes)
    TrajectoryStore.open(small_store, mode="a").close()
    assert not any(s.exists() for s in strays)


CREATOR = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import SPECS, add_synthetic
from vla.datasets.store import TrajectoryStore
path = {path!r}
print("creating", flush=True)
if TrajectoryStore.exists(path):
    store = TrajectoryStore.open(path, mode="a")
else:
    store = TrajectoryStore.create(path, SPECS, fps=10)
add_synthetic(store, store.num_episodes, 4)
print("done", flush=True)
"""


def test_a_creation_killed_at_any_instant_leaves_no_store_or_a_whole_one(tmp_path):
    """SIGKILL the creator just after it starts creating; the same command then always resumes."""
    path = str(tmp_path / "created.zarr")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = CREATOR.format(root=root, path=path)
    for delay in np.linspace(0.0, 0.3, 5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"creating"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if TrajectoryStore.exists(path):
            TrajectoryStore.open(path)  # whole: opens
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == 0 and b"done" in done.stdout, done.stderr.decode()[-2000:]
    assert TrajectoryStore.open(path).num_episodes >= 1
    assert [p.name for p in tmp_path.iterdir()] == ["created.zarr"]
