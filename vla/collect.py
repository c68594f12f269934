"""`vla collect`: scripted-expert demonstrations from a suite into a trajectory store.

`kind` picks what is stored: "robot" (images, state and actions), "video" (the same expert episodes
as action-free clips: images only, every `frame_stride`-th frame, with their instructions) or
"image-text" (captioned scene images: `vla.collect_pretrain.collect_image_text`, which shares
`open_store` from here).

Every episode's seed is `vla.envs.episode_seed(seed, suite, split, task, attempt)`, and attempts are
written in order, so the same command gives the same store, whatever `--workers`. A re-run resumes:
attempts whose seeds are already stored are skipped and collection continues after the last stored
attempt, so an interrupted and resumed run leaves the store an uninterrupted one would. Raising
`--episodes-per-task` later appends each task's further episodes after the existing ones.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from vla import envs, keys
from vla.datasets.store import KINDS, StoreError, TrajectoryStore
from vla.datasets.store_schema import schema_difference
from vla.envs.rollout import Episode, record_episode
from vla.errors import UserError
from vla.options import check_fields, option

log = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    """`vla collect`'s flags (see `vla.options`): one field each, with its default, bounds and help."""

    out: str = option(help="the store to write (a .zarr path or fsspec URL)")
    suite: str = option("metaworld", help="metaworld | tabletop")
    tasks: str = option("mt10", help="a group (mt10, mt50, ml45-train, ml45-test, all) or comma-separated task names")
    episodes_per_task: int = option(20, min=1, help="successful episodes to keep per task (all, with --keep-failures)")
    image_size: int = option(keys.IMAGE_SIZE, **keys.STORE_IMAGE_SIZES, help="square image side in pixels")
    cameras: str | None = option(None, help="comma-separated cameras (default: the suite's)")
    split: str = option("train", help="scene split, where the suite has them")
    workers: int = option(1, min=1, help="parallel simulator processes")
    seed: int = option(0, min=0, help="base seed: the same seed gives the same store")
    steps_after_success: int = option(10, min=0, help="steps kept after the first success, then the episode ends")
    max_steps: int | None = option(None, min=1, help="episode step limit (default: the suite's)")
    keep_failures: bool = option(False, help="also store episodes the expert failed")
    append: bool = option(False, help="add to an existing store made differently")
    max_attempts_per_task: int | None = option(None, min=1, help="expert attempts per task (default: 4x "
                                               "--episodes-per-task + 10)")  # fmt: skip
    kind: str = option("robot", choices=KINDS, help="robot (images, state, actions) | video (action-free clips) | "
                       "image-text (captioned tabletop scenes; --episodes-per-task counts scenes)")  # fmt: skip
    frame_stride: int = option(1, min=1, help="video: keep every n-th frame (the store's fps is the env's / n)")
    captions_per_image: int = option(3, min=1, help="image-text: captions (episodes) per scene")
    action_noise: float = option(0.0, min=0.0, max=1.0, help="robot: DART noise, the std of Gaussian noise added "
                                 "to the executed action's position axes as a share of each axis's bound (the "
                                 "gripper untouched); the store keeps the expert's own action, so the policy "
                                 "learns how the expert recovers from states its own errors lead to")  # fmt: skip
    held_out_colours: bool = option(False, help="image-text: draw every object's colour from all eight, so the "
                                    "images also show the colour x kind combinations the tabletop unseen split "
                                    "holds out of robot data (a purple block)")  # fmt: skip

    def __post_init__(self):
        check_fields(self)
        if self.action_noise and self.kind != "robot":
            raise UserError(f"--action-noise applies to --kind robot, not --kind {self.kind}: only robot stores "
                            "keep actions")  # fmt: skip
        if self.frame_stride != 1 and self.kind != "video":
            raise UserError(f"--frame-stride applies to --kind video, not --kind {self.kind}")
        if self.held_out_colours and self.kind != "image-text":
            raise UserError(f"--held-out-colours applies to --kind image-text, not --kind {self.kind}: robot and "
                            "video data never show the unseen split's held-out colour x kind combinations")  # fmt: skip


@dataclass
class TaskReport:
    task: str
    kept: int = 0
    attempted: int = 0  # attempts run in this invocation
    succeeded: int = 0  # of those, how many the expert solved
    resumed: int = 0  # episodes already in the store

    @property
    def expert_success_rate(self) -> float | None:
        return self.succeeded / self.attempted if self.attempted else None


