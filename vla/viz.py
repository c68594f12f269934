"""Foresight metrics and pictures, shared by `vla eval`, `vla foresight` and the notebooks.

Metrics compare the frame the policy foresaw with the frame that came `foresight_offset` steps later,
beside the copy-the-last-frame baseline (predict that nothing moves), which any useful foresight beats.
"""

from __future__ import annotations

import numpy as np

SSIM_WINDOW = 7  # pixels: small frames (64x64) want a small window
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # Wang et al. 2004 constants for 8-bit images


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (H, W, 3); inf when identical."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window (valid positions only) of (H, W, C), via summed-area tables."""
    s = np.pad(x, ((1, 0), (1, 0), (0, 0))).cumsum(0).cumsum(1)
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, window: int = SSIM_WINDOW) -> float:
    """Structural similarity of two uint8 images (H, W, 3): mean over channels and k x k windows."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = _box_mean(x * x, window) - mx**2
    vy = _box_mean(y * y, window) - my**2
    cov = _box_mean(x * y, window) - mx * my
    num = (2 * mx * my + _C1) * (2 * cov + _C2)
    den = (mx**2 + my**2 + _C1) * (vx + vy + _C2)
    return float(np.mean(num / den))


def foresight_scores(predicted: np.ndarray, actual: np.ndarray, last: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of the foreseen frame and of the copy-the-last-frame baseline against what happened."""
    return {
        "psnr": psnr(predicted, actual),
        "ssim": ssim(predicted, actual),
        "baseline_psnr": psnr(last, actual),
        "baseline_ssim": ssim(last, actual),
    }


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float] | None:
    """Per-metric mean over steps (inf PSNRs, from identical frames, are capped at 100 dB); None if empty."""
    if not scores:
        return None
    return {k: float(np.mean([min(s[k], 100.0) for s in scores])) for k in scores[0]}


class ForesightTracker:
    """Pairs each foreseen frame with the frame that arrives `foresight_offset` steps later, in a rollout.

    tracker.predicted(step, policy.last_prediction, obs)   # after the policy ran at env step `step`
    tracker.observed(step, obs)                            # after every env step
    tracker.summary()                                      # mean scores, or None if nothing matured
    """

    def __init__(self):
        self.pending: list[tuple[int, str, np.ndarray, np.ndarray]] = []  # (due step, key, foreseen, last)
        self.scores: list[dict[str, float]] = []
        self._seen = None

    def predicted(self, step: int, prediction, obs: dict[str, np.ndarray]) -> None:
        if prediction is None or prediction is self._seen:
            return  # the policy executed a queued action: no new foresight this step
        self._seen = prediction
        for key, frame in prediction.foresight.items():
            self.pending.append((step + prediction.foresight_offset, key, frame, np.array(obs[key])))

    def observed(self, step: int, obs: dict[str, np.ndarray]) -> None:
        due = [p for p in self.pending if p[0] == step]
        self.pending = [p for p in self.pending if p[0] > step]
        self.scores += [foresight_scores(frame, obs[key], last) for _, key, frame, last in due]

    def summary(self) -> dict[str, float] | None:
        return mean_scores(self.scores)
