"""Checkpoints: the policy contract on disk (policy.yaml + model.safetensors), checkpoints written before
it, and one-line errors for damaged files."""

import dataclasses
import re

import numpy as np
import pytest
import torch
import yaml

from vla import checkpoint, keys
from vla.cli import main
from vla.errors import UserError
from vla.policies.config import PolicyConfig, migrate_legacy, with_preset
from vla.policies.vla_policy import VLAPolicy
from vla.robot.mock import mock_features

FEATURES = {k: s.to_json() for k, s in mock_features(("front",), 16).items()}


def tiny_policy(**settings) -> VLAPolicy:
    torch.manual_seed(0)
    fields = {**dict(preset="tiny", features=FEATURES, history=2, chunk=4, n_action_steps=4), **settings}
    config = PolicyConfig(**with_preset(fields))
    return VLAPolicy(config).eval()


def observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        keys.image_key("front"): rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        keys.OBS_STATE: rng.normal(size=4).astype(np.float32),
    }


def test_a_policy_directory_is_its_config_and_weights(tmp_path):
    policy = tiny_policy(n_action_steps=3, temporal_ensemble=0.25, gripper_weight=0.5)
    obs = observation(0)
    expected = policy.predict(obs, "go").actions  # "go" is embedded now, and its embedding is saved
    checkpoint.save_policy(policy, tmp_path / "p")
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == ["language.safetensors", "model.safetensors", "policy.yaml"]
    loaded = checkpoint.load_policy(tmp_path / "p")
    assert loaded.config == policy.config  # execution settings and loss weights travel with the weights
    assert (loaded.n_action_steps, loaded.temporal_ensemble) == (3, 0.25)
    np.testing.assert_array_equal(expected, loaded.predict(obs, "go").actions)


def _legacy_tree(policy: VLAPolicy) -> dict:
    """The run config as checkpoints wrote it before the policy contract: model / data / train / features."""
    fields = dataclasses.asdict(policy.config)
    window = {k: fields.pop(k) for k in ("history", "chunk")}
    (window["foresight_offset"],) = fields.pop("foresight_offsets")  # one horizon then
    for name in ("foresight_decoder", "every_step_loss"):  # the MAE-style decoder, the last step supervised
        fields.pop(name)
    execution = {k: fields.pop(k) for k in ("n_action_steps", "temporal_ensemble", "action_weight",
                                              "foresight_weight", "text_weight")}  # fmt: skip
    features = fields.pop("features")
    for name in ("gripper_weight", "foresight_stats_weight"):  # these were constants in code then
        fields.pop(name)
    return {"model": fields, "data": {"stores": [{"path": "demos.zarr", "weight": 1.0}], **window},
            "train": {"out": "runs/x", "steps": 10, **execution}, "features": features}  # fmt: skip


def test_checkpoints_from_before_the_policy_contract_still_load(tmp_path):
    policy = tiny_policy(n_action_steps=2, foresight_decoder="mae")
    old = tmp_path / "run" / "checkpoint"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text(yaml.safe_dump(_legacy_tree(policy), sort_keys=False))
    checkpoint.save_policy(policy, old)
    (old / "policy.yaml").unlink()  # old checkpoints had none
    loaded = checkpoint.load_policy(tmp_path / "run")
    assert loaded.config == policy.config
    assert checkpoint.load_run_config(tmp_path / "run").data.stores[0].path == "demos.zarr"
    obs = observation(1)
    np.testing.assert_array_equal(policy.predict(obs, "go").actions, loaded.predict(obs, "go").actions)


def test_migrating_a_current_tree_changes_nothing():
    policy = {"preset": "tiny", "history": 2, "foresight_offsets": [3, 10], "foresight_decoder": "residual",
              "every_step_loss": True}  # fmt: skip
    tree = {"policy": policy, "data": {"stores": []}, "train": {"steps": 3}}
    assert migrate_legacy(tree) == tree


def test_a_policy_yaml_from_before_the_residual_decoder_loads_as_mae(tmp_path):
    policy = tiny_policy(foresight_decoder="mae")
    checkpoint.save_policy(policy, tmp_path / "p")
    tree = yaml.safe_load((tmp_path / "p" / "policy.yaml").read_text())
    (tree["foresight_offset"],) = tree.pop("foresight_offsets")
    del tree["foresight_decoder"], tree["every_step_loss"]
    (tmp_path / "p" / "policy.yaml").write_text(yaml.safe_dump(tree))
    loaded = checkpoint.load_policy(tmp_path / "p")
    assert loaded.config == policy.config
    obs = observation(2)
    np.testing.assert_array_equal(policy.predict(obs, "go").foresight[3][keys.image_key("front")],
                                  loaded.predict(obs, "go").foresight[3][keys.image_key("front")])  # fmt: skip


def test_a_truncated_weights_file_is_one_line_naming_it(tmp_path, capsys):
    checkpoint.save_policy(tiny_policy(), tmp_path / "p")
    weights = tmp_path / "p" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="model.safetensors cannot be read"):
        checkpoint.load_policy(tmp_path / "p")
    assert main(["eval", "--policy", str(tmp_path / "p"), "--tasks", "reach-v3", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(weights) in err[0]
    assert not (tmp_path / "e").exists()


def test_weights_of_another_shape_are_one_line(tmp_path):
    checkpoint.save_policy(tiny_policy(), tmp_path / "p")
    config = yaml.safe_load((tmp_path / "p" / "policy.yaml").read_text())
    (tmp_path / "p" / "policy.yaml").write_text(yaml.safe_dump({**config, "chunk": 6}))
    with pytest.raises(UserError, match="does not fit its policy.yaml"):
        checkpoint.load_policy(tmp_path / "p")


def test_loss_weights_come_from_the_config():
    policy = tiny_policy(gripper_weight=0.0, foresight_stats_weight=0.0, foresight_decoder="mae")
    assert policy.model.action_head.gripper_weight == 0.0
    assert all(d.stats_weight == 0.0 for d in policy.model.foresight.values())
    act, target = torch.randn(3, policy.config.d_model), torch.randn(3, 4, 4)
    keep, closed = torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)
    loss, metrics = policy.model.action_head.loss(act, target, keep, closed)
    torch.testing.assert_close(loss, metrics["loss_arm"])  # the gripper term weighs nothing


def test_a_policy_without_an_action_head_is_refused_where_it_must_act(tmp_path, capsys):
    video_features = {k: v for k, v in FEATURES.items() if keys.is_image_key(k)}  # what video pretraining sees
    config = PolicyConfig(**with_preset(dict(preset="tiny", features=video_features, history=2, chunk=4,
                                             n_action_steps=4)))  # fmt: skip
    checkpoint.save_policy(VLAPolicy(config), tmp_path / "pre")
    assert checkpoint.load_policy(tmp_path / "pre").model.action_head is None  # it still foresees
    message = "this checkpoint has no action head (pretrained on video/image-text); finetune it with vla train"
    with pytest.raises(UserError, match=re.escape(message)):
        checkpoint.load_policy(tmp_path / "pre", acting=True)
    out = tmp_path / "eval"
    assert main(["eval", "--policy", str(tmp_path / "pre"), "--tasks", "reach-v3", "--out", str(out)]) == 2
    assert main(["foresight", "--policy", str(tmp_path / "pre"), "--suite", "metaworld", "--tasks", "reach-v3",
                 "--out", str(tmp_path / "fs")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(message in line for line in err)
    assert not out.exists() and not (tmp_path / "fs").exists()
