"""Configs: YAML presets, dotted overrides, and one-line errors naming the valid choices."""

import re

import pytest

from vla.cli import main
from vla.config import load_config, save_config
from vla.errors import UserError
from vla.policies.config import PRESETS


def test_presets_fill_the_model_and_overrides_win(tmp_path):
    cfg = load_config("configs/quickstart.yaml", ["policy.preset=gr1", "policy.n_layer=3", "train.lr=1e-3"])
    assert cfg.policy.d_model == PRESETS["gr1"]["d_model"] and cfg.policy.n_layer == 3
    assert cfg.policy.history == 2 and cfg.policy.n_action_steps == 4  # the quickstart's, beside the preset
    assert cfg.train.lr == 0.001 and cfg.data.stores[0].path == "runs/quickstart/demos.zarr"
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # the resolved config reloads as it was


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config field train.lrr; valid: out, steps"),
        ("policy.preset=huge", "unknown policy.preset 'huge'; valid: tiny, small, gr1"),
        ("train.steps=many", "train.steps must be int, got 'many'"),
        ("policy.action_head=diffusion", "unknown policy.action_head 'diffusion'; valid: mlp, flow"),
        ("policy.history=0", "policy.history must be >= 1, got 0"),
        ("train.steps=-5", "train.steps must be >= 1, got -5"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.lr=-1", "train.lr must be > 0.0, got -1.0"),
        ("data.val_fraction=1", "data.val_fraction must be in [0.0, 0.9], got 1.0"),
        ("train.eval.episodes=0", "train.eval.episodes must be >= 1, got 0"),
        ("model.preset=tiny", "config field model.preset is now policy.preset"),
        ("data.history=2", "config field data.history is now policy.history"),
        ("train.n_action_steps=2", "config field train.n_action_steps is now policy.n_action_steps"),
        ("train.steps.x=1", "cannot set train.steps.x: steps is not a section"),
    ],
)
def test_bad_config_values_are_named(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config("configs/quickstart.yaml", [override])


def test_cli_train_bad_input_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train", "--set", "train.steps=2", "--set", f"train.out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"vla train: error: no config file {tmp_path / 'missing.yaml'}"
    assert err[1] == "vla train: error: no training stores: set data.stores in the config (a list of {path, weight})"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("amx, avx512_bf16, wanted, used", [
    (True, False, True, True),  # native bf16: autocast as asked
    (False, True, True, True),
    (False, False, True, False),  # emulated bf16 is slower than fp32: train in fp32, with a warning
    (True, True, False, False),  # not asked for
])  # fmt: skip
def test_bf16_autocast_only_where_the_cpu_has_it(monkeypatch, caplog, amx, avx512_bf16, wanted, used):
    import torch

    from vla.train import use_bf16

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    cfg = load_config(overrides=[f"train.bf16={str(wanted).lower()}"])
    assert use_bf16(cfg, torch.device("cpu")) is used
    assert ("no native bfloat16" in caplog.text) == (wanted and not used)
