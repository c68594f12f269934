"""`--policy lerobot:PATH`: the bridge to a LeRobot policy in its own Python, tested against a stand-in
`lerobot` package (the same three calls LeRobot 0.4.4's evaluation makes), so that it runs without lerobot;
the one-line error where no lerobot is reachable; `vla eval` with it in Meta-World."""

import json
import sys
import textwrap

import numpy as np
import pytest

from vla import keys
from vla.cli import main
from vla.errors import UserError

# A stand-in for lerobot's loading API: a policy whose action encodes what it received, so the test sees
# the conversions (images to float CHW in [0, 1]), the instruction, the preprocessor and every reset.
FAKE_CONFIGS = """
import json, pathlib
from types import SimpleNamespace as NS
class PreTrainedConfig:
    @staticmethod
    def from_pretrained(path):
        d = json.loads((pathlib.Path(path) / "config.json").read_text())
        feats = lambda group: {k: NS(type=NS(name=v["type"]), shape=tuple(v["shape"])) for k, v in d[group].items()}
        return NS(type=d["type"], device="cuda", input_features=feats("input_features"),
                  output_features=feats("output_features"), n_action_steps=d.get("n_action_steps", 1))
"""
FAKE_FACTORY = """
import torch
class Fake:
    resets = 0
    def __init__(self, cfg): self.cfg = cfg
    @classmethod
    def from_pretrained(cls, path, config): return cls(config)
    def eval(self): pass
    def reset(self): Fake.resets += 1
    def select_action(self, batch):
        if batch["task"][0] == "explode":
            raise RuntimeError("boom")
        image = batch["observation.images.corner"]
        assert image.shape[:2] == (1, 3) and image.dtype == torch.float32 and image.max() <= 1
        return torch.stack([image.mean(), batch["observation.state"][0, 0], torch.tensor(float(Fake.resets)),
                            torch.tensor(float(len(batch["task"][0])))])[None]
def get_policy_class(name): return Fake
def make_pre_post_processors(cfg, pretrained_path, preprocessor_overrides):
    assert preprocessor_overrides["device_processor"]["device"] == "cpu" and cfg.device == "cpu"
    return (lambda batch: batch), (lambda action: action * 2)
"""


@pytest.fixture
def fake_lerobot(tmp_path, monkeypatch):
    """A stand-in lerobot package on PYTHONPATH, this Python as VLA_LEROBOT_PYTHON, and a checkpoint for it."""
    pkg = tmp_path / "site" / "lerobot"
    for sub, text in (("configs/policies.py", FAKE_CONFIGS), ("policies/factory.py", FAKE_FACTORY)):
        (pkg / sub).parent.mkdir(parents=True, exist_ok=True)
        (pkg / sub).write_text(textwrap.dedent(text))
        (pkg / sub).parent.joinpath("__init__.py").touch()
    (pkg / "__init__.py").touch()
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'site'}:{':'.join(sys.path)}")
    monkeypatch.setenv("VLA_LEROBOT_PYTHON", sys.executable)
    ckpt = tmp_path / "train" / "checkpoints" / "last" / "pretrained_model"
    ckpt.mkdir(parents=True)
    config = {"type": "act", "n_action_steps": 10,
              "input_features": {"observation.images.corner": {"type": "VISUAL", "shape": [3, 32, 32]},
                                 "observation.state": {"type": "STATE", "shape": [4]}},
              "output_features": {"action": {"type": "ACTION", "shape": [4]}}}  # fmt: skip
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "model.safetensors").write_bytes(b"")
    return tmp_path / "train"


def test_bridge(fake_lerobot):
    from vla.policies.lerobot_policy import load_lerobot_policy

    policy = load_lerobot_policy(f"lerobot:{fake_lerobot}")  # a training run's directory: its last checkpoint
    try:
        assert policy.type == "act" and (policy.history, policy.chunk, policy.n_action_steps) == (1, 1, 1)
        assert policy.features[keys.image_key("corner")].shape == (32, 32, 3)
        assert policy.features[keys.ACTION].shape == (4,)
        obs = {keys.image_key("corner"): np.full((32, 32, 3), 51, np.uint8),
               keys.OBS_STATE: np.array([0.25, 0, 0, 0], np.float32)}  # fmt: skip
        policy.reset()
        actions = policy.predict(obs, "reach").actions
        # postprocessed (x 2): image mean 51/255, state[0], one reset so far, len("reach")
        np.testing.assert_allclose(actions, [[2 * 51 / 255, 0.5, 2.0, 10.0]], rtol=1e-6)
        assert actions.shape == (1, 4) and actions.dtype == np.float32
        with pytest.raises(UserError, match="failed: RuntimeError: boom"):
            policy.predict(obs, "explode")
        assert policy.predict(obs, "go").actions[0, 3] == 4.0  # the worker goes on after a failed step
    finally:
        policy.close()
    assert policy._proc.poll() == 0  # closed cleanly


def test_no_lerobot_is_one_line(fake_lerobot, monkeypatch, capsys):
    monkeypatch.delenv("VLA_LEROBOT_PYTHON")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    code = main(["eval", "--policy", f"lerobot:{fake_lerobot}", "--tasks", "reach-v3", "--episodes", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "bash bench/build_lerobot_env.sh ENV" in err[0] and "VLA_LEROBOT_PYTHON=ENV/bin/python" in err[0]


def test_not_a_lerobot_checkpoint(tmp_path, capsys):
    assert main(["eval", "--policy", f"lerobot:{tmp_path}", "--tasks", "reach-v3"]) == 2
    assert "no LeRobot policy there (config.json + model.safetensors" in capsys.readouterr().err


def test_eval_lerobot_policy(fake_lerobot, tmp_path, capsys):
    """`vla eval` runs the LeRobot policy in Meta-World through the same rollout and report as its own."""
    out = tmp_path / "eval"
    code = main(["eval", "--policy", f"lerobot:{fake_lerobot}", "--suite", "metaworld", "--tasks", "reach-v3",
                 "--episodes", "1", "--max-steps", "4", "--videos", "0", "--out", str(out), "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["policy_kind"] == "lerobot" and report["config"]["image_size"] == 32
    assert report["config"]["cameras"] == ["corner"]
    assert [(e["task"], e["steps"], e["inferences"]) for e in report["episodes"]] == [("reach-v3", 4, 4)]
