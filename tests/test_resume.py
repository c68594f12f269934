"""Exact resume: a run stopped after its step-40 checkpoint and resumed to step 60 ends bitwise equal to an
uninterrupted 60-step run (weights, EMA, optimizer, metrics), in the same process and in a new one."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import SPECS, add_synthetic, tiny_config
from vla import checkpoint
from vla.config import StoreConfig, given_keys, load_config, read_tree
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError
from vla.resume import prepare
from vla.train import train
from vla.train_device import numerics

STEPS, STOP = 60, 40


def config(store, out):
    # Dropout draws from the global generator every step, so any draw a resume adds or loses shows.
    cfg = tiny_config(store, out, steps=STEPS, save_every=20, val_every=20)
    cfg.policy.dropout = 0.1
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 60-step run `straight` and a run `stopped` after its step-40 checkpoint, on a store
    of about 17 batches of 8 per epoch (so the runs cross epochs and stop inside one)."""
    tmp = tmp_path_factory.mktemp("resume")
    with TrajectoryStore.create(tmp / "demos.zarr", SPECS, fps=10) as store:
        for i in range(12):
            add_synthetic(store, i, 8 + i)
    train(config(tmp / "demos.zarr", tmp / "straight"), progress=False)
    train(config(tmp / "demos.zarr", tmp / "stopped"), progress=False, stop_at=STOP)
    return tmp


def metrics(run) -> list[dict]:
    """metrics.jsonl without the wall-clock rate."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "samples_per_s"} for line in lines]


def assert_bitwise_equal(run, reference) -> None:
    ema, ema_ref = checkpoint.load_weights(run), checkpoint.load_weights(reference)
    assert ema.keys() == ema_ref.keys()
    for name in ema:
        assert torch.equal(ema[name], ema_ref[name]), name
    state = checkpoint.load_train_state(run / "checkpoint")
    state_ref = checkpoint.load_train_state(reference / "checkpoint")
    assert state["step"] == state_ref["step"] == STEPS
    for name in state["model"]:
        assert torch.equal(state["model"][name], state_ref["model"][name]), name
    for i, moments in state["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, state_ref["optimizer"]["state"][i][name]), (i, name)
    assert metrics(run) == metrics(reference)


def test_resume_in_the_same_process_is_bitwise_exact(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "stopped", run)
    with (run / "metrics.jsonl").open("a") as f:  # a kill after step 43 was logged: those steps come again
        f.writelines(json.dumps({"step": s, "split": "train", "loss": 9.0}) + "\n" for s in (41, 42, 43))
        f.write('{"step": 44, "spl')  # cut short by the kill
    resumed = train(config(runs / "demos.zarr", run), resume=True, progress=False)
    assert len(resumed.losses) == STEPS - STOP
    assert_bitwise_equal(run, runs / "straight")  # metrics included: no duplicate or cut step remains


def test_a_copy_resumed_in_a_new_process_is_exact_and_leaves_the_original(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs / "stopped", copy)
    original = (runs / "stopped" / "metrics.jsonl").read_text()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-m", "vla.cli", "train", "-q", "--resume", "--set", f"train.out={copy}"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"resuming from step {STOP}" in done.stderr
    assert_bitwise_equal(copy, runs / "straight")
    assert checkpoint.load_train_state(runs / "stopped" / "checkpoint")["step"] == STOP  # the original is untouched
    assert (runs / "stopped" / "metrics.jsonl").read_text() == original


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A run of 4 steps stopped after its step-2 checkpoint."""
    tmp = tmp_path_factory.mktemp("short")
    with TrajectoryStore.create(tmp / "demos.zarr", SPECS, fps=10) as store:
        for i in range(4):
            add_synthetic(store, i, 8)
    train(tiny_config(tmp / "demos.zarr", tmp / "run", steps=4), progress=False, stop_at=2)
    return tmp


def test_resume_applies_or_refuses_each_setting_by_name(short_run):
    run = short_run / "run"

    def resume_with(*overrides):
        """`vla train --resume --set train.out=<run> --set ...`, up to the config it would train with."""
        overrides = [*overrides, f"train.out={run}"]
        return prepare(load_config(overrides=overrides), True, given_keys(read_tree(None, overrides)))

    cfg = resume_with("train.steps=80", "train.log_every=5", "train.eval.episodes=3")
    assert (cfg.train.steps, cfg.train.log_every, cfg.train.eval.episodes) == (80, 5, 3)  # applied
    assert cfg.train.lr == 3e-4 and cfg.policy.preset == "tiny"  # the run's own, not the defaults
    for override, key in (("train.lr=0.01", "train.lr"), ("train.batch_size=4", "train.batch_size"),
                          ("policy.preset=small", "policy.preset")):  # fmt: skip
        with pytest.raises(UserError, match=rf"cannot change {key} \(") as refused:
            resume_with(override)
        assert "\n" not in str(refused.value)
    with pytest.raises(UserError) as refused:
        resume_with("train.lr=0.01", "train.batch_size=4")
    assert "train.lr (0.0003 in the run, 0.01 here)" in str(refused.value)  # every refused key is named
    assert "train.batch_size (8 in the run, 4 here)" in str(refused.value)
    # A library call compares every field: the same config resumes as it is.
    assert prepare(tiny_config(short_run / "demos.zarr", run, steps=4), resume=True).train.steps == 4
    shorter = load_config(overrides=["train.steps=1", f"train.out={run}"])
    shorter.data.stores = [StoreConfig(str(short_run / "demos.zarr"))]
    with pytest.raises(UserError, match="at step 2, past train.steps 1"):
        train(shorter, resume=True, progress=False, given=["train.steps", "train.out"])


def test_the_runs_stores_by_another_path_resume_and_other_stores_do_not(short_run, tmp_path):
    run, store = short_run / "run", short_run / "demos.zarr"
    (tmp_path / "link.zarr").symlink_to(store, target_is_directory=True)
    same = tiny_config(tmp_path / "link.zarr", run, steps=4)  # a symlink to the run's own store
    assert prepare(same, resume=True).data.stores[0].path == str(store)  # the run keeps its own path
    shutil.copytree(store, tmp_path / "copy.zarr")  # equal data, but another store
    with pytest.raises(UserError, match=r"cannot change data.stores \("):
        prepare(tiny_config(tmp_path / "copy.zarr", run, steps=4), resume=True)
    other_weight = tiny_config(store, run, steps=4)
    other_weight.data.stores[0].weight = 0.5
    with pytest.raises(UserError, match=r"cannot change data.stores \("):
        prepare(other_weight, resume=True)


def test_what_decides_the_numbers_is_pinned_or_said():
    # MKL's strict reproducible mode, set by importing vla before torch computes: float32 products that do
    # not round with their operands' memory alignment, which differs between a run and its resumption.
    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"
    code = "import os, vla; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert fresh.stdout == "AUTO,STRICT\n"
    kernels, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    assert numerics(torch.device("cpu"), bf16=False) == f"float32 on the CPU, {kernels} kernels, {threads} threads"
