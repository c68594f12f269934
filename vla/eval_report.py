"""What `vla eval` writes: success statistics with Wilson intervals, report.json, report.md and videos.

Every average in a report says what it averages: the mean over the evaluated tasks, and the mean over
each suite group (e.g. "mt10") whose tasks were all evaluated. Tasks weigh equally in a mean; the 95%
interval of a mean is the Wilson interval of the pooled episodes, which is conservative when tasks have
the same number of episodes (the spread between tasks only narrows the true interval).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from vla import keys
from vla.policies.base import Prediction
from vla.viz import CHANGE_LEVELS, add_totals, foresight_table, summarise_horizons

log = logging.getLogger(__name__)

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
REPORT_FORMAT, REPORT_VERSION = "vla-eval", 1


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n (Wilson 1927).

    centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).
    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0/n or n/n.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --- statistics ---------------------------------------------------------------------------------
def _rate(successes: int, n: int) -> dict:
    lo, hi = wilson_interval(successes, n)
    return {"episodes": n, "successes": successes, "success_rate": successes / n, "ci95": [lo, hi]}


def _task_stats(episodes: list[dict]) -> dict:
    stats = _rate(sum(e["success"] for e in episodes), len(episodes))
    to_success = [e["steps_to_success"] for e in episodes if e["success"]]
    stats["mean_steps"] = float(np.mean([e["steps"] for e in episodes]))
    stats["mean_steps_to_success"] = float(np.mean(to_success)) if to_success else None
    stats["foresight"] = _foresight_stats(episodes)
    return stats


def _foresight_stats(episodes: list[dict]) -> dict[int, dict] | None:
    """{steps ahead: metrics} pooled over the episodes' foreseen frames (see `vla.viz`); None if none."""
    per_horizon: dict[int, list[dict]] = {}
    for e in episodes:
        for ahead, totals in (e.get("foresight") or {}).items():
            per_horizon.setdefault(int(ahead), []).append(totals)
    if not per_horizon:
        return None
    return summarise_horizons({a: add_totals(t) for a, t in per_horizon.items()}, episodes[0].get("fps"))


def _mean(name: str, label: str, tasks: list[str], per_task: dict) -> dict:
    """Mean of per-task success rates, with the Wilson interval of the pooled episodes."""
    pooled = _rate(sum(per_task[t]["successes"] for t in tasks), sum(per_task[t]["episodes"] for t in tasks))
    rate = float(np.mean([per_task[t]["success_rate"] for t in tasks]))
    return {"name": name, "label": label, "tasks": tasks, **pooled, "success_rate": rate}


def _means(tasks: list[str], groups: dict[str, list[str]], per_task: dict) -> list[dict]:
    means = [_mean("tasks", f"mean over the {len(tasks)} evaluated tasks", tasks, per_task)]
    for name, members in groups.items():
        if set(members) <= set(tasks) and len(members) > 0:
            label = f"mean over the {len(members)} tasks of {name}"
            means.append(_mean(name, label, list(members), per_task))
    return means


def _latency(episodes: list[dict], charged: bool) -> dict:
    inferences = sum(e["inferences"] for e in episodes)
    total_s = sum(e["latency_s"] * e["inferences"] for e in episodes)
    steps_charged = sum(e["steps_charged"] for e in episodes)
    return {
        "charged": charged,
        "mean_s": total_s / inferences,  # per policy step (executor act), over every step of the run
        "inferences": inferences,
        "steps_charged": steps_charged,
        "steps_charged_per_inference": steps_charged / inferences,
    }


def chain_length_interval(lengths: list[int], size: int, z: float = Z95) -> tuple[float, float]:
    """95% interval for the average chain length of chains of `size` subtasks (lengths in [0, size]).

    Agresti-Coull's interval carried over from a rate to a mean bounded in [0, size]: add z^2/2 pseudo-chains
    of length 0 and z^2/2 of length `size`, then the normal interval of the mean, clipped to [0, size]:
        n' = n + z^2,  m = (sum + size z^2/2) / n',  v = (sum (l - m)^2 + z^2/2 (m^2 + (size - m)^2)) / n',
        m -/+ z sqrt(v / n').
    For size 1 it is Agresti-Coull exactly; unlike a t-interval it is not empty when every chain has the same
    length (a policy that fails every first subtask), and it covers the true average about 95% of the time
    from 30 chains on where a t-interval covers 91-94% (tests/test_evaluate.py)."""
    if not lengths or not all(0 <= n <= size for n in lengths):
        raise ValueError(f"need chain lengths in [0, {size}], got {lengths}")
    values, k = np.asarray(lengths, dtype=np.float64), z * z / 2
    n = len(values) + 2 * k
    mean = (values.sum() + k * size) / n
    var = (np.sum((values - mean) ** 2) + k * mean**2 + k * (size - mean) ** 2) / n
    half = z * math.sqrt(var / n)
    return max(0.0, float(mean - half)), min(float(size), float(mean + half))


