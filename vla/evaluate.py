"""`vla eval`: roll a policy out in a suite's envs and report success with confidence intervals.

Every episode's seed is `vla.envs.episode_seed(seed, suite, "eval/" + split, task, i)`: a pure
function of the arguments, disjoint from the seeds `vla collect` draws for training data (those use the
plain split name), and recorded in the report, so the same command repeats the same scenes. The split
defaults to the suite's `eval_split`, whose scenes collection never drew: Meta-World's held-out variants
40-49 (`unseen`; a Meta-World seed picks variant seed % 50, and collection draws 0-39), tabletop's
`train` (every seed a fresh layout). The report says which (`config.scenes`).

Episodes run in `--workers` spawned processes; each builds its policy once and one env per task it
meets, and reuses them. Results come back in job order, so the report does not depend on the number
of workers (unless latency is charged: then wall time, and so the outcome, depends on the machine).

Chunks are executed by `vla.policies.executor.ChunkExecutor` on its step clock (one tick per policy
step), the same code `vla control` runs on the wall clock.

Latency charging (`charge_latency`): the wall time L of each policy step (`executor.act`: observe or
predict, then pick the action) becomes ceil(L * fps) env steps during which the previous action keeps
being applied before the new one takes effect, as on a robot that keeps moving while the policy
thinks. The rounding is up, so any non-zero latency costs at least one step; before the first action
of an episode the held action is zero (`vla.envs.rollout.TimedAct`). Held steps are not executor
ticks: the chunk resumes where it was.

Episodes run through the one rollout loop, `vla.envs.rollout.rollout`. An episode ends
`steps_after_success` steps after its first success (so a video shows it), at `max_steps`, or when the
env terminates or truncates. With `chain`, the suite's chain env (`suite.make_chain_env`) gives one
scene several instructions in turn; the instruction in force is read from each step's info, and
`info["chain_length"]` gives CALVIN's chain length.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla import envs, keys
from vla.envs.rollout import Observer, Rollout, TimedAct, rollout
from vla.errors import UserError
from vla.eval_config import BASELINES, EvalConfig, default_suite
from vla.eval_report import build_report, video_frame, write_report, write_video
from vla.eval_scenes import demonstration_seeds
from vla.policies.base import ExpertPolicy, Policy, Prediction, ZeroPolicy
from vla.policies.executor import StepClockAct
from vla.viz import ForesightTracker

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("policy.yaml", "model.safetensors")
NO_LIMIT = 100_000  # rollout backstop when the env's own truncation ends episodes
CHAIN_TASK = "chain"  # the task name chains are reported (and seeded) under
WEIGHTED = ("checkpoint", "lerobot")  # policy kinds loaded from a directory (the others need no weights)


@dataclass
class Setup:
    """What a worker needs to build its envs and policy: resolved and validated in the main process."""

    suite: str
    split: str
    policy_kind: str  # "zero" | "expert" | "checkpoint" | "lerobot" (`--policy lerobot:PATH`)
    policy_path: str | None
    image_size: int
    cameras: tuple[str, ...]
    max_steps: int | None
    chain: bool  # build chain envs (`suite.make_chain_env`): one scene, several instructions in turn
    charge_latency: bool
    steps_after_success: int
    video_dir: str


@dataclass
class Job:
    task: str
    index: int  # episode number within the task
    seed: int
    video: bool


@dataclass
class EpisodeResult:
    task: str
    index: int
    seed: int
    instruction: str  # the first instruction (a chain's later ones are in `instructions`)
    success: bool
    steps: int  # env steps taken, held (latency) steps included
    steps_to_success: int | None  # env steps up to and including the first step reporting success
    inferences: int = 0  # policy steps (executor acts: a prediction or an observation, and an action)
    latency_s: float = 0.0  # mean wall time of a policy step
    steps_charged: int = 0  # env steps the previous action was held for latency
    instructions: list[str] = field(default_factory=list)  # every instruction given, in order
    chain_length: int | None = None  # subtasks completed in a row (chains only)
    chain_size: int | None = None
    video: str | None = None  # path relative to the report
    foresight: dict | None = None  # {steps ahead: summed vla.viz.frame_totals} of the foreseen frames
    fps: float = 0.0  # the env's control rate (Hz): horizons in milliseconds


# --- one episode -------------------------------------------------------------------------------
class EvalObserver(Observer):
    """What `vla eval` watches in a rollout: foresight against what came true and, if `record`, video frames.

    `prediction()` gives the Prediction behind the latest action (None when the model has not run)."""

    def __init__(self, prediction: Callable[[], Prediction | None], record: bool):
        self.prediction, self.record = prediction, record
        self.frames: list = []  # `video_frame`s: after the reset and after every step
        self.foresight = ForesightTracker()

    def on_reset(self, run: Rollout, obs: dict, info: dict) -> None:
        if self.record:
            self.frames.append(video_frame(obs, self.prediction(), False))

    def on_act(self, run: Rollout, obs: dict, action: np.ndarray) -> None:
        self.foresight.predicted(run.steps, self.prediction(), obs)  # a repeated prediction counts once

    def on_step(self, run: Rollout, obs: dict, info: dict) -> None:
        self.foresight.observed(run.steps, obs)
        if self.record:
            self.frames.append(video_frame(obs, self.prediction(), run.success))


def run_episode(env, policy: Policy, seed: int, setup: Setup, record: bool = False) -> tuple[EpisodeResult, list]:
    """Roll `policy` out from `env.reset(seed)`; returns the result and, if `record`, video frames."""
    if isinstance(policy, ExpertPolicy):
        policy.seed = seed  # the expert's noise is part of the episode
    select = StepClockAct(policy)
    idle = np.zeros(env.action_space.shape, np.float32)  # what the robot does before the first action
    act = TimedAct(select, idle, env.unwrapped.fps if setup.charge_latency else None)
    observer = EvalObserver(lambda: select.latest, record)
    run = rollout(env, act, seed, setup.max_steps or NO_LIMIT, setup.steps_after_success, [observer])
    result = EpisodeResult(run.task, 0, seed, run.instruction, run.success, run.steps, run.steps_to_success)
    result.inferences, result.latency_s = len(act.latencies), float(np.mean(act.latencies))
    result.steps_charged, result.instructions = act.steps_charged, run.instructions
    result.foresight, result.fps = observer.foresight.totals(), env.unwrapped.fps
    if "chain_length" in run.info:
        result.chain_length, result.chain_size = int(run.info["chain_length"]), len(env.unwrapped.chain)
    return result, observer.frames


# --- worker side -------------------------------------------------------------------------------
class Worker:
    """Builds the policy once and one env per task (the latest only), and runs jobs with them."""

    def __init__(self, setup: Setup, loaded=None):
        self.setup = setup
        self.suite = envs.get_suite(setup.suite)
        if loaded is None and setup.policy_kind in WEIGHTED:
            loaded = load_checkpoint(setup.policy_path)
        self.loaded = loaded
        self.task, self.env, self.policy = None, None, None

    def _switch(self, task: str) -> None:
        self.close()
        s = self.setup
        self.env = make_env(self.suite, task, s)
        if s.policy_kind == "zero":
            self.policy = ZeroPolicy(self.env.unwrapped.feature_specs())
        elif s.policy_kind == "expert":
            self.policy = ExpertPolicy(self.env, self.suite.make_expert(self.env))
        else:
            self.policy = self.loaded
        self.task = task

    def run(self, job: Job) -> EpisodeResult:
        if job.task != self.task:
            self._switch(job.task)
        record = job.video and bool(self.setup.cameras)
        result, frames = run_episode(self.env, self.policy, job.seed, self.setup, record)
        result.task, result.index = job.task, job.index
        if record:
            name = f"{job.task}-{job.index:03d}.mp4"
            write_video(Path(self.setup.video_dir) / name, frames, fps=self.env.unwrapped.fps)
            result.video = f"videos/{name}"
        return result

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.task, self.env, self.policy = None, None, None


def make_env(suite, task: str, setup: Setup):
    """The env for `task`; with `setup.chain` a chain env, whose step budget is per subtask."""
    if setup.chain:
        return suite.make_chain_env(image_size=setup.image_size, cameras=setup.cameras, split=setup.split)
    return suite.make_env(
        task, image_size=setup.image_size, cameras=setup.cameras, split=setup.split, max_episode_steps=setup.max_steps
    )


_worker: Worker | None = None


def _init_worker(setup: Setup, threads: int) -> None:
    global _worker
    if setup.policy_kind in WEIGHTED:
        import torch

        torch.set_num_threads(threads)  # workers share the cores instead of each taking all of them
    _worker = Worker(setup)


def _run_job(job: Job) -> EpisodeResult:
    return _worker.run(job)


# --- main side ---------------------------------------------------------------------------------
def load_checkpoint(path: str):
    """`vla.checkpoint.load_policy(path)` for a checkpoint directory or a run directory holding one; a LeRobot
    policy for `lerobot:PATH` (`vla.policies.lerobot_policy`)."""
    from vla.checkpoint import load_policy, resolve
    from vla.policies.lerobot_policy import is_lerobot, load_lerobot_policy

    if is_lerobot(path):
        return load_lerobot_policy(path)
    try:
        resolve(path)
    except UserError:
        raise UserError(
            f"--policy {path!r} is neither {' nor '.join(BASELINES)} nor a checkpoint directory "
            f"(no {' + '.join(CHECKPOINT_FILES)} in it or in its checkpoint/)"
        ) from None
    return load_policy(path, acting=True)


def _env_shape(cfg: EvalConfig, suite, features: dict | None) -> tuple[int, tuple[str, ...]]:
    """Image size and cameras: the checkpoint's, or `--image-size` and the suite's defaults."""
    if features is None:
        return cfg.image_size or keys.IMAGE_SIZE, tuple(suite.default_cameras)
    image_keys = [k for k in features if keys.is_image_key(k)]
    cameras = tuple(keys.camera_of(k) for k in image_keys)
    size = features[image_keys[0]].shape[0] if image_keys else cfg.image_size or keys.IMAGE_SIZE
    if cfg.image_size is not None and cfg.image_size != size:
        raise UserError(f"--image-size {cfg.image_size} disagrees with the checkpoint's {size}; leave it out")
    for cam in cameras:
        if cam not in suite.cameras:
            raise UserError(f"the policy reads camera {cam!r}, which {suite.name} lacks; it has {suite.cameras}")
    return size, cameras


def _check_features(features: dict[str, keys.Spec], env_specs: dict[str, keys.Spec], suite: str) -> None:
    for key, spec in features.items():
        if key not in env_specs:
            raise UserError(f"the policy reads {key!r}, which {suite} does not provide; it has {list(env_specs)}")
        if tuple(env_specs[key].shape) != tuple(spec.shape):
            raise UserError(f"the policy expects {key} of shape {spec.shape}, {suite} gives {env_specs[key].shape}")


def _tasks(cfg: EvalConfig, suite) -> list[str]:
    if not cfg.chain:
        if cfg.tasks is None:
            raise UserError(f"--tasks is required; valid: {', '.join([*suite.groups, 'all'])} or task names")
        return list(dict.fromkeys(envs.resolve_tasks(suite, cfg.tasks)))  # each task once
    if not hasattr(suite, "make_chain_env"):
        raise UserError(f"--chain needs a suite with instruction chains; {suite.name} has none")
    if cfg.tasks is not None:
        raise UserError("--chain evaluates chains drawn from all of the suite's tasks; leave out --tasks")
    return [CHAIN_TASK]


def _out_dir(cfg: EvalConfig, policy_kind: str, suite: str) -> Path:
    if cfg.out is not None:
        out = Path(cfg.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(cfg.policy.removeprefix("lerobot:")) if policy_kind in WEIGHTED else Path("runs")
        out = base / "eval" / f"{suite}-{stamp}"
    if (out / "report.json").exists():
        raise UserError(f"{out} already holds an evaluation report; choose another --out")
    return out


@dataclass
class Plan:
    setup: Setup
    tasks: list[str]
    out: Path
    groups: dict[str, list[str]]  # the suite's named task groups
    policy: object = None  # the loaded checkpoint policy (None for zero/expert)
    seeds: dict[str, list[int]] | None = None  # task -> episode seeds, with --scenes demonstrations


def prepare(cfg: EvalConfig) -> Plan:
    """Validate everything before anything is written: bad input raises `UserError` and writes nothing.
    Without `--suite`, a checkpoint is evaluated in its own suite (`default_suite`)."""
    kind = cfg.policy if cfg.policy in BASELINES else "lerobot" if cfg.policy.startswith("lerobot:") else "checkpoint"
    path = cfg.policy if kind in WEIGHTED else None
    policy = load_checkpoint(path) if kind in WEIGHTED else None
    features = policy.features if policy is not None else None
    suite = envs.get_suite(cfg.suite or default_suite(path, features))
    split = envs.resolve_split(suite, suite.eval_split if cfg.split is None else cfg.split)
    tasks = _tasks(cfg, suite)
    seeds = None
    if cfg.scenes == "demonstrations":
        split, seeds = _demonstration_scenes(cfg, kind, suite.name, tasks)
    size, cameras = _env_shape(cfg, suite, features)
    setup = Setup(suite.name, split, kind, path, size, cameras, cfg.max_steps, cfg.chain, cfg.charge_latency,
                  cfg.steps_after_success, video_dir="")  # fmt: skip
    probe = make_env(suite, tasks[0], setup)
    try:
        env_specs = probe.unwrapped.feature_specs()
    finally:
        probe.close()
    if features is not None:
        _check_features(features, env_specs, suite.name)
    out = _out_dir(cfg, kind, suite.name)
    setup.video_dir = str(out / "videos")
    groups = {name: list(members) for name, members in suite.groups.items()}
    return Plan(setup, tasks, out, groups, policy, seeds)


def _describe_scenes(cfg: EvalConfig, setup: Setup) -> str:
    if cfg.scenes == "demonstrations":
        return (f"the scenes of the run's own training episodes (its robot store's seeds, {setup.split} split), "
                "not fresh layouts")  # fmt: skip
    return envs.get_suite(setup.suite).describe_split(setup.split)


def _demonstration_scenes(cfg: EvalConfig, kind: str, suite: str, tasks: list[str]) -> tuple[str, dict]:
    if kind != "checkpoint" or cfg.chain:
        raise UserError("--scenes demonstrations replays a vla run's training episodes: it needs a checkpoint "
                        "--policy and single tasks (not --chain)")  # fmt: skip
    split, seeds = demonstration_seeds(cfg.policy, suite, tasks, cfg.episodes)
    if cfg.split is not None and cfg.split != split:
        raise UserError(f"--split {cfg.split}: the run's demonstrations were collected on split {split}")
    return split, seeds


def _videos_possible(wanted: int) -> int:
    if wanted == 0:
        return 0
    try:
        import av  # noqa: F401  (imageio's pyav plugin encodes the MP4s)
    except ImportError:
        log.warning("no videos: PyAV is not installed (pip install av)")
        return 0
    return wanted


def _unseeing(setup: Setup) -> Setup:
    """A baseline policy (zero, expert) reads no image: with no video to record, its envs render nothing,
    which on a CPU is nearly all of a step's time (Meta-World: 0.25 ms of physics, several ms of
    rendering). The episodes are the same: rendering never changes the physics."""
    return setup if setup.policy_kind in WEIGHTED else replace(setup, cameras=())


def evaluate(cfg: EvalConfig, progress: bool = True) -> tuple[dict, Path]:
    """Run the evaluation; returns the report (see `vla.eval_report.build_report`) and its directory."""
    plan = prepare(cfg)
    setup, tasks, out = plan.setup, plan.tasks, plan.out
    videos = _videos_possible(cfg.videos)
    split_key = "eval/" + setup.split
    seeds = plan.seeds or {
        task: [envs.episode_seed(cfg.seed, setup.suite, split_key, task, i) for i in range(cfg.episodes)]
        for task in tasks
    }
    jobs = [Job(task, i, seed, i < videos) for task in tasks for i, seed in enumerate(seeds[task])]
    if videos and setup.cameras:
        Path(setup.video_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # In-process, the policy loaded for validation is the one evaluated; workers load their own.
    results = _run_jobs(setup if videos else _unseeing(setup), jobs, cfg.workers, progress, plan.policy)
    seconds = time.perf_counter() - start
    config = {**asdict(cfg), "suite": setup.suite, "split": setup.split,
              "scenes": _describe_scenes(cfg, setup), "scene_source": cfg.scenes, "image_size": setup.image_size,
              "cameras": list(setup.cameras)}  # fmt: skip
    report = build_report(config, setup.policy_kind, tasks, plan.groups, [asdict(r) for r in results], seconds)
    if cfg.baseline:
        # The same scenes (seeds) for the reference policy, so the two columns compare like with like.
        base_setup = _unseeing(replace(setup, policy_kind=cfg.baseline, policy_path=None, charge_latency=False))
        base_jobs = [replace(job, video=False) for job in jobs]
        base = _run_jobs(base_setup, base_jobs, cfg.workers, progress)
        base_report = build_report(config, cfg.baseline, tasks, plan.groups, [asdict(r) for r in base], 0.0)
        report["baseline"] = {"policy": cfg.baseline, "tasks": base_report["tasks"], "means": base_report["means"]}
    write_report(out, report)
    log.info("wrote %s", out)
    return report, out


def _run_jobs(setup: Setup, jobs: list[Job], workers: int, progress: bool, loaded=None) -> list[EpisodeResult]:
    bar = tqdm(total=len(jobs), unit="ep", disable=not progress, desc="eval")
    pool, worker = None, None
    try:
        if workers > 1:
            threads = max(1, (mp.cpu_count() or 1) // workers)
            pool = envs.process_pool(workers, _init_worker, (setup, threads))
            results = []
            for result in pool.imap(_run_job, jobs):
                results.append(result)
                bar.update(1)
            pool.close()
            pool.join()
        else:
            worker = Worker(setup, loaded)
            results = []
            for job in jobs:
                results.append(worker.run(job))
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            envs.stop_pool(pool)
        if worker is not None:
            worker.close()
    return results
