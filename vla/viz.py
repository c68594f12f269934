"""Foresight metrics and pictures, shared by `vla eval`, `vla foresight` and the notebooks.

Metrics compare each frame the policy foresaw with the frame that came that many steps later, beside the
copy-the-last-frame baseline (predict that nothing moves), which any useful foresight beats; per horizon
(`steps` ahead, and `ms` at the run's control rate):

    psnr, copy_psnr, gain_db                     the whole frame
    changed_psnr, copy_changed_psnr, changed_gain_db   the pixels that changed between the current frame
                                                 and the target frame (a channel moved by more than
                                                 CHANGE_LEVELS of 255): where foresight has work to do
    ssim, copy_ssim                              structure (mean over frames)
    frames, changed_share                        how many frames were scored; the share of changed pixels

PSNR is pooled: 10 log10(255^2 / MSE) with the MSE over every scored pixel of every frame, so a frame in
which nothing moved (copy-last is exact there) weighs by its squared error instead of an infinite PSNR.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vla import keys
from vla.model.layout import Kind
from vla.policies.base import Prediction

SSIM_WINDOW = 7  # pixels: small frames (64x64) want a small window
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # Wang et al. 2004 constants for 8-bit images
CHANGE_LEVELS = 8  # of 255: a pixel changed when one of its channels moved by more (above rendering noise)
PSNR_CAP = 100.0  # dB, for an error of exactly zero (JSON has no infinity)


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


def changed_pixels(last: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of uint8 `actual` that differ from `last` by more than CHANGE_LEVELS in a channel."""
    return (np.abs(actual.astype(np.int16) - last.astype(np.int16)) > CHANGE_LEVELS).any(-1)


def frame_totals(predicted: np.ndarray, actual: np.ndarray, last: np.ndarray) -> dict[str, float]:
    """The sums that `summarise` turns into metrics, for one foreseen frame, the frame that came true and
    the last frame seen when it was foreseen (uint8 (H, W, 3) each). Totals of many frames add up."""
    p, a, c = (x.astype(np.float64) for x in (predicted, actual, last))
    err, copy_err = (p - a) ** 2, (c - a) ** 2
    changed = changed_pixels(last, actual)
    return {
        "frames": 1,
        "values": err.size,
        "sse": float(err.sum()),
        "copy_sse": float(copy_err.sum()),
        "changed_values": int(changed.sum()) * a.shape[-1],
        "changed_sse": float(err[changed].sum()),
        "changed_copy_sse": float(copy_err[changed].sum()),
        "ssim": ssim(predicted, actual),
        "copy_ssim": ssim(last, actual),
    }


def add_totals(totals: list[dict[str, float]]) -> dict[str, float] | None:
    """Field-wise sums of `frame_totals` (or of earlier sums); None if there are none."""
    return {k: float(sum(t[k] for t in totals)) for k in totals[0]} if totals else None


def _pooled_psnr(sse: float, values: float) -> float | None:
    if values == 0:
        return None
    return PSNR_CAP if sse == 0 else min(PSNR_CAP, float(10 * np.log10(255.0**2 * values / sse)))


def summarise(totals: dict[str, float], steps: int, fps: float | None = None) -> dict:
    """The metrics (see the module docstring) of one horizon, `steps` ahead at `fps` Hz, from its totals."""
    out = {"steps": steps, "ms": 1000.0 * steps / fps if fps else None, "frames": int(totals["frames"])}
    out["psnr"], out["copy_psnr"] = (_pooled_psnr(totals[k], totals["values"]) for k in ("sse", "copy_sse"))
    out["gain_db"] = out["psnr"] - out["copy_psnr"]
    changed = [_pooled_psnr(totals[k], totals["changed_values"]) for k in ("changed_sse", "changed_copy_sse")]
    out["changed_psnr"], out["copy_changed_psnr"] = changed
    out["changed_gain_db"] = None if changed[0] is None else changed[0] - changed[1]
    out["changed_share"] = totals["changed_values"] / totals["values"]
    out["ssim"], out["copy_ssim"] = totals["ssim"] / totals["frames"], totals["copy_ssim"] / totals["frames"]
    return out