def _chain_stats(episodes: list[dict]) -> dict:
    """CALVIN's metrics: average chain length (with `chain_length_interval`) and success rate at each
    position of the chain."""
    size = max(e["chain_size"] for e in episodes)
    lengths = [e["chain_length"] for e in episodes]
    positions = [_rate(sum(n >= i for n in lengths), len(lengths)) for i in range(1, size + 1)]
    return {"chains": len(lengths), "chain_size": size, "avg_chain_length": float(np.mean(lengths)),
            "avg_chain_length_ci95": list(chain_length_interval(lengths, size)),
            "success_at_position": positions}  # fmt: skip


def build_report(
    config: dict, policy_kind: str, tasks: list[str], groups: dict, episodes: list[dict], seconds: float
) -> dict:
    """The whole evaluation as one JSON-able dict; `episodes` are `EpisodeResult`s as dicts."""
    per_task = {t: _task_stats([e for e in episodes if e["task"] == t]) for t in tasks}
    chained = all(e["chain_length"] is not None for e in episodes)
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "config": config,
        "policy_kind": policy_kind,
        "seconds": seconds,
        "tasks": per_task,
        "means": [] if chained else _means(tasks, groups, per_task),  # a chain has its own table
        "latency": _latency(episodes, config["charge_latency"]),
        "chain": _chain_stats(episodes) if chained else None,
        "episodes": episodes,
    }


# --- writing ------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _row(name: str, stats: dict, extra: str) -> str:
    lo, hi = stats["ci95"]
    rate = f"{stats['successes']}/{stats['episodes']}"
    return f"| {name} | {rate} | {_pct(stats['success_rate'])} | {_pct(lo)} - {_pct(hi)} | {extra} |"


def format_markdown(report: dict) -> str:
    """The report as a Markdown table per task, then each mean with what it averages."""
    cfg = report["config"]
    lines = [
        f"# {cfg['policy']} on {cfg['suite']} ({cfg['split']})",
        "",
        f"{'up to ' if cfg.get('scene_source') == 'demonstrations' else ''}{cfg['episodes']} "
        f"{'chains' if cfg['chain'] else 'episodes per task'}, seed {cfg['seed']}, "
        f"latency {'charged' if cfg['charge_latency'] else 'not charged'}, {report['seconds']:.0f} s",
        *([f"Scenes: {cfg['scenes']}."] if cfg.get("scenes") else []),
        "",
        "| task | successes | success | 95% Wilson CI | mean steps to success |",
        "|---|---|---|---|---|",
    ]
    for task, stats in report["tasks"].items():
        steps = stats["mean_steps_to_success"]
        lines.append(_row(task, stats, "-" if steps is None else f"{steps:.0f}"))
    for mean in report["means"]:
        lines.append(_row(f"**{mean['label']}**", mean, "CI over the pooled episodes"))
    lat = report["latency"]
    lines += [
        "",
        f"Mean policy-step latency {1000 * lat['mean_s']:.2f} ms over {lat['inferences']} calls; "
        f"{lat['steps_charged']} env steps charged ({lat['steps_charged_per_inference']:.2f} per call).",
    ]
    lines += _foresight_markdown(report["tasks"])
    if report["chain"]:
        lines += _chain_markdown(report["chain"])
    if report.get("baseline"):
        lines += _baseline_markdown(report)
    return "\n".join(lines) + "\n"


def _foresight_markdown(per_task: dict) -> list[str]:
    """Foresight quality per task and horizon beside copying the last frame; nothing when the policy
    foresees nothing."""
    rows = [(task, stats["foresight"]) for task, stats in per_task.items() if stats.get("foresight")]
    if not rows:
        return []
    return ["", "Foresight against copying the last frame (PSNR and gains in dB; changed pixels: those that "
            f"moved by more than {CHANGE_LEVELS}/255 between the current and the foreseen frame):", "",
            *foresight_table(rows)]  # fmt: skip


