"""Foresight metrics and pictures, shared by `vla eval`, `vla foresight` and the notebooks.

Metrics compare the frame the policy foresaw with the frame that came `foresight_offset` steps later,
beside the copy-the-last-frame baseline (predict that nothing moves), which any useful foresight beats.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vla.model.layout import Kind
from vla.policies.executor import ChunkExecutor

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

    tracker.predicted(step, prediction, obs)   # after the policy's step at env step `step` (None: no prediction)
    tracker.observed(step, obs)                # after every env step
    tracker.summary()                          # mean scores, or None if nothing matured
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


# --- foresight runs: a rollout or a stored episode, every step with its foresight ------------------
UPSCALE = 4  # nearest-neighbour, so 64x64 frames are visible


@dataclass
class ForesightRun:
    """Per step t: the observed frames and the frames foreseen at t for step t + offset."""

    offset: int
    instruction: str
    observed: list[dict[str, np.ndarray]] = field(default_factory=list)
    foreseen: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)

    @property
    def cameras(self) -> list[str]:
        return list(self.foreseen[0]) if self.foreseen else []

    def pairs(self):
        """(t, key, foreseen at t, observed at t + offset, observed at t) for every step that has both."""
        for t in range(len(self.observed) - self.offset):
            for key, frame in self.foreseen[t].items():
                yield t, key, frame, self.observed[t + self.offset][key], self.observed[t][key]

    def metrics(self) -> dict:
        steps = [{"step": t, "camera": key, **foresight_scores(f, actual, last)}
                 for t, key, f, actual, last in self.pairs()]  # fmt: skip
        scores = [{k: v for k, v in s.items() if k not in ("step", "camera")} for s in steps]
        return {"offset": self.offset, "instruction": self.instruction, "steps": steps, "mean": mean_scores(scores)}


def run_foresight(policy, observations, instruction: str, act=None) -> ForesightRun:
    """Feed `observations` (an iterable of raw observation dicts) to the policy one step at a time,
    predicting at every step; `act(action)`, if given, is called with the first action of each chunk
    (a rollout re-planning every step, so every frame has its foresight)."""
    executor = ChunkExecutor(policy, n_action_steps=1, temporal_ensemble=0.0)  # re-plan every step; resets
    run = ForesightRun(policy.cfg.data.foresight_offset, instruction)
    for tick, obs in enumerate(observations):
        action, prediction = executor.act(obs, instruction, tick)
        run.observed.append({k: np.array(v) for k, v in obs.items() if k in prediction.foresight})
        run.foreseen.append(prediction.foresight)
        run.actions.append(action)
        if act is not None:
            act(action)
    return run


def _up(image: np.ndarray) -> np.ndarray:
    return image.repeat(UPSCALE, 0).repeat(UPSCALE, 1)


def comparison_frame(actual: np.ndarray, foreseen: np.ndarray) -> np.ndarray:
    """One camera's row: what happened | what was foreseen | their absolute difference (x3, to be seen)."""
    diff = np.clip(np.abs(actual.astype(int) - foreseen.astype(int)) * 3, 0, 255).astype(np.uint8)
    gap = np.full((actual.shape[0] * UPSCALE, 2, 3), 255, np.uint8)
    return np.concatenate([_up(actual), gap, _up(foreseen), gap, _up(diff)], axis=1)


def comparison_frames(run: ForesightRun) -> list[np.ndarray]:
    """Video frames: per step, one row per camera (see `comparison_frame`)."""
    frames = []
    for t in range(len(run.observed) - run.offset):
        rows = [comparison_frame(run.observed[t + run.offset][k], run.foreseen[t][k]) for k in run.cameras]
        frames.append(np.concatenate(rows, axis=0))
    return frames


