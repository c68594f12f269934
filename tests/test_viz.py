"""Foresight metrics against known images, and the tracker that pairs foresight with what happened."""

import numpy as np
import pytest

from vla.policies.base import Prediction
from vla.viz import ForesightTracker, add_totals, frame_totals, psnr, ssim, summarise


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(64, 64, 3)), 0), 1)
    return ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)


def test_identical_images(image):
    assert psnr(image, image) == float("inf")
    assert ssim(image, image) == pytest.approx(1.0)


def test_known_error_and_shift(image):
    brighter = np.clip(image.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((brighter.astype(float) - image) ** 2)
    assert psnr(brighter, image) == pytest.approx(10 * np.log10(255**2 / mse))
    shifted = np.roll(image, 4, axis=1)
    assert ssim(image, shifted) < ssim(image, np.roll(image, 1, axis=1)) < 1.0  # further shift, less similar
    assert ssim(image, 255 - image) < 0  # anti-correlated structure


def test_tracker_scores_foresight_when_its_frame_arrives(image):
    frames = [np.roll(image, t, axis=1) for t in range(6)]  # the scene moves one pixel a step
    tracker = ForesightTracker()
    perfect = Prediction(np.zeros((4, 4)), {1: {"cam": frames[2]}, 3: {"cam": frames[3]}})  # 3 steps: exact
    tracker.predicted(0, perfect, {"cam": frames[0]})
    tracker.predicted(0, perfect, {"cam": frames[0]})  # the same prediction again: counted once
    for t in range(1, 6):
        tracker.observed(t, {"cam": frames[t]})
    totals = tracker.totals()
    assert set(totals) == {1, 3} and totals[3]["frames"] == 1
    three = summarise(totals[3], 3, fps=80.0)
    assert three["ms"] == 37.5 and three["psnr"] == 100.0 and three["ssim"] == pytest.approx(1.0)
    assert three["copy_psnr"] == pytest.approx(psnr(frames[0], frames[3])) and three["copy_ssim"] < 1.0
    one = summarise(totals[1], 1)  # frames[2] foreseen for step 1: worse than copying frames[0]
    assert one["gain_db"] == pytest.approx(psnr(frames[2], frames[1]) - psnr(frames[0], frames[1]))


def test_changed_pixel_psnr_on_hand_made_frames():
    last = np.zeros((8, 8, 3), np.uint8)
    actual = last.copy()
    actual[2:4, 2:4] = 255  # 4 pixels changed
    actual[6, 6] = 8  # below the change threshold: not a changed pixel
    foreseen = last.copy()
    foreseen[2:4, 2:4] = 200  # the right place, 55 levels short
    m = summarise(frame_totals(foreseen, actual, last), steps=5)
    assert m["changed_share"] == 4 / 64
    assert m["changed_psnr"] == pytest.approx(10 * np.log10(255**2 / 55**2))
    assert m["copy_changed_psnr"] == pytest.approx(0.0)  # copying misses the whole change
    assert m["changed_gain_db"] == pytest.approx(m["changed_psnr"])
    whole = (4 * 3 * 55**2 + 3 * 8**2) / (64 * 3)  # MSE over the frame, the unchanged pixel (6, 6) included
    assert m["psnr"] == pytest.approx(10 * np.log10(255**2 / whole))
    # Pooled over frames: errors add up before the logarithm; a frame where nothing moved adds no changed pixels.
    still = summarise(add_totals([frame_totals(foreseen, actual, last), frame_totals(last, last, last)]), 5)
    assert still["changed_psnr"] == pytest.approx(m["changed_psnr"]) and still["frames"] == 2
    assert still["psnr"] == pytest.approx(10 * np.log10(255**2 / (whole / 2)))
    assert summarise(frame_totals(last, last, last), 5)["changed_psnr"] is None  # nothing changed at all


def test_vla_foresight_writes_decodable_media(metaworld_store, tmp_path, capsys):
    import json

    import imageio.v3 as iio

    from tests.conftest import tiny_config
    from vla.cli import main
    from vla.datasets.store import TrajectoryStore
    from vla.train import train
    from vla.viz import UPSCALE

    cfg = tiny_config(metaworld_store, tmp_path / "run", steps=1)
    cfg.policy.foresight_offsets = [1, 2]  # two horizons
    run = train(cfg, progress=False).out
    out = tmp_path / "fs"
    assert main(["foresight", "--policy", str(run), "--store", str(metaworld_store), "--episode", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    assert main(["foresight", "--policy", str(run), "--suite", "metaworld", "--tasks", "reach-v3", "--max-steps", "9",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| reach-v3 | 1 step (12 ms) |" in printed and "| reach-v3 | 2 steps (25 ms) |" in printed
    episode = TrajectoryStore.open(metaworld_store).episode_slice(1)
    steps = episode.stop - episode.start
    for name, n in (("episode-1", steps), ("reach-v3", 9)):
        video = iio.imread(out / name / "foresight.mp4", plugin="pyav")
        # a frame from the farthest horizon on: real | per horizon (foreseen | difference), white gaps between
        assert video.shape == (n - 2, 32 * UPSCALE, 5 * 32 * UPSCALE + 8, 3)
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert [s["ahead"] for s in metrics["steps"]] == [1] * (n - 1) + [2] * (n - 2)
        assert sorted(metrics["horizons"]) == ["1", "2"] and metrics["horizons"]["2"]["steps"] == 2
        assert {"psnr", "copy_psnr", "gain_db", "changed_psnr", "changed_gain_db"} <= set(metrics["horizons"]["1"])
        assert iio.imread(out / name / "grid.png").shape[1] == video.shape[2]
        assert len(iio.imread(out / name / "foresight.gif", index=None)) == -(-(n - 2) // 8)  # 80 Hz -> every 8th
    assert main(["foresight", "--policy", str(run), "--out", str(out)]) == 2  # neither a suite nor a store
    capsys.readouterr()
    for episode in ("999", "-1"):
        assert main(["foresight", "--policy", str(run), "--store", str(metaworld_store), "--episode", episode,
                     "--out", str(tmp_path / "bad")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vla foresight: error: episode 999 is out of range: {metaworld_store} has 4 episodes",
                   "vla foresight: error: --episode must be >= 0, got -1"]  # fmt: skip
    assert not (tmp_path / "bad").exists()