def _baseline_markdown(report: dict) -> list[str]:
    """Success of the policy beside the baseline's on the same seeds."""
    base = report["baseline"]
    policy = report["config"]["policy"]
    lines = ["", f"Beside the {base['policy']} policy on the same seeds:", "",
             f"| task | {policy} | {base['policy']} |", "|---|---|---|"]  # fmt: skip
    rows = [(t, report["tasks"][t], base["tasks"][t]) for t in report["tasks"]]
    rows += [(f"**{m['label']}**", m, b) for m, b in zip(report["means"], base["means"])]
    for name, ours, theirs in rows:
        lines.append(f"| {name} | {_pct(ours['success_rate'])} | {_pct(theirs['success_rate'])} |")
    return lines


def _chain_interval(chain: dict) -> str:
    """` (95% interval 1.20-2.05)`; nothing for a report written before chains had one."""
    if "avg_chain_length_ci95" not in chain:
        return ""
    lo, hi = chain["avg_chain_length_ci95"]
    return f" (95% interval {lo:.2f}-{hi:.2f})"


def _chain_markdown(chain: dict) -> list[str]:
    lines = [
        "",
        f"Average chain length {chain['avg_chain_length']:.2f} of {chain['chain_size']}{_chain_interval(chain)} over "
        f"{chain['chains']} chains.",
        "",
        "| subtasks completed in a row | chains | rate | 95% Wilson CI |",
        "|---|---|---|---|",
    ]
    for i, pos in enumerate(chain["success_at_position"], 1):
        lo, hi = pos["ci95"]
        rate = f"{pos['successes']}/{pos['episodes']}"
        lines.append(f"| >= {i} | {rate} | {_pct(pos['success_rate'])} | {_pct(lo)} - {_pct(hi)} |")
    return lines


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(format_markdown(report))


# --- videos -------------------------------------------------------------------------------------
VIDEO_PANEL = 256  # upscale (nearest) so a panel is about this many pixels wide
BORDER = 4
_GREY, _GREEN, _RED = (96, 96, 96), (40, 200, 60), (220, 40, 40)


def video_frame(obs: dict[str, np.ndarray], prediction: Prediction | None, success: bool) -> tuple[list, bool]:
    """One step of a video: per camera the real frame and the foresight of `prediction` (the latest the
    policy made; None before the first) for it (None if none)."""
    foresight = prediction.foresight if prediction is not None else {}
    panels = []
    for key in (k for k in obs if keys.is_image_key(k)):  # the env's camera order
        futures = [np.array(frames[key], np.uint8) for _, frames in sorted(foresight.items()) if key in frames]
        panels.append((obs[key], futures))
    return panels, success


def _compose(panels: list, colour: tuple[int, int, int], horizons: int) -> np.ndarray:
    """Cameras as rows of [real | foresight per horizon, nearest first], upscaled, inside a border of
    `colour`; black panels before the first prediction."""
    size = panels[0][0].shape[0]
    scale = max(1, VIDEO_PANEL // size)
    rows = []
    for real, futures in panels:
        futures = [_fit(f, real.shape) for f in futures] or [np.zeros_like(real)] * horizons
        rows.append(np.concatenate([real, *futures], axis=1))
    grid = np.concatenate(rows, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)  # (R*S*k, 2*S*k, 3)
    h, w = grid.shape[:2]
    # yuv420p needs even sides: the border absorbs an odd pixel.
    frame = np.empty((h + 2 * BORDER + h % 2, w + 2 * BORDER + w % 2, 3), np.uint8)
    frame[:] = colour
    frame[BORDER : BORDER + h, BORDER : BORDER + w] = grid
    return frame


def _fit(image: np.ndarray, shape: tuple) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, 3) image to `shape`, for foresight of another size."""
    if image.shape == shape:
        return image
    rows = np.arange(shape[0]) * image.shape[0] // shape[0]
    cols = np.arange(shape[1]) * image.shape[1] // shape[1]
    return image[rows][:, cols]


def write_video(path: Path, frames: list, fps: float) -> None:
    """MP4 (H.264) of `frames` from `video_frame`: grey border before success, green after; red if never."""
    import imageio.v3 as iio

    succeeded = frames[-1][1]
    horizons = max(1, max(len(futures) for panels, _ in frames for _, futures in panels))
    images = [_compose(panels, (_GREEN if ok else _GREY) if succeeded else _RED, horizons) for panels, ok in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(images), plugin="pyav", codec="libx264", fps=max(1, round(fps)))
    log.debug("wrote %s (%d frames)", path, len(images))
