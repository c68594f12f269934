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
        ("policy.n_action_steps=9", "policy.n_action_steps must be <= policy.chunk (8), got 9"),
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


def test_every_preset_patches_the_image_sizes_a_store_may_have():
    """`vla collect` and `vla data import-*` refuse image sizes that are not a multiple of keys.PATCH_SIZE."""
    from vla import keys

    assert {preset["patch_size"] for preset in PRESETS.values()} == {keys.PATCH_SIZE}


@pytest.mark.parametrize(
    "text, message",
    [
        ("a sentence, not sections\n", "must hold a mapping (key: value lines), got 'a sentence, not sections'"),
        ("- policy\n- train\n", "must hold a mapping (key: value lines), got ['policy', 'train']"),
        ("train: {steps: 5\n", "is not valid YAML: "),
        ("train:\n  steps: 5\n   lr: 1\n", "is not valid YAML: mapping values are not allowed here at line 3"),
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_line(text, message, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--set", f"train.out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vla train: error: {config} ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_an_override_that_is_not_yaml_is_one_line(capsys):
    assert main(["train", "--set", "train.steps=[1,"]) == 2
    assert capsys.readouterr().err.startswith("vla train: error: override 'train.steps=[1,' is not valid YAML: ")


def _cli_train(store, out, *overrides) -> list[str]:
    settings = ["policy.preset=tiny", "policy.history=2", "policy.chunk=4", "policy.n_action_steps=4",
                "train.batch_size=4", "train.steps=1", "train.bf16=false", f"data.stores=[{{path: '{store}'}}]",
                f"train.out={out}", *overrides]  # fmt: skip
    return ["train", "-q", *[a for s in settings for a in ("--set", s)]]


def _no_cuda_here() -> str:
    import torch

    return f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: none on a CPU-only machine


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.device={cuda}", "train.device '{cuda}': this machine has "),
        ("train.device=gpu", "train.device 'gpu' is not a torch device; valid: auto, cpu, cuda, cuda:<index>"),
        ("train.batch_size=100000", "training windows are fewer than one batch of 100000"),
        ("train.eval.suite=mujoco", "unknown train.eval.suite 'mujoco'; valid: '' (none), metaworld, tabletop"),
        (
            "train.eval.suite=metaworld",
            "train.eval.tasks is empty; valid: mt10, mt50, ml45-train, ml45-test, all or metaworld tasks",
        ),
        ("train.eval.tasks=reach-v3", "train.eval.tasks 'reach-v3' needs train.eval.suite"),
        ("policy.patch_size=7", "image size 32 is not a multiple of the patch size 7"),
        ("policy.n_action_steps=5", "policy.n_action_steps must be <= policy.chunk (4), got 5"),
        ("policy.language_model=/nowhere", "language_model '/nowhere': no transformers model directory"),
    ],
)
def test_cli_train_bad_values_are_one_line_and_leave_no_run(override, message, metaworld_store, tmp_path, capsys):
    cuda = _no_cuda_here()
    assert main(_cli_train(metaworld_store, tmp_path / "run", override.format(cuda=cuda))) == 2
    err = capsys.readouterr().err
    assert err.startswith("vla train: error: ") and message.format(cuda=cuda) in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_cuda_on_a_machine_without_it_is_one_line(metaworld_store, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(_cli_train(metaworld_store, tmp_path / "run", "train.device=cuda")) == 2
    err = capsys.readouterr().err
    assert err == "vla train: error: train.device 'cuda': this machine has 0 CUDA devices; valid: auto, cpu\n"
    assert not (tmp_path / "run").exists()


def test_train_out_naming_a_file_is_one_line(metaworld_store, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "run"):
        assert main(_cli_train(metaworld_store, out)) == 2
        err = capsys.readouterr().err
        assert (
            err
            == f"vla train: error: train.out {out}: {tmp_path / 'notes.txt'} is a file; set train.out to a directory\n"
        )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_train_prints_a_run_summary(metaworld_store, tmp_path, capsys, caplog):
    """At INFO level, which vla train shows without -v: data, steps, parameters, device; then the result line."""
    assert main(_cli_train(metaworld_store, tmp_path / "run")) == 0
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")]
    assert "1 store (4 episodes, " in summary and "1 steps of batch 4" in summary
    assert "tiny policy, 0.3 M parameters; cpu (float32)" in summary
    assert "trained to step 1" in capsys.readouterr().out


@pytest.mark.parametrize("amx, avx512_bf16, wanted, used", [
    (True, False, True, True),  # native bf16: autocast as asked
    (False, True, True, True),
    (False, False, True, False),  # emulated bf16 is slower than fp32: train in fp32, with a warning
    (True, True, False, False),  # not asked for
])  # fmt: skip
def test_bf16_autocast_only_where_the_cpu_has_it(monkeypatch, caplog, amx, avx512_bf16, wanted, used):
    import torch

    from vla.train_device import use_bf16

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    cfg = load_config(overrides=[f"train.bf16={str(wanted).lower()}"])
    assert use_bf16(cfg, torch.device("cpu")) is used
    assert ("no native bfloat16" in caplog.text) == (wanted and not used)
