"""`vla data import-lerobot` and `vla data export-lerobot` on tiny LeRobot datasets the tests write
(tests/lerobot_fixtures.py), the round trip store -> LeRobot -> store, and bad input."""

import json
import os
import subprocess
import sys
import textwrap

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from lerobot_fixtures import FPS, LENGTHS, TASKS, action, frame, state, write_v21, write_v30

from vla import keys
from vla.cli import main
from vla.datasets.store import TrajectoryStore

TOP = keys.image_key("top")


def run(*argv) -> int:
    return main(["data", *map(str, argv), "-q"])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_import_v30(tmp_path, capsys):
    src, out = write_v30(tmp_path / "ds"), tmp_path / "s.zarr"
    assert run("import-lerobot", src, "--out", out, "--image-size", 32) == 0
    printed = capsys.readouterr().out
    assert "2 episodes (10 frames) of a LeRobot v3.0 dataset" in printed and "dropped next.reward" in printed
    with TrajectoryStore.open(out) as s:
        assert (s.kind, s.fps, s.num_episodes, list(s.episode_ends)) == ("robot", FPS, 2, [4, 10])
        assert set(s.specs) == {TOP, keys.OBS_STATE, keys.ACTION}
        assert "x, y, z" in s.specs[keys.OBS_STATE].description
        for e, n in enumerate(LENGTHS):
            ep = s.episode(e)
            np.testing.assert_array_equal(ep[keys.OBS_STATE], state(e, n).astype(np.float32))
            np.testing.assert_array_equal(ep[keys.ACTION], action(e, n))
            # lossless video, the second episode from its from_timestamp on: every frame exact, none shifted
            np.testing.assert_array_equal(ep[TOP], np.stack([frame(e, k) for k in range(n)]))
            assert s.episode_meta(e) == {"instruction": TASKS[e], "task": TASKS[e], "success": True, "seed": e,
                                         "source": "teleop"}  # fmt: skip
        assert s.attrs["import"]["robot_type"] == "toy"


def test_import_v21_resized(tmp_path, capsys):
    """Per-episode files and AV1 videos; 32x48 frames center-cropped to a square and resized to 16."""
    from PIL import Image

    from vla.datasets.importers import square_resize

    src, out = write_v21(tmp_path / "ds"), tmp_path / "s.zarr"
    assert run("import-lerobot", src, "--out", out, "--image-size", 16) == 0
    assert "LeRobot v2.1 dataset" in capsys.readouterr().out
    with TrajectoryStore.open(out) as s:
        assert s.specs[TOP].shape == (16, 16, 3) and s.num_steps == sum(LENGTHS)
        for e, n in enumerate(LENGTHS):
            ep = s.episode(e)
            np.testing.assert_array_equal(ep[keys.ACTION], action(e, n))
            want = np.stack([square_resize(Image.fromarray(frame(e, k, 32, 48)), 16) for k in range(n)])
            assert np.abs(ep[TOP].astype(int) - want).mean() < 3  # AV1 at crf 30 on smooth frames
            assert s.episode_meta(e)["instruction"] == TASKS[e]


@pytest.fixture
def store16(tmp_path):
    """A 3-episode robot store with 16x16 smooth frames, its own specs and attributes."""
    path = tmp_path / "store.zarr"
    specs = {keys.image_key("front"): keys.image_spec("front", 16, "the front camera"),
             keys.OBS_STATE: keys.state_spec("xyz + gripper", 4),
             keys.ACTION: keys.action_spec("dxyz + grip", 4)}  # fmt: skip
    with TrajectoryStore.create(path, specs, fps=20, extra_attrs={"collect": {"suite": "metaworld"}}) as s:
        for i, n in enumerate((5, 7, 6)):
            image = np.zeros((n, 16, 16, 3), np.uint8)
            image[..., 0] = np.linspace(0, 200, 16, dtype=np.uint8)[None, None, :]
            image[..., 1] = (30 * i + 10 * np.arange(n))[:, None, None]
            data = {keys.image_key("front"): image, keys.OBS_STATE: np.random.default_rng(i).normal(size=(n, 4)),
                    keys.ACTION: np.random.default_rng(10 + i).uniform(-1, 1, (n, 4))}  # fmt: skip
            s.add_episode(data, instruction=f"instruction {i % 2}", task=f"task-{i}", success=i != 1, seed=100 + i,
                          source="expert")  # fmt: skip
    return path