def summarise_horizons(totals: dict[int, dict], fps: float | None = None) -> dict[int, dict]:
    """{steps ahead: totals} -> {steps ahead: metrics}, nearest horizon first."""
    return {steps: summarise(t, steps, fps) for steps, t in sorted(totals.items())}


def horizon_label(metrics: dict) -> str:
    """'3 steps (38 ms)' for one horizon's metrics."""
    ms = f" ({metrics['ms']:.0f} ms)" if metrics.get("ms") is not None else ""
    return f"{metrics['steps']} step{'s' if metrics['steps'] != 1 else ''}{ms}"


def _db(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _gain(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def foresight_table(rows: list[tuple[str, dict[int, dict]]], what: str = "task") -> list[str]:
    """Markdown table lines: per (name, {steps ahead: metrics}) and horizon, the foresight beside copy-last
    on the whole frame and on the changed pixels (dB), and SSIM."""
    lines = [f"| {what} | horizon | PSNR | copy-last | gain | changed-pixel PSNR | copy-last | gain | SSIM | "
             "copy-last SSIM | changed pixels |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, horizons in rows:
        for m in horizons.values():
            lines.append(
                f"| {name} | {horizon_label(m)} | {_db(m['psnr'])} | {_db(m['copy_psnr'])} | {_gain(m['gain_db'])} "
                f"| {_db(m['changed_psnr'])} | {_db(m['copy_changed_psnr'])} | {_gain(m['changed_gain_db'])} "
                f"| {m['ssim']:.3f} | {m['copy_ssim']:.3f} | {100 * m['changed_share']:.1f}% |"
            )
    return lines


class ForesightTracker:
    """Pairs each foreseen frame with the frame that arrives that many steps later, in a rollout.

    tracker.predicted(step, prediction, obs)   # the Prediction behind the action chosen at env step `step`
    tracker.observed(step, obs)                # after every env step
    tracker.totals()                           # {steps ahead: summed frame_totals}, for what matured
    """

    def __init__(self):
        self.pending: list[tuple[int, int, str, np.ndarray, np.ndarray]] = []  # (due, ahead, key, foreseen, last)
        self.scored: dict[int, list[dict]] = {}
        self._seen = None

    def predicted(self, step: int, prediction, obs: dict[str, np.ndarray]) -> None:
        if prediction is None or prediction is self._seen:
            return  # the policy executed a queued action: no new foresight this step
        self._seen = prediction
        for ahead, frames in prediction.foresight.items():
            for key, frame in frames.items():
                self.pending.append((step + ahead, ahead, key, frame, np.array(obs[key])))

    def observed(self, step: int, obs: dict[str, np.ndarray]) -> None:
        due = [p for p in self.pending if p[0] == step]
        self.pending = [p for p in self.pending if p[0] > step]
        for _, ahead, key, frame, last in due:
            self.scored.setdefault(ahead, []).append(frame_totals(frame, obs[key], last))

    def totals(self) -> dict[int, dict] | None:
        return {ahead: add_totals(t) for ahead, t in sorted(self.scored.items())} or None


# --- foresight runs: a rollout or a stored episode, every step with its foresight ------------------
UPSCALE = 4  # nearest-neighbour, so 64x64 frames are visible


@dataclass
class ForesightRun:
    """Per step t: the observed frames and, per horizon, the frames foreseen at t for t + horizon."""

    offsets: list[int]  # the horizons, in steps, nearest first
    instruction: str
    fps: float | None = None  # control rate (Hz), for horizons in milliseconds
    observed: list[dict[str, np.ndarray]] = field(default_factory=list)
    foreseen: list[dict[int, dict[str, np.ndarray]]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)

    @property
    def cameras(self) -> list[str]:
        return list(self.foreseen[0][self.offsets[0]]) if self.foreseen else []

    @property
    def horizon(self) -> int:
        """The farthest horizon: a video frame needs every horizon's foresight for it."""
        return max(self.offsets)

    def add(self, obs: dict[str, np.ndarray], prediction: Prediction) -> None:
        """Step t: the observation the policy saw and its Prediction (the first action is the one taken)."""
        self.observed.append({k: np.array(v) for k, v in obs.items() if keys.is_image_key(k)})
        self.foreseen.append(prediction.foresight)
        self.actions.append(prediction.actions[0])

    def pairs(self, ahead: int):
        """(t, key, foreseen at t, observed at t + ahead, observed at t) for every step that has both."""
        for t in range(len(self.observed) - ahead):
            for key, frame in self.foreseen[t][ahead].items():
                yield t, key, frame, self.observed[t + ahead][key], self.observed[t][key]

    def metrics(self) -> dict:
        """{"instruction", "horizons": {steps ahead: metrics}, "steps": per-frame PSNR/SSIM and copy-last's}."""
        horizons, steps = {}, []
        for ahead in self.offsets:
            totals = []
            for t, key, frame, actual, last in self.pairs(ahead):
                totals.append(frame_totals(frame, actual, last))
                steps.append({"step": t, "ahead": ahead, "camera": key, "psnr": psnr(frame, actual),
                              "copy_psnr": psnr(last, actual), "ssim": totals[-1]["ssim"],
                              "copy_ssim": totals[-1]["copy_ssim"]})  # fmt: skip
            if totals:
                horizons[ahead] = summarise(add_totals(totals), ahead, self.fps)
        return {"instruction": self.instruction, "fps": self.fps, "horizons": horizons, "steps": steps}


def run_foresight(policy, observations, instruction: str, fps: float | None = None) -> ForesightRun:
    """Feed `observations` (an iterable of raw observation dicts, e.g. a stored episode's) to the policy
    one step at a time, predicting at every step. (A rollout in a suite: `vla.foresight.rollout`.)"""
    policy.reset()
    run = ForesightRun(policy.config.foresight_offsets, instruction, fps)
    for obs in observations:
        run.add(obs, policy.predict(obs, instruction))
    return run


def _up(image: np.ndarray) -> np.ndarray:
    return image.repeat(UPSCALE, 0).repeat(UPSCALE, 1)


def difference(actual: np.ndarray, foreseen: np.ndarray) -> np.ndarray:
    """|actual - foreseen| x3, so that small errors can be seen."""
    return np.clip(np.abs(actual.astype(int) - foreseen.astype(int)) * 3, 0, 255).astype(np.uint8)


def comparison_frame(actual: np.ndarray, foreseen: list[np.ndarray]) -> np.ndarray:
    """One camera's row: what happened | per horizon, what was foreseen for it and the difference."""
    gap = np.full((actual.shape[0] * UPSCALE, 2, 3), 255, np.uint8)
    panels = [_up(actual)]
    for frame in foreseen:
        panels += [gap, _up(frame), gap, _up(difference(actual, frame))]
    return np.concatenate(panels, axis=1)


def comparison_frames(run: ForesightRun) -> list[np.ndarray]:
    """Video frames, one per step t from the farthest horizon on: per camera a row with the frame at t and,
    per horizon (nearest first), the frame foreseen for t that many steps earlier (see `comparison_frame`)."""
    frames = []
    for t in range(run.horizon, len(run.observed)):
        rows = [comparison_frame(run.observed[t][k], [run.foreseen[t - h][h][k] for h in run.offsets])
                for k in run.cameras]  # fmt: skip
        frames.append(np.concatenate(rows, axis=0))
    return frames


def write_media(run: ForesightRun, out: Path, grid_steps: int = 6) -> dict[str, Path]:
    """foresight.mp4, foresight.gif, grid.png and metrics.json under `out`; returns their paths."""
    import imageio.v3 as iio

    out.mkdir(parents=True, exist_ok=True)
    frames = comparison_frames(run)
    if not frames:
        raise ValueError(f"the run has {len(run.observed)} steps, not more than the farthest horizon {run.horizon}")
    fps = run.fps or 10.0
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
    window = observations[-policy.config.history :]
    batch = {
        k: torch.as_tensor(np.stack([o[k] for o in window]))[None].to(policy._device()) for k in policy._obs_keys()
    }
    with keeping_attention(model):
        lang = policy._lang([instruction])
        tokens = policy._observation_tokens(batch, lang)
        resampler = {c: model.vision[c].resampler.attn.probs.mean(1) for c in model.cameras}  # (T, latents, P)
        model(lang, tokens, readouts="last")
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