@dataclass
class CollectReport:
    out: str
    tasks: list[TaskReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def episodes_written(self) -> int:
        return sum(t.kept - t.resumed for t in self.tasks)


# --- worker side: envs are built once per (task) in each worker process ------------------------
_worker_envs: dict = {}


def _episode_job(job: tuple) -> Episode:
    suite_name, task, split, image_size, cameras, max_steps, steps_after_success, action_noise, seed = job
    if task not in _worker_envs:
        suite = envs.get_suite(suite_name)
        env = suite.make_env(task, image_size=image_size, cameras=cameras, split=split, max_episode_steps=max_steps)
        _worker_envs[task] = (env, suite.make_expert(env))
    env, expert = _worker_envs[task]
    expert.reset(seed)
    perturb = dart_noise(env.action_space, action_noise, seed) if action_noise else None
    # The env truncates at its own episode limit (or max_steps); the rollout bound is only a backstop.
    return record_episode(env, lambda obs, _: expert.act(obs), seed, max_steps or 100_000, steps_after_success,
                          perturb)  # fmt: skip


def dart_noise(space, share: float, seed: int):
    """DART's perturbation (Laskey et al. 2017, "DART: Noise Injection for Robust Imitation Learning"):
    `action -> action + N(0, (share * bound)^2)` on every axis but the last (the gripper), clipped to the
    action space; the noise is drawn from `seed`, so an episode's store is the same whatever the workers."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xDA27])
    std = share * np.asarray(space.high, np.float64)
    std[-1] = 0.0

    def perturb(action: np.ndarray) -> np.ndarray:
        return np.clip(action + rng.normal(0.0, std), space.low, space.high).astype(np.float32)

    return perturb


def _close_worker_envs() -> None:
    for env, _ in _worker_envs.values():
        env.close()
    _worker_envs.clear()


# --- main side ---------------------------------------------------------------------------------
def store_layout(cfg: CollectConfig, env_specs: dict[str, keys.Spec], env_fps: float) -> tuple[dict, float, dict]:
    """(specs, fps, recipe) of the store `cfg` collects: robot stores keep every key, video and
    image-text stores only the images; an image-text store has no time axis (fps 0)."""
    recipe = {k: v for k, v in asdict(cfg).items() if k in ("suite", "split", "image_size", "seed")}
    if cfg.kind == "robot":
        if cfg.action_noise:  # recorded only when set, so stores made before the flag still resume
            recipe["action_noise"] = cfg.action_noise
        return env_specs, env_fps, recipe
    recipe["kind"] = cfg.kind
    if cfg.kind == "video":
        recipe["frame_stride"] = cfg.frame_stride
    else:
        recipe["captions_per_image"] = cfg.captions_per_image
        if cfg.held_out_colours:  # recorded only when set, so stores made before the flag still resume
            recipe["held_out_colours"] = True
    images = {k: s for k, s in env_specs.items() if keys.is_image_key(k)}
    return images, (env_fps / cfg.frame_stride if cfg.kind == "video" else 0.0), recipe


def open_store(cfg: CollectConfig, suite, tasks: list[str], cameras: tuple[str, ...]) -> TrajectoryStore:
    """The store `cfg` collects into, opened to resume or append, or created: everything is validated
    first, so bad input never leaves a half-made store. Every kind opens its store here."""
    probe = suite.make_env(tasks[0], image_size=cfg.image_size, cameras=cameras, split=cfg.split)
    try:
        specs, fps, recipe = store_layout(cfg, probe.unwrapped.feature_specs(), probe.unwrapped.fps)
    finally:
        probe.close()
    recipe["cameras"] = list(cameras)
    try:
        store = TrajectoryStore.open(cfg.out, mode="a")
    except StoreError:
        if TrajectoryStore.exists(cfg.out):
            raise
        return TrajectoryStore.create(cfg.out, specs, fps=fps, kind=cfg.kind, extra_attrs={"collect": recipe})
    if store.kind != cfg.kind:
        store.close()
        raise StoreError(f"{cfg.out} is a {store.kind} store; collect --kind {cfg.kind} into another path")
    difference = schema_difference(store.specs, specs)
    if difference:
        store.close()
        raise StoreError(f"{cfg.out} has another schema: {difference}; collect into a new path")
    if store.attrs.get("collect") != recipe and not cfg.append:
        store.close()
        raise StoreError(
            f"{cfg.out} already exists (made with {store.attrs.get('collect')}); "
            "pass --append to add to it, or choose another path"
        )
    return store


def collect(cfg: CollectConfig, progress: bool = True) -> CollectReport:
    """Collect `episodes_per_task` expert episodes per task into `cfg.out` (resuming what is there), for the
    robot and video kinds (image-text: `vla.collect_pretrain.collect_image_text`)."""
    import time

    if cfg.kind == "image-text":
        raise ValueError("kind 'image-text' is collected by vla.collect_pretrain.collect_image_text, not here")
    suite = envs.get_suite(cfg.suite)
    tasks = envs.resolve_tasks(suite, cfg.tasks)
    cameras = envs.resolve_cameras(suite, cfg.cameras)
    split = envs.resolve_split(suite, cfg.split)
    created = not TrajectoryStore.exists(cfg.out)
    store = open_store(cfg, suite, tasks, cameras)
    report = CollectReport(cfg.out)
    start = time.perf_counter()
    pool = envs.process_pool(cfg.workers) if cfg.workers > 1 else None
    run = pool.imap if pool else map
    bar = tqdm(total=cfg.episodes_per_task * len(tasks), unit="ep", disable=not progress, desc="collect")
    try:
        for task in tasks:
            report.tasks.append(_collect_task(cfg, store, task, split, cameras, run, bar))
    finally:
        bar.close()
        if pool:
            envs.stop_pool(pool)
        _close_worker_envs()
        store.close_or_remove(created)
    report.seconds = time.perf_counter() - start
    return report


def _collect_task(cfg, store, task, split, cameras, run, bar) -> TaskReport:
    seeds = lambda a: envs.episode_seed(cfg.seed, cfg.suite, split, task, a)  # noqa: E731
    max_attempts = cfg.max_attempts_per_task or 4 * cfg.episodes_per_task + 10
    stored = set(store.meta(keys.SEED)[store.meta(keys.TASK) == task].tolist())
    done_attempts = [a for a in range(max_attempts) if seeds(a) in stored]
    report = TaskReport(task, kept=len(done_attempts), resumed=len(done_attempts))
    bar.update(min(report.kept, cfg.episodes_per_task))
    attempt = done_attempts[-1] + 1 if done_attempts else 0
    while report.kept < cfg.episodes_per_task and attempt < max_attempts:
        need = cfg.episodes_per_task - report.kept
        batch = range(attempt, min(attempt + max(need, cfg.workers), max_attempts))
        jobs = [
            (
                cfg.suite,
                task,
                split,
                cfg.image_size,
                cameras,
                cfg.max_steps,
                cfg.steps_after_success,
                cfg.action_noise,
                seeds(a),
            )
            for a in batch
        ]
        for episode in run(_episode_job, jobs):
            attempt += 1
            report.attempted += 1
            report.succeeded += episode.success
            if episode.success or cfg.keep_failures:
                store.add_episode(
                    _stored_data(cfg, episode.data),
                    instruction=episode.instruction,
                    task=task,
                    success=episode.success,
                    seed=episode.seed,
                    source="video" if cfg.kind == "video" else "expert",
                )
                report.kept += 1
                bar.update(1)
            if report.kept >= cfg.episodes_per_task:
                break
    if report.kept < cfg.episodes_per_task:
        log.warning("%s: kept %d of %d episodes after %d attempts", task, report.kept, cfg.episodes_per_task, attempt)
    return report


def _stored_data(cfg: CollectConfig, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the store keeps of an episode: all of it, or for video every `frame_stride`-th image."""
    if cfg.kind == "robot":
        return data
    return {k: v[:: cfg.frame_stride] for k, v in data.items() if keys.is_image_key(k)}


def format_report(report: CollectReport) -> str:
    lines = [f"{'task':32s} {'kept':>5s} {'expert success':>15s}"]
    for t in report.tasks:
        rate = (
            "resumed" if t.expert_success_rate is None else f"{t.succeeded}/{t.attempted} ({t.expert_success_rate:.0%})"
        )
        lines.append(f"{t.task:32s} {t.kept:5d} {rate:>15s}")
    attempted = sum(t.attempted for t in report.tasks)
    succeeded = sum(t.succeeded for t in report.tasks)
    total = f"{succeeded}/{attempted} ({succeeded / attempted:.0%})" if attempted else "-"
    lines.append(f"{'all':32s} {sum(t.kept for t in report.tasks):5d} {total:>15s}")
    rate = report.episodes_written / report.seconds if report.seconds else 0.0
    lines.append(
        f"wrote {report.episodes_written} episodes in {report.seconds:.1f} s ({rate:.2f} episodes/s) to {report.out}"
    )
    return "\n".join(lines)