@pytest.mark.parametrize("codec", ["lossless", "av1"])
def test_round_trip(store16, tmp_path, codec):
    """Store -> LeRobot -> store: state, action, specs, fps, attributes and per-episode metadata identical;
    frames exact with the lossless codec, within AV1's error otherwise."""
    ds, back = tmp_path / "ds", tmp_path / "back.zarr"
    assert run("export-lerobot", store16, "--out", ds, "--codec", codec) == 0
    assert run("import-lerobot", ds, "--out", back, "--image-size", 16) == 0
    with TrajectoryStore.open(store16) as a, TrajectoryStore.open(back) as b:
        assert (b.specs, b.fps, b.kind, list(b.episode_ends)) == (a.specs, a.fps, a.kind, list(a.episode_ends))
        assert b.specs[keys.ACTION].gripper == "binary" and b.attrs["collect"] == {"suite": "metaworld"}
        for i in range(a.num_episodes):
            assert b.episode_meta(i) == a.episode_meta(i)
            ea, eb = a.episode(i), b.episode(i)
            for key in (keys.OBS_STATE, keys.ACTION):
                np.testing.assert_array_equal(eb[key], ea[key])
            diff = np.abs(eb[keys.image_key("front")].astype(int) - ea[keys.image_key("front")])
            assert diff.max() == 0 if codec == "lossless" else diff.mean() < 3


