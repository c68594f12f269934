"""`TabletopSuite`: the tabletop tasks behind the suite contract of `vla.envs.suite`."""

from __future__ import annotations

import gymnasium as gym

from vla import keys
from vla.envs.tabletop import chains, splits
from vla.envs.tabletop.env import DEFAULT_CAMERAS, TabletopEnv
from vla.envs.tabletop.experts import TabletopExpert
from vla.envs.tabletop.scene import CAMERAS
from vla.envs.tabletop.tasks import TASKS
from vla.errors import choice_error

GROUPS: dict[str, list[str]] = {
    "tabletop11": list(TASKS),
    "pick-place": ["lift-block", "place-in-bowl", "place-on-pad", "stack-blocks"],
    "push": ["push-block-to-pad", "slide-block-left", "slide-block-right", "knock-over"],
    "articulated": ["open-drawer", "close-drawer", "press-button"],
}


class TabletopSuite:
    """The project's own tabletop suite (see `vla.envs.tabletop`) as a `vla.envs.suite.Suite`."""

    name = "tabletop"
    cameras = CAMERAS
    default_cameras = DEFAULT_CAMERAS
    splits = splits.SPLITS
    # Every seed draws a fresh layout (positions are continuous), and eval seeds never equal collected
    # ones, so evaluating on `train` replays no collected scene; `unseen` also holds out colours, the
    # front-right region and phrasings (`vla.envs.tabletop.splits`).
    eval_split = "train"
    groups = GROUPS

    def describe_split(self, split: str) -> str:
        """What a split's scenes are, for evaluation reports."""
        if split == "unseen":
            return "unseen split: held-out colours, region and phrasings, never collected with --split train"
        return "train split: a fresh layout per seed (no seed equals a collected one)"

    def tasks(self) -> list[str]:
        """The single tasks; `make_env("chain")` and `make_chain_env` build the chained variant."""
        return list(TASKS)

    def make_env(
        self,
        task: str,
        *,
        image_size: int = keys.IMAGE_SIZE,
        cameras: tuple[str, ...] | None = None,
        split: str = "train",
        max_episode_steps: int | None = None,
    ) -> TabletopEnv:
        if task != chains.CHAIN and task not in TASKS:
            raise choice_error("tabletop task", task, [*TASKS, chains.CHAIN])
        return TabletopEnv(
            task, image_size=image_size, cameras=cameras, split=split, max_episode_steps=max_episode_steps
        )

    def make_chain_env(
        self,
        *,
        image_size: int = keys.IMAGE_SIZE,
        cameras: tuple[str, ...] | None = None,
        split: str = "train",
        chain_length: int = chains.CHAIN_LENGTH,
        subtask_steps: int = chains.SUBTASK_STEPS,
    ) -> TabletopEnv:
        """A chain env: one scene, `chain_length` instructions, `subtask_steps` steps for each."""
        return TabletopEnv(
            chains.CHAIN,
            image_size=image_size,
            cameras=cameras,
            split=split,
            chain_length=chain_length,
            subtask_steps=subtask_steps,
        )

    def make_expert(self, env: gym.Env) -> TabletopExpert:
        return TabletopExpert(env)


def register() -> None:
    """Register `vla/tabletop-<task>` for every task and `vla/tabletop-chain`; idempotent."""
    for task in [*TASKS, chains.CHAIN]:
        env_id = f"vla/tabletop-{task}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="vla.envs.tabletop.env:TabletopEnv", kwargs={"task": task})
