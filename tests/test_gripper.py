"""The gripper's kind (binary or continuous) comes from the data's action spec or, where a store does not
declare it, from its values; a continuous gripper is regressed with the arm, never forced to two values."""

import logging

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import CAMERA, tiny_config
from tests.test_robot_lerobot import DocumentedArm
from vla import checkpoint, keys
from vla.datasets.sampler import WindowDataset, WindowSpec, collate
from vla.datasets.stats import _key_stats, get_stats
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError
from vla.policies.config import PolicyConfig, gripper_kind, infer_gripper, with_preset
from vla.policies.vla_policy import VLAPolicy
from vla.robot.lerobot import LeRobotAdapter
from vla.train import train


def kind_of(values) -> str:
    """The kind `infer_gripper` sees in a last action dimension, through the store's statistics."""
    stats = _key_stats(np.asarray(values, np.float32).reshape(-1, 1))
    return infer_gripper(*(float(np.float32(stats[s][0])) for s in ("min", "max", "mean", "std")))[0]


def test_the_kind_is_inferred_from_the_values():
    rng = np.random.default_rng(0)
    effort = np.clip(rng.choice([-1.0, 1.0, 0.0], 2000) + rng.normal(0, 0.1, 2000), -1, 1)  # Meta-World's expert
    assert kind_of(effort) == "binary"
    assert kind_of(rng.choice([0.0, 100.0], 500)) == "binary"  # two levels, whatever they are
    assert kind_of(rng.choice([0.0, 1.0], 500, p=[0.9, 0.1])) == "binary"
    position = np.concatenate([np.full(300, 2.0), np.linspace(2, 61, 40), np.full(300, 61.0)])  # SO-100: 0-100
    assert kind_of(position + rng.normal(0, 0.3, position.size)) == "continuous"
    assert kind_of(position) == "continuous"  # two plateaus and the motion between them
    assert kind_of(rng.uniform(-0.01, 0.01, 500)) == "continuous"  # an arm's last displacement, no gripper
    assert kind_of(np.full(50, 100.0)) == "continuous"  # a constant: nothing to classify


def features(gripper: str = "") -> dict:
    action = keys.Spec("float32", (4,), "deg, then gripper 0-100", "joints + gripper", gripper)
    return {CAMERA: keys.image_spec("front", 8).to_json(), keys.ACTION: action.to_json()}


def test_the_config_wins_then_the_spec_then_the_values():
    stats = {
        keys.ACTION: {"min": np.zeros(4), "max": np.full(4, 100.0), "mean": np.full(4, 50.0), "std": np.full(4, 50.0)}
    }  # fmt: skip  (two levels: binary by its values)
    assert gripper_kind(PolicyConfig(features=features()), stats)[0] == "binary"
    assert gripper_kind(PolicyConfig(features=features("continuous")), stats) == (
        "continuous", "declared by the data's action spec")  # fmt: skip
    assert gripper_kind(PolicyConfig(features=features("continuous"), gripper="binary"), stats)[0] == "binary"
    with pytest.raises(UserError, match="set policy.gripper to one of binary, continuous, none"):
        gripper_kind(PolicyConfig(features=features()), None)  # nothing to tell it by


def test_envs_and_robots_declare_their_gripper():
    from vla import envs

    env = envs.get_suite("metaworld").make_env("reach-v3", cameras=())
    try:
        assert env.unwrapped.feature_specs()[keys.ACTION].gripper == "binary"  # an effort in [-1, 1]
    finally:
        env.close()
    assert LeRobotAdapter(DocumentedArm()).action_features[keys.ACTION].gripper == "continuous"  # 0-100 position


def test_a_store_from_before_the_declaration_takes_episodes_from_envs_that_declare(tmp_path):
    undeclared = {CAMERA: keys.image_spec("front", 8), keys.ACTION: keys.Spec("float32", (4,), "m", "d")}
    TrajectoryStore.create(tmp_path / "old.zarr", undeclared, fps=10).close()
    store = TrajectoryStore.open(tmp_path / "old.zarr")
    assert store.specs[keys.ACTION].gripper == ""
    assert store.specs == {**undeclared, keys.ACTION: keys.Spec("float32", (4,), "m", "d", "binary")}  # same schema
    declared = keys.Spec("float32", (4,), "m", "d", "continuous")
    assert keys.Spec.from_json(declared.to_json()) == declared and declared.to_json()["gripper"] == "continuous"


