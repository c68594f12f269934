"""`vla collect` end to end on the real Meta-World suite: resume, determinism, refusals."""

import json

import gymnasium as gym
import numpy as np
import pytest

from vla import keys
from vla.cli import main
from vla.collect import dart_noise
from vla.datasets.store import StoreError, TrajectoryStore

TASKS = "reach-v3,drawer-close-v3"


def collect(out, *extra, episodes=1):
    return main(["collect", "--suite", "metaworld", "--tasks", TASKS, "--episodes-per-task", str(episodes),
                 "--image-size", "32", "--steps-after-success", "3", "-q", "--out", str(out), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A store filled in two runs (1 episode per task, then resumed to 2), and one filled in a single run."""
    tmp = tmp_path_factory.mktemp("collect")
    assert collect(tmp / "resumed.zarr", episodes=1) == 0
    assert collect(tmp / "resumed.zarr", episodes=2) == 0
    assert collect(tmp / "fresh.zarr", "--workers", "2", episodes=2) == 0
    return tmp


def test_store_contents(collected, capsys):
    assert main(["data", "info", str(collected / "fresh.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 4 and info["tasks"] == {"drawer-close-v3": 2, "reach-v3": 2}
    assert info["keys"][keys.image_key("corner")]["shape"] == [32, 32, 3]
    assert info["keys"][keys.ACTION]["shape"] == [4] and info["keys"][keys.OBS_STATE]["shape"] == [4]
    assert info["success_rate"] == 1.0 and info["sources"] == {"expert": 4}
    store = TrajectoryStore.open(collected / "fresh.zarr")
    for i in range(store.num_episodes):
        episode = store.episode(i)
        assert episode[keys.image_key("corner")].std() > 5  # a rendered scene, not a blank frame
        assert np.abs(episode[keys.ACTION][:, :3]).max() <= 0.01 + 1e-6  # metres per step
    assert main(["data", "check", str(collected / "fresh.zarr")]) == 0


def test_resume_and_workers_give_the_same_episodes(collected):
    resumed = TrajectoryStore.open(collected / "resumed.zarr")
    fresh = TrajectoryStore.open(collected / "fresh.zarr")
    assert sorted(resumed.meta(keys.SEED)) == sorted(fresh.meta(keys.SEED))
    by_seed = {int(s): i for i, s in enumerate(fresh.meta(keys.SEED))}
    for i, seed in enumerate(resumed.meta(keys.SEED)):
        a, b = resumed.episode(i), fresh.episode(by_seed[int(seed)])
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert resumed.episode_meta(i) == fresh.episode_meta(by_seed[int(seed)])


def test_rerun_is_a_no_op(collected):
    before = TrajectoryStore.open(collected / "fresh.zarr").num_steps
    assert collect(collected / "fresh.zarr", episodes=2) == 0
    assert TrajectoryStore.open(collected / "fresh.zarr").num_steps == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "dmc"], "unknown suite 'dmc'; valid: metaworld, tabletop"),
        (
            ["--tasks", "reach-v3,fly-v3"],
            "unknown metaworld task 'fly-v3'; valid: mt10, mt50, ml45-train, ml45-test, all, ",
        ),
        (["--cameras", "ceiling"], "unknown metaworld camera 'ceiling'; valid: "),
        (["--episodes-per-task", "0"], "--episodes-per-task must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "bad.zarr"
    assert main(["collect", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_existing_store_of_another_recipe_or_schema_is_refused(collected, capsys):
    out = collected / "fresh.zarr"
    assert collect(out, "--seed", "7", episodes=2) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "pass --append" in err
    assert collect(out, "--cameras", "corner2", "--append", episodes=2) == 2
    assert "another schema" in capsys.readouterr().err
    assert TrajectoryStore.open(out).num_episodes == 4


def test_tabletop_collect_lists_every_task_and_both_cameras(tmp_path, capsys):
    out = tmp_path / "tabletop.zarr"
    assert main(["collect", "--suite", "tabletop", "--tasks", "all", "--split", "train", "--episodes-per-task", "1",
                 "--image-size", "32", "-q", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["tasks"]) >= 10 and info["cameras"] == ["static", "wrist"]
    assert info["success_rate"] == 1.0


def test_dart_noise_moves_the_hand_off_the_stored_actions_and_not_the_gripper(tmp_path, capsys):
    """`--action-noise`: the store keeps the expert's actions while the hand moved by noisy ones, so the
    displacement the state shows departs from the stored action by about the noise, not without it."""
    off_action = {}
    for noise in ("0", "0.3"):
        out = tmp_path / f"noise{noise}.zarr"
        assert main(["collect", "--suite", "tabletop", "--tasks", "lift-block,open-drawer", "--episodes-per-task",
                     "2", "--image-size", "16", "--action-noise", noise, "-q", "--out", str(out)]) == 0  # fmt: skip
        store = TrajectoryStore.open(out)
        residuals = []
        for i in range(store.num_episodes):
            episode = store.episode(i)
            moved = np.diff(episode[keys.OBS_STATE][:, :3], axis=0)
            residuals.append(moved - episode[keys.ACTION][:-1, :3])
        off_action[noise] = float(np.concatenate(residuals).std())
        assert store.attrs["collect"].get("action_noise") == (0.3 if noise == "0.3" else None)
    assert off_action["0.3"] > 0.004 > 3 * off_action["0"]  # 0.3 x the 25 mm bound: ~6 mm once the arm follows
    capsys.readouterr()
    assert main(["collect", "--suite", "tabletop", "--kind", "video", "--action-noise", "0.3", "--out",
                 str(tmp_path / "video.zarr")]) == 2  # fmt: skip
    assert "--action-noise applies to --kind robot" in capsys.readouterr().err


def test_dart_noise_spares_the_gripper_stays_in_bounds_and_follows_the_seed():
    high = np.array([0.025, 0.025, 0.025, 1.0], np.float32)
    space = gym.spaces.Box(-high, high)
    action = np.array([0.02, 0.0, -0.02, 1.0], np.float32)
    perturbs = (dart_noise(space, 0.3, 5), dart_noise(space, 0.3, 5), dart_noise(space, 0.3, 6))
    first, again, other = (np.stack([perturb(action) for _ in range(2000)]) for perturb in perturbs)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert (first[:, 3] == 1.0).all() and (first >= space.low).all() and (first <= space.high).all()
    assert abs(first[:, 1].std() - 0.3 * 0.025) < 0.0005  # the unclipped axis: the asked-for std


def test_a_collect_that_keeps_no_episode_leaves_no_store(tmp_path, capsys):
    """One attempt of one step: the expert cannot succeed, nothing is kept, and no empty store is left."""
    out = tmp_path / "none.zarr"
    assert main(["collect", "--tasks", "reach-v3", "--episodes-per-task", "1", "--max-attempts-per-task", "1",
                 "--max-steps", "1", "--image-size", "16", "-q", "--out", str(out)]) == 1  # fmt: skip
    assert "short of 1 episodes: reach-v3" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_with_workers_is_one_line(tmp_path):
    """Ctrl-C reaches every process of the terminal's process group: the pool workers ignore it (no
    KeyboardInterrupt traceback from them), the parent stops them and says "interrupted"."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "big.zarr"
    argv = [sys.executable, "-m", "vla.cli", "collect", "--suite", "tabletop", "--tasks", "all", "--workers", "2",
            "--episodes-per-task", "50", "--image-size", "16", "--out", str(out)]  # fmt: skip
    # As from a terminal: SIGINT handled, whatever this test process inherited (a background job, as CI
    # may run the tests, starts with SIGINT ignored, and a child would inherit that).
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not _episodes_in(out) and time.monotonic() < deadline:
        time.sleep(0.2)  # until the workers are collecting
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: to the whole group
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say where it was stuck (its threads' stacks), and leave nothing running
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"vla collect still ran 60 s after Ctrl-C; its stderr ended: {proc.communicate()[1][-6000:]}")
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.rstrip().endswith("vla collect: interrupted")


def test_stop_pool_kills_workers_whose_terminate_hangs():
    """`Pool.terminate()` can wait for good on a queue lock a worker holds; `stop_pool` then kills the
    workers within its timeout instead of hanging the command."""
    import time

    from vla.envs import process_pool, stop_pool

    pool = process_pool(2)
    assert pool.map(abs, [-1, -2]) == [1, 2]
    workers = list(pool._pool)
    pool._outqueue._wlock.acquire()  # as a worker sending a result holds it: terminate's sentinel waits for it
    try:
        start = time.monotonic()
        stop_pool(pool, timeout=1.0)
        assert time.monotonic() - start < 10
        assert not any(worker.is_alive() for worker in workers)
    finally:
        pool._outqueue._wlock.release()  # the stuck terminate goes on and ends


def test_sigusr1_prints_every_threads_stack(tmp_path):
    """`kill -USR1 <pid>` makes any vla command print its threads' Python stacks to stderr and go on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "s.zarr"
    argv = [sys.executable, "-m", "vla.cli", "collect", "--suite", "tabletop", "--tasks", "lift-block",
            "--episodes-per-task", "30", "--image-size", "16", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _episodes_in(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Current thread" in err and 'File "' in err  # faulthandler's dump, then the run went on to the end
    assert _episodes_in(out) == 30


def _episodes_in(path) -> int:
    """Episodes committed so far to a store being written (0 while it is still being created)."""
    try:
        return TrajectoryStore.open(path).num_episodes
    except StoreError:
        return 0


def test_one_and_two_workers_give_identical_stores(tmp_path):
    """Issue 15: with one worker an env runs a task's episodes in turn, with two a fresh env may run the
    second; push-v3's second episode then started from another first frame. Every array must agree."""
    stores = {}
    for workers in ("1", "2"):
        stores[workers] = tmp_path / f"w{workers}.zarr"
        assert main(["collect", "--suite", "metaworld", "--tasks", "reach-v3,push-v3", "--episodes-per-task", "2",
                     "--max-steps", "40", "--keep-failures", "--image-size", "32", "--workers", workers, "-q",
                     "--out", str(stores[workers])]) == 0  # fmt: skip
    one, two = TrajectoryStore.open(stores["1"]), TrajectoryStore.open(stores["2"])
    assert one.num_episodes == two.num_episodes == 4
    for i in range(one.num_episodes):
        assert one.episode_meta(i) == two.episode_meta(i)
        a, b = one.episode(i), two.episode(i)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"episode {i} {key}")


def test_a_collect_killed_while_creating_its_store_resumes(tmp_path, capsys):
    """Issue 15.3: a collect killed ~30 ms after its store's zarr.json appeared (an older version created
    the store in place) left a bare skeleton; `data check` calls it incomplete and the same command
    replaces it and collects."""
    import zarr

    out = tmp_path / "demos.zarr"
    zarr.open_group(out, mode="w-")  # the kill state: the root zarr.json, nothing else
    assert main(["data", "check", str(out)]) == 1
    assert "is an incomplete store (its creation was interrupted" in capsys.readouterr().out
    command = ["collect", "--suite", "metaworld", "--tasks", "reach-v3", "--episodes-per-task", "1", "--max-steps",
               "5", "--keep-failures", "--image-size", "16", "-q", "--out", str(out)]  # fmt: skip
    assert main(command) == 0
    assert TrajectoryStore.open(out).num_episodes == 1 and main(["data", "check", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.zarr"]
