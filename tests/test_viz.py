"""Foresight metrics against known images, and the tracker that pairs foresight with what happened."""

import numpy as np
import pytest

from vla.policies.base import Prediction
from vla.viz import ForesightTracker, foresight_scores, psnr, ssim


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
    perfect = Prediction(np.zeros((4, 4)), {"cam": frames[3]}, foresight_offset=3)
    tracker.predicted(0, perfect, {"cam": frames[0]})
    tracker.predicted(0, perfect, {"cam": frames[0]})  # the same prediction again: counted once
    for t in range(1, 6):
        tracker.observed(t, {"cam": frames[t]})
    summary = tracker.summary()
    assert len(tracker.scores) == 1 and summary["ssim"] == pytest.approx(1.0)
    assert summary["baseline_psnr"] == pytest.approx(foresight_scores(frames[0], frames[3], frames[0])["psnr"])
    assert summary["baseline_ssim"] < 1.0


def test_vla_foresight_writes_decodable_media(metaworld_store, tmp_path, capsys):
    import json

    import imageio.v3 as iio

    from tests.conftest import tiny_config
    from vla.cli import main
    from vla.datasets.store import TrajectoryStore
    from vla.train import train
    from vla.viz import UPSCALE

    run = train(tiny_config(metaworld_store, tmp_path / "run", steps=1), progress=False).out
    out = tmp_path / "fs"
    assert main(["foresight", "--policy", str(run), "--store", str(metaworld_store), "--episode", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    assert main(["foresight", "--policy", str(run), "--suite", "metaworld", "--tasks", "reach-v3", "--max-steps", "9",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "foresight PSNR" in capsys.readouterr().out
    episode = TrajectoryStore.open(metaworld_store).episode_slice(1)
    steps = episode.stop - episode.start
    offset = 2  # tiny_config's foresight_offset
    for name, n in (("episode-1", steps - offset), ("reach-v3", 9 - offset)):
        video = iio.imread(out / name / "foresight.mp4", plugin="pyav")
        assert video.shape == (n, 32 * UPSCALE, 3 * 32 * UPSCALE + 4, 3)  # real | foreseen | difference
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert len(metrics["steps"]) == n and metrics["offset"] == offset
        assert set(metrics["mean"]) == {"psnr", "ssim", "baseline_psnr", "baseline_ssim"}
        assert iio.imread(out / name / "grid.png").shape[1] == video.shape[2]
        assert len(iio.imread(out / name / "foresight.gif", index=None)) == -(-n // 8)  # 80 Hz -> every 8th frame
    assert main(["foresight", "--policy", str(run), "--out", str(out)]) == 2  # neither a suite nor a store
    capsys.readouterr()
    for episode in ("999", "-1"):
        assert main(["foresight", "--policy", str(run), "--store", str(metaworld_store), "--episode", episode,
                     "--out", str(tmp_path / "bad")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vla foresight: error: episode 999 is out of range: {metaworld_store} has 4 episodes",
                   "vla foresight: error: --episode must be >= 0, got -1"]  # fmt: skip
    assert not (tmp_path / "bad").exists()
