"""MuJoCo benchmark suites behind one contract (see `vla.envs.suite`).

`SUITES` is a plain dict you can grep; suites are built lazily so importing `vla.envs` stays cheap.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import zlib

import numpy as np

from vla.envs import meta_world_splits
from vla.errors import UserError, choice_error

# Headless rendering: EGL works with the Mesa packages on the image. Set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")


def _metaworld():
    from vla.envs.meta_world import MetaWorldSuite

    return MetaWorldSuite()


def _tabletop():
    from vla.envs.tabletop import TabletopSuite

    return TabletopSuite()


SUITES = {"metaworld": _metaworld, "tabletop": _tabletop}
_built: dict = {}


def get_suite(name: str):
    """The suite called `name`; raises `UserError` naming the valid suites."""
    if name not in SUITES:
        raise choice_error("suite", name, SUITES)
    if name not in _built:
        _built[name] = SUITES[name]()
    return _built[name]


def resolve_tasks(suite, spec: str) -> list[str]:
    """Task names from a group name ("mt10", "all") or a comma-separated list of task names."""
    if spec in suite.groups:
        return list(suite.groups[spec])
    if spec == "all":
        return suite.tasks()
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise UserError(f"no tasks given; valid: {', '.join([*suite.groups, 'all'])} or task names")
    valid = suite.tasks()
    for name in names:
        if name not in valid:
            raise choice_error(f"{suite.name} task", name, [*suite.groups, "all", *valid])
    return names


def resolve_cameras(suite, cameras: str | None) -> tuple[str, ...]:
    """Camera names from a comma-separated list, or the suite's defaults."""
    if not cameras:
        return tuple(suite.default_cameras)
    names = tuple(c.strip() for c in cameras.split(",") if c.strip())
    for name in names:
        if name not in suite.cameras:
            raise choice_error(f"{suite.name} camera", name, suite.cameras)
    return names


def resolve_split(suite, split: str) -> str:
    if split not in suite.splits:
        raise choice_error(f"{suite.name} split", split, suite.splits)
    return split


def episode_seed(seed: int, suite: str, split: str, task: str, attempt: int) -> int:
    """A 31-bit seed for an episode, the same on every machine for the same arguments.

    Part of the data contract: stores record these seeds, and `vla collect` resumes by them. Commands
    keep their episodes apart by `split`: collection uses the split's name, `vla eval` "eval/<split>",
    `vla foresight` "foresight". Where a suite's scenes are a finite set picked by the seed (Meta-World's
    50 variants), the seed is moved onto the scenes of its split (`SCENE_SEEDS`), so collection (split
    train) and evaluation of the unseen split never share a scene."""
    key = zlib.crc32(f"{suite}/{split}/{task}".encode())
    raw = int(np.random.SeedSequence([seed, key, attempt]).generate_state(1)[0] >> 1)
    scene_split = split.removeprefix("eval/")
    if suite in SCENE_SEEDS and scene_split in SCENE_SPLITS[suite]:
        return SCENE_SEEDS[suite](raw, scene_split)
    return raw


def process_pool(workers: int, initializer=None, initargs: tuple = ()):
    """A pool of `workers` spawned processes (simulators, policies) that ignore SIGINT: Ctrl-C reaches the
    parent alone, which stops them (`stop_pool`) and prints one line, so no worker prints a
    KeyboardInterrupt traceback. They inherit the ignored signal from the moment they start (an ignored
    signal stays ignored across exec, and Python keeps it so)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        return mp.get_context("spawn").Pool(workers, initializer, initargs)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return mp.get_context("spawn").Pool(workers, initializer, initargs)
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def stop_pool(pool, timeout: float = 5.0) -> None:
    """`pool.terminate()`, and if that has not returned within `timeout` seconds, kill the workers.

    terminate() can wait for good: its shutdown puts a sentinel on the result queue, which waits for the
    queue's write lock while a worker holds it (a worker still sending a result nobody will read). Once
    in about ten runs, `vla collect --workers 2` still ran 60 s after a Ctrl-C; where it waited was not
    caught (`kill -USR1` now shows it), and this bounds the wait whatever it was in terminate(). A stuck
    terminate is left in a daemon thread, which the interpreter does not wait for at exit (and its
    finalizer has run: the pool is not terminated again at exit)."""
    stopper = threading.Thread(target=pool.terminate, name="stop-pool", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if stopper.is_alive():
        workers = list(pool._pool)  # the pool's worker processes (a copy: its handler thread edits the list)
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout)


# Suites whose seed picks one of a finite set of scenes: (seed, split) -> a seed whose scene is the split's.
# A plain dict, light to import: the suites themselves are built lazily.
SCENE_SEEDS = {"metaworld": meta_world_splits.fit_seed}
SCENE_SPLITS = {"metaworld": meta_world_splits.SPLIT_VARIANTS}


def seeds_in_split(suite: str, seeds, split: str) -> int:
    """How many of `seeds` pick a scene of `split`, for a suite whose seed picks one of a finite set of
    scenes (Meta-World's variants); 0 for the others, where every seed draws a fresh scene."""
    variants = SCENE_SPLITS.get(suite, {}).get(split)
    return 0 if variants is None else sum(meta_world_splits.variant(s) in variants for s in seeds)
