"""What a control run reports: rate, loop jitter, inference and observation-to-action latency, and every
safety event. `vla control` prints `format_report` and writes `to_json()` with `--report`."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from vla.robot.shield import CLAMP_KINDS


@dataclass
class ControlReport:
    mode: str
    hz_target: float
    ticks: int = 0
    hz_achieved: float | None = None
    duration_s: float = 0.0
    warmup_s: float = 0.0  # the predictions run before the clock started
    jitter_p50_ms: float | None = None  # |loop period - 1/hz|
    jitter_p99_ms: float | None = None
    inferences: int = 0
    inference_p50_ms: float | None = None
    inference_p99_ms: float | None = None
    obs_to_action_p50_ms: float | None = None  # observation capture -> first action of its chunk issued
    obs_to_action_p99_ms: float | None = None
    clamped: int = 0  # ticks whose action the shield changed
    holds: int = 0  # ticks the shield held position instead (stale/NaN observation, bad action)
    safe_stops: int = 0
    dropped_actions: int = 0  # chunk actions skipped because their time had passed
    waiting_ticks: int = 0  # ticks held because no action was due yet (first chunk pending, chunks ran out)
    missed_ticks: int = 0  # tick slots skipped after an overrun
    stop_reason: str = ""  # duration | max_ticks | episode_end | safe stop: <why>
    stopped_by: str = "completed"  # completed | signal | fault
    success: bool | None = None  # the robot's success signal, where it has one (sim)
    events: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _ms(values, q: float) -> float | None:
    if not len(values):
        return None
    value = float(np.percentile(values, q) * 1000.0)
    return round(value, 3) if math.isfinite(value) else None


def summarize(r: ControlReport, starts: list[float], period: float, latencies: list[float],
              obs_to_action: list[float]) -> ControlReport:  # fmt: skip
    """Fill the timing statistics from tick start times and latencies (seconds)."""
    starts_ = np.asarray(starts)
    if len(starts_) > 1:
        r.hz_achieved = round(float((len(starts_) - 1) / (starts_[-1] - starts_[0])), 3)
        jitter = np.abs(np.diff(starts_) - period)
        r.jitter_p50_ms, r.jitter_p99_ms = _ms(jitter, 50), _ms(jitter, 99)
    r.inferences = len(latencies)
    r.inference_p50_ms, r.inference_p99_ms = _ms(latencies, 50), _ms(latencies, 99)
    r.obs_to_action_p50_ms, r.obs_to_action_p99_ms = _ms(obs_to_action, 50), _ms(obs_to_action, 99)
    return r


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_report(r: ControlReport, robot: str, recorded: dict | None = None, max_events: int = 50) -> str:
    """A few lines: rate, timing, counts, the clamps summed up by kind in one line, then the other safety
    events (holds, safe stops: the first `max_events`). Every event, clamps included, is in `to_json()`."""
    lines = [
        f"{robot}: {r.ticks} ticks at {r.hz_achieved or 0:.2f} Hz (target {r.hz_target:g}), {r.mode}, "
        f"{r.duration_s:.1f} s; ended: {r.stop_reason}" + ("" if r.success is None else f"; success {r.success}"),
        f"  loop jitter p50 / p99      {_fmt(r.jitter_p50_ms)} / {_fmt(r.jitter_p99_ms)} ms",
        f"  inference p50 / p99        {_fmt(r.inference_p50_ms)} / {_fmt(r.inference_p99_ms)} ms "
        f"({r.inferences} calls; warm-up before the clock {r.warmup_s:.1f} s)",
        f"  observation->action p50/99 {_fmt(r.obs_to_action_p50_ms)} / {_fmt(r.obs_to_action_p99_ms)} ms",
        f"  clamped {r.clamped}, held {r.holds}, safe stops {r.safe_stops}, dropped actions {r.dropped_actions}, "
        f"waiting {r.waiting_ticks}, missed ticks {r.missed_ticks}",
    ]
    clamps = Counter(e["kind"] for e in r.events if e["kind"] in CLAMP_KINDS)
    if clamps:
        kinds = ", ".join(f"{kind} {n}" for kind, n in clamps.most_common())
        lines.append(f"  clamps by kind: {kinds} (each in the report's events)")
    events = [e for e in r.events if e["kind"] not in CLAMP_KINDS]
    for e in events[:max_events]:
        lines.append(f"  event tick {e['tick']} (+{e['time']:.2f} s) {e['kind']}: {e['detail']}")
    if len(events) > max_events:
        lines.append(f"  ... {len(events) - max_events} more events in the report")
    if recorded:
        lines.append(
            f"  recorded episode {recorded['episode']} into {recorded['store']} (success {recorded['success']})"
        )
    return "\n".join(lines)
