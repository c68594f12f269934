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
