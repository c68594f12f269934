"""The benchmark scripts as a user meets them: --help describes each in whole sentences; no codec noise."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from vla import keys
from vla.datasets.sampler import WindowSpec, make_datasets
from vla.datasets.store import TrajectoryStore

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")


def test_every_bench_help_describes_the_script_in_whole_sentences():
    runs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], stdout=subprocess.PIPE, text=True)
            for p in SCRIPTS}  # fmt: skip
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, name
        description = " ".join(out.split("\n\n")[1].split())  # after the usage lines
        assert description.endswith((".", "?", ")")) and not description.endswith(("the", "a", ",")), (name, out)


def test_the_av1_export_prints_no_encoder_banner(tmp_path, capfd):
    """bench/data_loading.py encodes AV1 with SVT-AV1, which printed ~20 Svt[info] lines per episode."""
    spec = importlib.util.spec_from_file_location("data_loading", BENCH / "data_loading.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    camera = keys.image_key("corner")
    with TrajectoryStore.create(tmp_path / "s.zarr", {camera: keys.image_spec("corner", 64)}, fps=10) as store:
        frames = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
        store.add_episode({camera: frames}, instruction="x", task="t", success=True, seed=0, source="expert")
    capfd.readouterr()
    mp4_dir, _ = bench.export_files(TrajectoryStore.open(tmp_path / "s.zarr"), camera, tmp_path)
    assert (mp4_dir / "0.mp4").stat().st_size > 0
    assert "Svt[info]" not in capfd.readouterr().err


def test_the_tabletop_bench_refuses_bad_flags_in_one_line_before_writing_anything(tmp_path):
    out = tmp_path / "bench"
    cases = {
        ("--variants", "robot,foo"): "tabletop.py: unknown variant 'foo'; valid: robot, image-text, video\n",
        ("--train-seeds", "0,x"): "tabletop.py: --train-seeds '0,x' must be comma-separated whole numbers, e.g. 0,1\n",
        ("--image-text-weight", "1"): "tabletop.py: --image-text-weight must be in (0.0, 0.99], got 1.0\n",
        ("--variants", "robot,video"): "tabletop.py: the video variant needs --init-from DIR, a video-pretrained run "
        "(vla pretrain)\n",
        ("--set", "policy.preset=huge"): "tabletop.py: unknown policy.preset 'huge'; valid: tiny, small, gr1\n",
        ("--steps", "many"): "tabletop.py: argument --steps: invalid int value: 'many'\n",
    }
    _assert_refused("tabletop.py", cases, out)


def test_the_transfer_bench_refuses_bad_flags_in_one_line_before_writing_anything(tmp_path):
    out = tmp_path / "bench"
    cases = {
        ("--settings", "seen,foo"): "pretrain_transfer.py: unknown setting 'foo'; valid: seen, unseen\n",
        ("--seen-tasks", "reach-v3,bin-picking-v3"): "pretrain_transfer.py: --seen-tasks bin-picking-v3 not in "
        "--video-tasks ml45-train\n",
        ("--unseen-tasks", "door-lock-v3,reach-v3"): "pretrain_transfer.py: --unseen-tasks reach-v3 in --video-tasks "
        "ml45-train\n",
        ("--train-seeds", "0,x"): "pretrain_transfer.py: --train-seeds '0,x' must be comma-separated whole numbers, "
        "e.g. 0,1\n",
        ("--init-from", str(tmp_path)): f"pretrain_transfer.py: --init-from {tmp_path} is not a run directory with a "
        "checkpoint/\n",
        ("--episodes", "0"): "pretrain_transfer.py: --episodes must be >= 1, got 0\n",
    }
    _assert_refused("pretrain_transfer.py", cases, out)


def _assert_refused(script: str, cases: dict, out) -> None:
    """Each case's flags (run at once, in parallel) exit 2 with exactly its one line on stderr, and nothing
    is written under --out."""
    runs = {flags: subprocess.Popen([sys.executable, str(BENCH / script), *flags, "--out", str(out)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BENCH.parent)
            for flags in cases}  # fmt: skip
    for flags, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert (proc.returncode, stdout, stderr) == (2, "", cases[flags]), flags
    assert not out.exists()


def test_language_reliance_changes_only_the_instruction(metaworld_store, tmp_path, monkeypatch, capsys):
    """With the instruction cut off (its projection zeroed, no FiLM) every substitute scores the own
    instruction's loss exactly; with it, another task's instruction changes the loss."""
    import torch

    from tests.conftest import tiny_config
    from vla import checkpoint
    from vla.train import train

    cfg = tiny_config(metaworld_store, tmp_path / "run", steps=1)
    cfg.data.val_fraction = 0.5  # one of each task's two episodes
    run = train(cfg, progress=False).out
    spec = importlib.util.spec_from_file_location("language_reliance", BENCH / "language_reliance.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(BENCH))
    spec.loader.exec_module(bench)
    loaded = checkpoint.load_policy

    def deaf(*args, **kw):
        policy = loaded(*args, **kw)
        with torch.no_grad():
            policy.model.lang_proj.weight.zero_()
            policy.model.lang_proj.bias.zero_()
        return policy

    heard = bench.main(["--policy", str(run), "--windows", "8", "--device", "cpu"])
    monkeypatch.setattr(bench.checkpoint, "load_policy", deaf)
    cut = bench.main(["--policy", str(run), "--windows", "8", "--device", "cpu"])
    assert set(cut["loss"]) == {"reach-v3", "drawer-close-v3"}
    for losses in cut["loss"].values():
        assert losses["own"] == losses["same-task"] == losses["other-task"] == losses["empty"]
    for losses in heard["loss"].values():
        assert losses["own"] != losses["other-task"]
    assert capsys.readouterr().out.splitlines()[-1].startswith('{"policy"')
    early = bench.main(["--policy", str(run), "--windows", "8", "--device", "cpu", "--first-steps", "3"])
    assert early["first_steps"] == 3 and set(early["loss"]) == set(heard["loss"])
    _, val = make_datasets(cfg.data.stores[0].path, WindowSpec.of(cfg.policy), 0.5, cfg.train.seed)
    rng = np.random.default_rng(0)
    for first_steps, most in ((3, 3), (0, 10**6)):
        chosen = bench.windows_of(val, "reach-v3", 100, first_steps, rng)
        steps = val.anchor_step[chosen] - val.store.episode_starts[val.anchor_episode[chosen]]
        assert len(chosen) and steps.max() < most and set(val.tasks[val.anchor_episode[chosen]]) == {"reach-v3"}
    assert len(bench.windows_of(val, "reach-v3", 100, 3, rng)) == 3  # one validation episode of the task


def _bench_module(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setitem(sys.modules, name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_target_reach_counts_the_named_block_and_a_wrong_one_reached_first(monkeypatch):
    bench = _bench_module("target_reach", monkeypatch)
    Reach = bench.Reach
    episodes = [
        Reach(0.01, 0.005, first_reach=30, first_wrong=60, others=2, success=True),  # to it, past another after
        Reach(0.02, 0.01, first_reach=50, first_wrong=20, others=1),  # another block first, then the named one
        Reach(0.08, 0.06, first_reach=None, first_wrong=40, others=1),  # only another block
        Reach(0.12, 0.10, first_reach=None, first_wrong=None, others=0),  # nowhere; no other block to confuse
    ]
    row = bench.summarize(episodes)
    assert row["reached"] == 0.5 and row["success"] == 0.25 and row["episodes"] == 4
    assert row["with_other_blocks"] == 3 and row["wrong_block"] == 2 / 3
    assert abs(row["closest_xy_cm"] - 3.5) < 1e-9  # median of 0.5, 1, 6 and 10 cm


def test_target_reach_the_expert_reaches_the_named_block_and_the_zero_policy_does_not(monkeypatch):
    from types import SimpleNamespace

    from vla import envs

    bench = _bench_module("target_reach", monkeypatch)
    args = SimpleNamespace(split="train", max_steps=150, episodes=1, seed=0, radius=0.03)
    suite = envs.get_suite("tabletop")
    (expert,) = bench._episodes("expert", None, suite, "lift-block", args)
    (zero,) = bench._episodes("zero", None, suite, "lift-block", args)
    assert expert.first_reach is not None and expert.closest < 0.01 and expert.success
    assert zero.first_reach is None and not zero.success and zero.closest_xy > 0.03
    (pusher,) = bench._episodes("expert", None, suite, "push-block-to-pad", args)
    assert pusher.first_reach is not None and pusher.success  # it pushes from 4 cm behind the block


def test_block_probe_scenes_name_the_instructed_block_and_the_random_block_baseline(monkeypatch):
    """Each probe scene's target is the named block's offset from the grip point, one of the scene's blocks;
    guessing among the blocks scores the expected distance and share within 3 cm."""
    from vla import envs

    bench = _bench_module("block_probe", monkeypatch)
    data = bench.scenes(envs.get_suite("tabletop"), ["lift-block", "stack-blocks"], "train", 3, 0, "test")
    assert data["images"].shape == (6, 2, 64, 64, 3) and data["target"].shape == (6, 2)
    for target, blocks, text in zip(data["target"], data["blocks"], data["instruction"]):
        assert min(np.linalg.norm(np.asarray(blocks) - target, axis=1)) < 1e-6 and text
    assert all(len(blocks) >= 2 for blocks in data["blocks"][3:])  # stack-blocks: a top and a base block
    made = {"target": np.zeros((2, 2)), "blocks": [[np.zeros(2)], [np.zeros(2), np.array([0.1, 0.0])]]}
    row = bench.random_block(made)
    assert abs(row["error_cm"] - 2.5) < 1e-9  # median of 0 (one block) and 5 cm (one of two, 10 cm apart)
    assert row["within_3cm"] == 0.75  # 1 and 1/2


def test_block_probe_trains_and_reports_beside_its_baselines(tmp_path):
    """A few steps of the tiny preset end to end: the table and a JSON line with every split and predictor;
    a task that names no block is refused in one line."""
    import json

    run = [sys.executable, str(BENCH / "block_probe.py"), "--preset", "tiny", "--scenes", "4", "--eval-scenes", "2",
           "--steps", "2", "--batch", "4", "--tasks", "lift-block,place-in-bowl"]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["results"]) == {"fit", "train", "unseen"} and result["scenes"] == 8
    for row in result["results"].values():
        assert {"probe", "mean_offset", "random_block"} <= set(row) and row["probe"]["error_cm"] > 0
    bad = subprocess.run([*run[:2], "--tasks", "open-drawer"], capture_output=True, text=True, timeout=300)
    assert (bad.returncode, bad.stdout) == (2, "") and bad.stderr == (
        "block_probe.py: unknown block task 'open-drawer'; valid: lift-block, place-in-bowl, place-on-pad, "
        "push-block-to-pad, stack-blocks, slide-block-left, slide-block-right\n"
    )


def test_policy_probe_readers_recover_what_the_features_hold(monkeypatch):
    """The ridge reader recovers a linear target from held-out rows; a target that picks one of two positions by
    a flag (the named block among several) is beyond it, and the MLP reader recovers it."""
    bench = _bench_module("policy_probe", monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 6))
    linear = x[:, :2] @ np.array([[0.05, -0.02], [0.01, 0.04]])
    chosen = 0.05 * np.where(x[:, 4:5] > 0, x[:, :2], x[:, 2:4])
    fit, held = slice(0, 1000), slice(1000, None)
    ridge = bench.fit_ridge(x[fit], linear[fit], 0)
    assert np.median(bench.errors(ridge(x[held]), linear[held])) < 1e-3
    ridge_err = np.median(bench.errors(bench.fit_ridge(x[fit], chosen[fit], 0)(x[held]), chosen[held]))
    mlp_err = np.median(bench.errors(bench.fit_mlp(x[fit], chosen[fit], 0)(x[held]), chosen[held]))
    assert mlp_err < 0.5 * ridge_err, (mlp_err, ridge_err)


def test_policy_probe_reads_a_trained_tabletop_policy_and_refuses_others(tmp_path, metaworld_store):
    """Collect one tabletop episode, train `tiny` 2 steps, probe it end to end: every split has the trained and
    untrained readers and both baselines. A Meta-World policy (no tabletop cameras) is refused in one line."""
    import json

    from conftest import tiny_config

    from vla.cli import main
    from vla.train import train

    store = tmp_path / "tt.zarr"
    assert main(["collect", "--suite", "tabletop", "--tasks", "lift-block", "--episodes-per-task", "1",
                 "--out", str(store)]) == 0  # fmt: skip
    for name, data in (("tt", store), ("mw", metaworld_store)):
        train(tiny_config(data, tmp_path / name, steps=2), progress=False)
    run = [sys.executable, str(BENCH / "policy_probe.py"), "--policy", str(tmp_path / "tt"), "--scenes", "6",
           "--eval-scenes", "2", "--tasks", "lift-block,stack-blocks"]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["results"]) == {"train", "unseen"} and result["scenes"] == 12
    for row in result["results"].values():
        assert {"act_ridge", "tokens_mlp", "untrained_act_mlp", "mean_offset", "random_block"} <= set(row)
        assert all(r["error_cm"] > 0 for r in row.values())
    bad = subprocess.run([*run[:2], "--policy", str(tmp_path / "mw")], capture_output=True, text=True, timeout=300)
    assert (bad.returncode, bad.stdout) == (2, "") and bad.stderr == (
        f"policy_probe.py: {tmp_path / 'mw'} is not a tabletop policy: it has no observation.images.static, "
        "observation.images.wrist\n"
    )