def write_media(run: ForesightRun, out: Path, fps: float, grid_steps: int = 6) -> dict[str, Path]:
    """foresight.mp4, foresight.gif, grid.png and metrics.json under `out`; returns their paths."""
    import imageio.v3 as iio

    out.mkdir(parents=True, exist_ok=True)
    frames = comparison_frames(run)
    if not frames:
        raise ValueError(f"the run has {len(run.observed)} steps, not more than the foresight offset {run.offset}")
    paths = {name: out / name for name in ("foresight.mp4", "foresight.gif", "grid.png", "metrics.json")}
    iio.imwrite(paths["foresight.mp4"], np.stack(frames), plugin="pyav", codec="h264", fps=fps)
    gif_every = max(1, round(fps / 10))  # GIFs for sharing: about 10 frames a second
    iio.imwrite(paths["foresight.gif"], np.stack(frames[::gif_every]), duration=1000 * gif_every / fps, loop=0)
    picked = np.unique(np.linspace(0, len(frames) - 1, min(grid_steps, len(frames))).astype(int))
    iio.imwrite(paths["grid.png"], np.concatenate([frames[i] for i in picked], axis=0))
    paths["metrics.json"].write_text(json.dumps(run.metrics(), indent=1) + "\n")
    return paths


# --- attention: what the readouts look at ---------------------------------------------------------
@contextmanager
def keeping_attention(model):
    """Within the block, every attention module of `model` keeps its probabilities (`.probs`)."""
    modules = [m for m in model.modules() if hasattr(m, "keep_probs")]
    for m in modules:
        m.keep_probs = True
    try:
        yield
    finally:
        for m in modules:
            m.keep_probs, m.probs = False, None


@torch.no_grad()
def attention_maps(policy, observations: list[dict[str, np.ndarray]], instruction: str) -> dict:
    """Where the readouts at the last of `observations` (at most `history` steps) look, averaged over heads
    and trunk layers.

    Returns, per readout group ("act", "obs.<camera>"): "prefix" (the share of attention on the
    instruction), "state" (T,) and, per camera, "images" (T,) shares over timesteps, plus "patches"
    {camera: (T, grid, grid)}: the image share carried down to patches through the perceiver's own
    attention (latent -> patch)."""
    model, layout = policy.model, policy.model.layout
    window = observations[-policy.cfg.data.history :]
    batch = {
        k: torch.as_tensor(np.stack([o[k] for o in window]))[None].to(policy._device()) for k in policy._obs_keys()
    }
    with keeping_attention(model):
        tokens = policy._observation_tokens(batch)
        resampler = {c: model.vision[c].resampler.attn.probs.mean(1) for c in model.cameras}  # (T, latents, P)
        model(policy._lang([instruction]), tokens, readouts="last")
        probs = torch.stack([b.attn.probs[0].mean(0) for b in model.trunk.blocks]).mean(0)  # (L, L) query->key
    T = len(window)
    kind, step = layout.tokens(T, "last")
    obs_slices = layout.group_slices(layout.observation)
    readout_slices = layout.group_slices(layout.readout)
    first_readout = int((kind == Kind.READOUT).nonzero()[0])
    maps = {}
    for group, rows in readout_slices.items():
        p = probs[first_readout + rows.start : first_readout + rows.stop].mean(0)  # (L,) for this readout group
        per_step = p[layout.n_prefix :][: T * layout.n_obs].reshape(T, layout.n_obs)
        entry = {
            "prefix": float(p[: layout.n_prefix].sum()),
            "state": per_step[:, obs_slices["state"]].sum(1).cpu().numpy(),
        }
        entry["images"], entry["patches"] = {}, {}
        for cam in model.cameras:
            latents = per_step[:, obs_slices[f"img.{cam}"]]  # (T, latents)
            entry["images"][cam] = latents.sum(1).cpu().numpy()
            patches = torch.einsum("tl,tlp->tp", latents, resampler[cam])
            grid = int(round(patches.shape[-1] ** 0.5))
            entry["patches"][cam] = patches.reshape(T, grid, grid).cpu().numpy()
        maps[group] = entry
    return maps
