"""`vla collect --kind image-text`: captioned scene images for pretraining, from the tabletop suite.

Per task, `episodes_per_task` scenes are drawn as that task's episodes would be (its objects, the
distractors, colours and start state; seeds from `vla.envs.episode_seed`, so the same command gives
the same store). With `held_out_colours` each scene is recoloured from all eight colours, so the images
also show the colour x kind combinations the unseen split holds out of robot data (a purple block).
Each scene is rendered once from the chosen cameras (default `static`) and captioned `captions_per_image`
times from privileged state as the first camera sees it (`vla.envs.tabletop.captions`): one one-frame
episode per caption, the caption in `instruction`, task "tabletop-scene", source "image-text", seed the
scene's, and in the `scene` metadata the scene's facts as the camera sees them (JSON,
`vla.envs.tabletop.caption_facts`: what generated captions are checked against). A re-run resumes, also
inside a scene whose captions were cut short. One process does it all (`--workers` is ignored): a scene
costs a few milliseconds to render and caption.

(`--kind video` shares the expert rollouts of robot collection and lives in `vla.collect`.)
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from vla import envs, keys
from vla.collect import CollectConfig, open_store
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError, choice_error

log = logging.getLogger(__name__)

SCENE_TASK = "tabletop-scene"  # the task field of every collected image-text episode
DEFAULT_CAMERAS = "static"


@dataclass
class SceneReport:
    task: str  # the tabletop task whose scenes were drawn
    kept: int = 0  # scenes in the store with all their captions (or all the scene had to say)
    resumed: int = 0  # of those, scenes that were complete before this run
    captions: int = 0  # captions written in this run


@dataclass
class ImageTextReport:
    out: str
    tasks: list[SceneReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def episodes_written(self) -> int:
        return sum(t.captions for t in self.tasks)


def collect_image_text(cfg: CollectConfig, progress: bool = True) -> ImageTextReport:
    """Render `episodes_per_task` scenes per task with `captions_per_image` captions each into `cfg.out`."""
    if cfg.suite not in envs.SUITES:
        raise choice_error("suite", cfg.suite, envs.SUITES)
    if cfg.suite != "tabletop":
        raise UserError(
            f"--kind image-text captions objects by colour and position, which only the tabletop suite varies; "
            f"unsupported suite {cfg.suite!r}; valid: tabletop"
        )
    suite = envs.get_suite(cfg.suite)
    tasks = envs.resolve_tasks(suite, cfg.tasks)
    cameras = envs.resolve_cameras(suite, cfg.cameras or DEFAULT_CAMERAS)
    split = envs.resolve_split(suite, cfg.split)
    created = not TrajectoryStore.exists(cfg.out)
    store = open_store(cfg, suite, tasks, cameras)
    report = ImageTextReport(cfg.out)
    start = time.perf_counter()
    bar = tqdm(total=cfg.episodes_per_task * len(tasks), unit="scene", disable=not progress, desc="collect")
    try:
        stored = Counter(store.meta(keys.SEED).tolist())
        for task in tasks:
            env = suite.make_env(task, image_size=cfg.image_size, cameras=cameras, split=split)
            try:
                report.tasks.append(_collect_scenes(cfg, store, env, task, split, cameras[0], stored, bar))
            finally:
                env.close()
    finally:
        bar.close()
        store.close_or_remove(created)
    report.seconds = time.perf_counter() - start
    return report


def _collect_scenes(cfg, store, env, task, split, camera, stored: Counter, bar) -> SceneReport:
    from vla.envs.tabletop.caption_facts import scene_facts
    from vla.envs.tabletop.captions import describe

    report = SceneReport(task)
    for scene in range(cfg.episodes_per_task):
        seed = envs.episode_seed(cfg.seed, cfg.suite, split, task, scene)
        have = stored[seed]
        if have >= cfg.captions_per_image:
            report.kept += 1
            report.resumed += 1
            bar.update(1)
            continue
        obs, _ = env.reset(seed=seed, options={"colours": "any" if cfg.held_out_colours else "split"})
        captions = describe(env.unwrapped, camera, cfg.captions_per_image, seed)
        facts = scene_facts(env.unwrapped, camera).to_json()
        if len(captions) < cfg.captions_per_image:
            log.info("%s scene %d: only %d captions to say", task, scene, len(captions))
        frame = {k: v[None] for k, v in obs.items() if keys.is_image_key(k)}  # one-frame episode: (1, S, S, 3)
        for caption in captions[have:]:  # a resumed scene continues where its captions stopped
            store.add_episode(frame, instruction=caption, task=SCENE_TASK, success=True, seed=seed, source="image-text",
                              scene=facts)  # fmt: skip
            report.captions += 1
        report.kept += 1
        report.resumed += have > 0 and have >= len(captions)
        bar.update(1)
    return report


def format_image_text_report(report: ImageTextReport) -> str:
    lines = [f"{'task':32s} {'scenes':>6s} {'captions written':>17s}"]
    for t in report.tasks:
        lines.append(f"{t.task:32s} {t.kept:6d} {t.captions:17d}")
    scenes = sum(t.kept for t in report.tasks)
    lines.append(f"{'all':32s} {scenes:6d} {report.episodes_written:17d}")
    lines.append(f"wrote {report.episodes_written} captions in {report.seconds:.1f} s to {report.out}")
    return "\n".join(lines)