def test_export_layout(store16, tmp_path, capfd):
    """The files and values LeRobot 0.4.4 reads: info.json, tasks, episodes with video offsets, stats, frames;
    and no SVT-AV1 banner on the terminal."""
    ds = tmp_path / "ds"
    assert run("export-lerobot", store16, "--out", ds) == 0
    assert "Svt[" not in capfd.readouterr().err
    info = json.loads((ds / "meta/info.json").read_text())
    assert (info["codebase_version"], info["fps"], info["total_episodes"], info["total_frames"]) == ("v3.0", 20, 3, 18)
    assert info["total_tasks"] == 2 and info["features"]["observation.images.front"]["info"]["video.codec"] == "av1"
    tasks = pq.read_table(ds / "meta/tasks.parquet")
    assert tasks.schema.pandas_metadata["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == ["instruction 0", "instruction 1"]
    eps = pq.read_table(ds / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in eps] == [0, 5, 12]
    assert [e["videos/observation.images.front/from_timestamp"] for e in eps] == [0, 5 / 20, 12 / 20]
    assert np.array(eps[0]["stats/observation.images.front/mean"]).shape == (3, 1, 1)
    stats = json.loads((ds / "meta/stats.json").read_text())
    assert stats["observation.state"]["count"] == [18] and len(stats["action"]["q99"]) == 4
    assert np.array(stats["observation.images.front"]["std"]).shape == (3, 1, 1)
    data = pq.read_table(ds / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(18))
    assert data.column("timestamp").to_pylist()[5:7] == [0.0, np.float32(1 / 20)]
    with av.open(str(ds / "videos/observation.images.front/chunk-000/file-000.mp4")) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    np.testing.assert_allclose(times, np.arange(18) / 20, atol=1e-6)


# --- bad input: one line naming it, exit 2, nothing written ------------------------------------
def test_import_missing_info(tmp_path, capsys):
    src = write_v30(tmp_path / "ds")
    (src / "meta/info.json").unlink()
    assert run("import-lerobot", src, "--out", tmp_path / "s.zarr") == 2
    assert "no meta/info.json" in error_line(capsys) and not (tmp_path / "s.zarr").exists()


def test_import_unmappable_feature(tmp_path, capsys):
    extra = {"observation.environment_state": {"dtype": "float32", "shape": [2, 2], "names": None}}
    src = write_v30(tmp_path / "ds", extra_features=extra)
    assert run("import-lerobot", src, "--out", tmp_path / "s.zarr") == 2
    line = error_line(capsys)
    assert "observation.environment_state (float32 [2, 2])" in line and "--skip-feature" in line
    assert not (tmp_path / "s.zarr").exists()
    assert run("import-lerobot", src, "--out", tmp_path / "s.zarr", "--skip-feature",
               "observation.environment_state", "--image-size", 32) == 0  # fmt: skip


def test_import_short_video(tmp_path, capsys):
    """A video with fewer frames than the timestamps need is refused before the store is created."""
    src = write_v30(tmp_path / "ds", video_frames=8)
    assert run("import-lerobot", src, "--out", tmp_path / "s.zarr") == 2
    line = error_line(capsys)
    assert "file-000.mp4 ends at 0.8000 s" in line and "episode 1" in line and "shorter than its timestamps" in line
    assert not list(tmp_path.glob("s.zarr*"))


def test_import_other_version(tmp_path, capsys):
    src = write_v30(tmp_path / "ds")
    meta = json.loads((src / "meta/info.json").read_text())
    (src / "meta/info.json").write_text(json.dumps({**meta, "codebase_version": "v1.6"}))
    assert run("import-lerobot", src, "--out", tmp_path / "s.zarr") == 2
    assert "codebase_version 'v1.6' is not supported; valid: v3.0, v2.1, v2.0" in error_line(capsys)


def test_export_refuses(store16, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert run("export-lerobot", store16, "--out", tmp_path / "taken") == 2
    assert "already exists" in error_line(capsys)
    with TrajectoryStore.create(tmp_path / "odd.zarr", {keys.ACTION: keys.action_spec("a", 2)}, fps=12.5) as s:
        s.add_episode({keys.ACTION: np.zeros((3, 2))}, instruction="i", task="t", success=True, seed=0, source="expert")
    assert run("export-lerobot", tmp_path / "odd.zarr", "--out", tmp_path / "odd") == 2
    assert "fps 12.5" in error_line(capsys) and not list(tmp_path.glob("odd*partial"))
    assert not (tmp_path / "odd").exists()


# --- conformance: LeRobot 0.4.4 itself loads the export --------------------------------------------
CONFORMANCE = textwrap.dedent("""
    import sys, numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    for root in sys.argv[1:]:
        ds = LeRobotDataset("local/export", root=root, video_backend="pyav",
                            delta_timestamps={"action": [0.0, 0.05, 0.1], "observation.images.front": [-0.05, 0.0]})
        item = ds[6]  # episode 1, frame 1
        assert len(ds) == 18 and ds.num_episodes == 3 and ds.fps == 20, (len(ds), ds.num_episodes, ds.fps)
        assert tuple(item["observation.images.front"].shape) == (2, 3, 16, 16)
        assert item["action_is_pad"].tolist() == [False, False, False] and item["task"] == "instruction 1"
        np.savez(root + ".npz", action=item["action"].numpy(), state=item["observation.state"].numpy(),
                 images=item["observation.images.front"].numpy(), action_mean=ds.meta.stats["action"]["mean"])
""")


def lerobot_python() -> str | None:
    """A Python with lerobot: $VLA_LEROBOT_PYTHON (bench/build_lerobot_env.sh builds one), or this one."""
    if os.environ.get("VLA_LEROBOT_PYTHON"):
        return os.environ["VLA_LEROBOT_PYTHON"]
    try:
        import lerobot  # noqa: F401
    except ImportError:
        return None
    return sys.executable


@pytest.mark.skipif(lerobot_python() is None, reason="no lerobot: set VLA_LEROBOT_PYTHON (bench/build_lerobot_env.sh)")
def test_lerobot_loads_export(store16, tmp_path):
    """LeRobot's LeRobotDataset (pyav backend) reads the export with delta_timestamps: the windows it returns
    hold the store's actions, state and frames (exact with the lossless codec, within AV1's error with the
    default), and its stats. One subprocess for both: importing lerobot and its CUDA torch takes minutes cold."""
    codecs = ("lossless", "av1")
    for codec in codecs:
        assert run("export-lerobot", store16, "--out", tmp_path / codec, "--codec", codec) == 0
    script = tmp_path / "load.py"
    script.write_text(CONFORMANCE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_LEROBOT_HOME": str(tmp_path / "home")}
    done = subprocess.run([lerobot_python(), str(script), *(str(tmp_path / c) for c in codecs)], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with TrajectoryStore.open(store16) as s:
        ep, action_mean = s.episode(1), s.array(keys.ACTION)[:].mean(0)
    frames = ep[keys.image_key("front")][0:2].transpose(0, 3, 1, 2) / 255.0  # frames 0 and 1, (T, C, H, W)
    for codec in codecs:
        got = np.load(tmp_path / f"{codec}.npz")
        np.testing.assert_array_equal(got["action"], ep[keys.ACTION][1:4])
        np.testing.assert_array_equal(got["state"], ep[keys.OBS_STATE][1])
        np.testing.assert_allclose(got["action_mean"], action_mean, atol=1e-6)
        error = np.abs(got["images"] - frames)
        assert error.max() < 1e-6 if codec == "lossless" else error.mean() < 3 / 255, codec
