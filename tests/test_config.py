"""Configs: YAML presets, dotted overrides, and one-line errors naming the valid choices."""

import pytest

from vla.cli import main
from vla.config import MODEL_PRESETS, load_config, save_config
from vla.errors import UserError


def test_presets_fill_the_model_and_overrides_win(tmp_path):
    cfg = load_config("configs/quickstart.yaml", ["model.preset=gr1", "model.n_layer=3", "train.lr=1e-3"])
    assert cfg.model.d_model == MODEL_PRESETS["gr1"]["d_model"] and cfg.model.n_layer == 3
    assert cfg.train.lr == 0.001 and cfg.data.stores[0].path == "runs/quickstart/demos.zarr"
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # the resolved config reloads as it was


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config field train.lrr; valid: out, steps"),
        ("model.preset=huge", "unknown model preset 'huge'; valid: tiny, small, gr1"),
        ("train.steps=many", "train.steps must be int, got 'many'"),
        ("model.action_head=diffusion", "unknown action_head 'diffusion'; valid: mlp, flow"),
        ("train.steps.x=1", "cannot set train.steps.x: steps is not a section"),
    ],
)
def test_bad_config_values_are_named(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("configs/quickstart.yaml", [override])


def test_cli_train_bad_input_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train", "--set", "train.steps=2", "--set", f"train.out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"vla train: error: no config file {tmp_path / 'missing.yaml'}"
    assert err[1] == "vla train: error: no training stores: set data.stores in the config (a list of {path, weight})"
    assert not (tmp_path / "run").exists()