def positions_store(path, declare: bool) -> None:
    """Four episodes whose gripper holds a position of 10, 35, 60 or 85 (of 0-100), the arm a ramp."""
    action = keys.Spec("float32", (4,), "deg, then gripper 0-100", "joints + gripper", "continuous" if declare else "")
    specs = {CAMERA: keys.image_spec("front", 8), keys.OBS_STATE: keys.state_spec("joints", 4), keys.ACTION: action}
    with TrajectoryStore.create(path, specs, fps=10) as store:
        for i, grip in enumerate((10.0, 35.0, 60.0, 85.0)):
            steps = np.arange(12, dtype=np.float32)
            act = np.stack([steps, -steps, steps * 0.5, np.full(12, grip, np.float32)], 1)
            image = np.zeros((12, 8, 8, 3), np.uint8)
            image[..., i % 3] = 60 * (i + 1)  # each episode's scene tells its gripper position
            store.add_episode({CAMERA: image, keys.OBS_STATE: act, keys.ACTION: act}, instruction="grip",
                              task="grip", success=True, seed=i, source="teleop")  # fmt: skip


def test_a_continuous_gripper_is_regressed_not_forced_to_its_ends(tmp_path):
    positions_store(tmp_path / "so100.zarr", declare=True)
    store = TrajectoryStore.open(tmp_path / "so100.zarr")
    config = PolicyConfig(**with_preset(dict(preset="tiny", history=2, chunk=4, n_action_steps=4, features={
        k: s.to_json() for k, s in store.specs.items()})))  # fmt: skip
    torch.manual_seed(0)
    policy = VLAPolicy(config, get_stats(store))
    assert policy.config.gripper == "continuous" and not policy.model.action_head.gripper
    ds = WindowDataset(store, WindowSpec(2, 4, [3]))
    batch = collate([ds[i] for i in range(0, len(ds), 6)])
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(150):
        loss, metrics = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "loss_gripper" not in metrics  # no classification
    policy.eval()
    predicted = []
    for episode in range(4):
        policy.reset()
        obs = {k: v[5] for k, v in store.episode(episode).items() if k != keys.ACTION}
        predicted.append(policy.predict(obs, "grip").actions[:, -1])
    predicted = np.stack(predicted)  # (episodes, chunk): the held positions, not 10 or 85 everywhere
    np.testing.assert_allclose(predicted.mean(1), [10.0, 35.0, 60.0, 85.0], atol=8.0)


def test_training_says_which_kind_it_used_and_saves_it(tmp_path, caplog):
    positions_store(tmp_path / "old.zarr", declare=False)  # undeclared: inferred from the values
    with caplog.at_level(logging.INFO, logger="vla.train"):
        train(tiny_config(tmp_path / "old.zarr", tmp_path / "run", steps=2), progress=False)
    assert "policy.gripper: continuous (inferred: values in [10, 85] beyond two levels)" in caplog.text
    assert yaml.safe_load((tmp_path / "run" / "checkpoint" / "policy.yaml").read_text())["gripper"] == "continuous"
    assert checkpoint.load_run_config(tmp_path / "run").policy.gripper == "continuous"  # a resume agrees
    assert not checkpoint.load_policy(tmp_path / "run").model.action_head.gripper


def test_a_binary_gripper_closes_halfway_between_its_levels(tmp_path):
    config = PolicyConfig(**with_preset(dict(preset="tiny", features=features())))
    for low, high, threshold in ((-1.0, 1.0, 0.0), (0.0, 1.0, 0.5), (20.0, 80.0, 50.0)):
        stats = {keys.ACTION: {"min": np.full(4, low), "max": np.full(4, high), "mean": np.full(4, (low + high) / 2),
                               "std": np.full(4, (high - low) / 2)}, CAMERA: _key_stats(np.zeros((2, 3)))}  # fmt: skip
        policy = VLAPolicy(config, stats)
        assert policy.config.gripper == "binary" and policy.model.action_head.gripper
        assert float(policy._gripper_threshold()) == threshold  # 20/80: "above 0" would call both closed


@pytest.mark.parametrize("old, kind", [(True, "binary"), (False, "none")])
def test_checkpoints_from_before_gripper_kinds_load(tmp_path, old, kind):
    config = PolicyConfig(**with_preset(dict(preset="tiny", features=features(), gripper=kind)))
    policy = VLAPolicy(config)
    checkpoint.save_policy(policy, tmp_path / "p")
    tree = yaml.safe_load((tmp_path / "p" / "policy.yaml").read_text())
    (tmp_path / "p" / "policy.yaml").write_text(yaml.safe_dump({**tree, "gripper": old}))  # as it was written then
    loaded = checkpoint.load_policy(tmp_path / "p")
    assert loaded.config.gripper == kind and loaded.model.action_head.gripper == (kind == "binary")
    for name, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
