"""Evaluation never replays a scene collection drew: a Meta-World scene is variant seed % 50, collection
draws variants 0-39 and evaluation, by default, the held-out 40-49; the report says so."""

import json
import logging

import pytest

from tests.conftest import SPECS, synthetic_episode, tiny_config
from vla import envs, keys
from vla.datasets.store import TrajectoryStore
from vla.envs.meta_world_splits import MAX_SEED, fit_seed, variant
from vla.evaluate import EvalConfig, evaluate
from vla.train_data import build_data

TASKS = ("reach-v3", "drawer-close-v3", "push-v3")


def test_collection_and_evaluation_draw_disjoint_metaworld_scenes():
    collected = {variant(envs.episode_seed(s, "metaworld", "train", t, a)) for s in (0, 1) for t in TASKS
                 for a in range(200)}  # fmt: skip
    evaluated = {variant(envs.episode_seed(s, "metaworld", "eval/unseen", t, i)) for s in (0, 1) for t in TASKS
                 for i in range(100)}  # fmt: skip
    assert collected == set(range(40)) and evaluated == set(range(40, 50))  # every variant of its part, no other
    # Asked for explicitly, evaluation on the training variants replays collected scenes (not seeds).
    assert {variant(envs.episode_seed(0, "metaworld", "eval/train", "reach-v3", i)) for i in range(100)} <= collected
    # A seed already in its split is kept: stores collected before the variants were split still resume.
    assert envs.episode_seed(0, "metaworld", "train", "reach-v3", 0) == 1888730717
    for seed in (0, 39, 40, 49, 12345, MAX_SEED - 3, MAX_SEED):
        for split, variants in (("train", range(40)), ("unseen", range(40, 50))):
            fitted = fit_seed(seed, split)
            assert variant(fitted) in variants and 0 <= fitted <= MAX_SEED
            assert fitted == seed if variant(seed) in variants else abs(fitted - seed) < 100


def test_collected_metaworld_stores_hold_training_variants_only(metaworld_store):
    seeds = TrajectoryStore.open(metaworld_store).meta(keys.SEED)
    assert all(variant(s) < 40 for s in seeds)


def test_eval_defaults_to_the_held_out_variants_and_says_so(tmp_path):
    cfg = EvalConfig("zero", tasks="reach-v3", episodes=3, max_steps=2, videos=0, out=str(tmp_path / "eval"))
    report, out = evaluate(cfg, progress=False)
    assert report["config"]["split"] == "unseen"
    assert all(40 <= variant(e["seed"]) < 50 for e in report["episodes"])
    assert "held-out variants: variants 40-49" in report["config"]["scenes"]
    assert "Scenes: held-out variants: variants 40-49" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["config"]["scenes"] == report["config"]["scenes"]


def test_tabletop_evaluates_fresh_layouts_of_its_own_splits():
    suite = envs.get_suite("tabletop")
    assert suite.eval_split == "train" and "fresh layout" in suite.describe_split("train")
    assert "held-out colours" in suite.describe_split("unseen")
    # Its seeds pick continuous layouts: nothing is moved, and eval seeds never equal collected ones.
    collected = {envs.episode_seed(0, "tabletop", "train", "lift-block", a) for a in range(200)}
    evaluated = {envs.episode_seed(0, "tabletop", "eval/train", "lift-block", i) for i in range(200)}
    assert not collected & evaluated
    assert envs.seeds_in_split("tabletop", collected, "unseen") == 0


def test_training_warns_of_a_store_holding_held_out_scenes(tmp_path, caplog):
    path = tmp_path / "old.zarr"
    recipe = {"suite": "metaworld", "split": "train", "image_size": 8, "seed": 0}
    with TrajectoryStore.create(path, SPECS, fps=10, extra_attrs={"collect": recipe}) as store:
        for i, seed in enumerate((3, 45, 95, 1048)):  # variants 3, 45, 45, 48: three held out
            store.add_episode(synthetic_episode(i, 8), instruction="x", task="reach-v3", success=True, seed=seed,
                              source="expert")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="vla.train"):
        build_data(tiny_config(path, tmp_path / "run"))
    assert "3 of 4 episodes show metaworld's held-out scenes (split unseen)" in caplog.text
    assert "--split train" in caplog.text


@pytest.mark.parametrize("split", ["train", "unseen"])
def test_metaworld_collect_draws_the_split_asked_for(split):
    seeds = [envs.episode_seed(0, "metaworld", split, "reach-v3", a) for a in range(50)]
    assert envs.seeds_in_split("metaworld", seeds, split) == 50
