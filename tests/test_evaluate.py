"""`vla eval`: Wilson intervals, expert/zero baselines on Meta-World, workers, latency charging, refusals."""

import json
import time

import imageio.v3 as iio
import numpy as np
import pytest

from vla import keys
from vla.cli import main
from vla.eval_report import BORDER, VIDEO_PANEL, chain_length_interval, wilson_interval
from vla.evaluate import EvalConfig, Setup, prepare, run_episode
from vla.policies.base import Prediction

TASKS = "reach-v3,drawer-close-v3"


def run_eval(out, *extra):
    return main(["eval", "--suite", "metaworld", "-q", "--out", str(out), *extra])


@pytest.mark.parametrize(
    "successes, n, low, high",
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (8, 10, 0.4902, 0.9433), (1, 1, 0.2065, 1)],
)
def test_wilson_interval_known_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory):
    """The expert on two tasks x 2 episodes in-process, and again with 2 workers and no videos."""
    tmp = tmp_path_factory.mktemp("eval")
    assert run_eval(tmp / "one", "--policy", "expert", "--tasks", TASKS, "--episodes", "2", "--videos", "1") == 0
    assert run_eval(tmp / "two", "--policy", "expert", "--tasks", TASKS, "--episodes", "2", "--videos", "0",
                    "--workers", "2") == 0  # fmt: skip
    return tmp


def test_expert_succeeds_and_writes_the_report(expert_run):
    report = json.loads((expert_run / "one" / "report.json").read_text())
    assert set(report["tasks"]) == {"reach-v3", "drawer-close-v3"}
    for stats in report["tasks"].values():
        assert stats["episodes"] == 2 and stats["success_rate"] == 1.0
        assert stats["ci95"] == pytest.approx(list(wilson_interval(2, 2)))
    assert [m["label"] for m in report["means"]] == ["mean over the 2 evaluated tasks"]
    assert report["means"][0]["success_rate"] == 1.0
    assert report["config"]["cameras"] == ["corner"] and report["config"]["image_size"] == 64
    assert report["latency"]["charged"] is False and report["latency"]["steps_charged"] == 0
    assert len(report["episodes"]) == 4
    for e in report["episodes"]:
        assert e["success"] and 0 < e["steps_to_success"] <= e["steps"] == e["steps_to_success"] + 2
        assert e["instruction"] and isinstance(e["seed"], int)
    md = (expert_run / "one" / "report.md").read_text()
    assert "| reach-v3 | 2/2 | 100.0% |" in md and "mean over the 2 evaluated tasks" in md


def test_video_decodes_with_the_expected_frame_size(expert_run):
    report = json.loads((expert_run / "one" / "report.json").read_text())
    with_video = [e for e in report["episodes"] if e["video"]]
    assert [e["index"] for e in with_video] == [0, 0]  # --videos 1: the first episode of each task
    frames = iio.imread(expert_run / "one" / with_video[0]["video"], plugin="pyav")
    side = 64 * (VIDEO_PANEL // 64)
    assert frames.shape == (with_video[0]["steps"] + 1, side + 2 * BORDER, 2 * side + 2 * BORDER, 3)
    assert not (expert_run / "two" / "videos").exists()  # --videos 0: no empty folder either


def test_an_existing_report_is_not_overwritten(expert_run, capsys):
    before = (expert_run / "one" / "report.json").read_text()
    assert run_eval(expert_run / "one", "--policy", "zero", "--tasks", "reach-v3") == 2
    assert "already holds an evaluation report" in capsys.readouterr().err
    assert (expert_run / "one" / "report.json").read_text() == before


def test_workers_give_the_same_episodes(expert_run):
    fields = ("task", "index", "seed", "instruction", "success", "steps", "steps_to_success")
    one, two = (json.loads((expert_run / d / "report.json").read_text())["episodes"] for d in ("one", "two"))
    assert [[e[f] for f in fields] for e in one] == [[e[f] for f in fields] for e in two]


def test_eval_seeds_differ_from_collect_seeds():
    from vla.envs import episode_seed

    plan = prepare(EvalConfig("zero", tasks="reach-v3", out="unused"))
    assert plan.setup.split == "unseen" and plan.tasks == ["reach-v3"] and plan.policy is None
    collected = {episode_seed(0, "metaworld", "train", "reach-v3", i) for i in range(100)}
    assert not collected & {episode_seed(0, "metaworld", "eval/train", "reach-v3", i) for i in range(100)}
    assert not collected & {episode_seed(0, "metaworld", "eval/unseen", "reach-v3", i) for i in range(100)}


def test_zero_policy_never_reaches(tmp_path):
    out = tmp_path / "zero"
    assert run_eval(out, "--policy", "zero", "--tasks", "reach-v3", "--episodes", "3", "--max-steps", "40",
                    "--videos", "0") == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["reach-v3"]["successes"] == 0
    assert all(e["steps"] == 40 and e["steps_to_success"] is None for e in report["episodes"])


def test_no_videos_make_no_videos_folder(tmp_path):
    assert not (tmp_path / "zero" / "videos").exists()
    assert run_eval(tmp_path / "zero", "--policy", "zero", "--tasks", "reach-v3", "--episodes", "1", "--max-steps",
                    "2", "--videos", "0") == 0  # fmt: skip
    assert (tmp_path / "zero" / "report.json").exists() and not (tmp_path / "zero" / "videos").exists()


def _untrained(features: dict, out, **settings):
    """An untrained `tiny` policy reading `features` (vla.keys.Spec), saved to `out`."""
    import torch

    from vla.checkpoint import save_policy
    from vla.policies.config import PolicyConfig, with_preset
    from vla.policies.vla_policy import VLAPolicy

    settings = dict(preset="tiny", history=1, chunk=2, n_action_steps=2, **settings)
    config = PolicyConfig(**with_preset({**settings, "features": {k: s.to_json() for k, s in features.items()}}))
    torch.manual_seed(0)
    save_policy(VLAPolicy(config), out)
    return out


def test_a_checkpoint_is_evaluated_in_its_own_suite_by_default(tmp_path):
    """A tabletop policy given tabletop tasks without --suite is evaluated in tabletop (not "unknown
    metaworld task"): the suite its run evaluated in, else the one that renders its cameras."""
    from vla import envs
    from vla.checkpoint import write
    from vla.config import Config
    from vla.eval_config import default_suite

    env = envs.get_suite("tabletop").make_env("lift-block", image_size=16)
    policy = _untrained(env.unwrapped.feature_specs(), tmp_path / "tabletop")
    env.close()
    out = tmp_path / "eval"
    assert main(["eval", "--policy", str(policy), "--tasks", "lift-block", "--episodes", "1", "--max-steps", "2",
                 "--videos", "0", "-q", "--out", str(out)]) == 0  # fmt: skip
    assert json.loads((out / "report.json").read_text())["config"]["suite"] == "tabletop"
    # The suite the run evaluated in comes first; zero and expert keep Meta-World.
    from vla.checkpoint import load_policy

    loaded = load_policy(policy)
    run = Config()
    run.train.eval.suite, run.policy = "metaworld", loaded.config
    write(tmp_path / "run", run, loaded, loaded.state_dict(), None)
    assert default_suite(str(tmp_path / "run"), loaded.features) == "metaworld"
    assert default_suite(str(policy), loaded.features) == "tabletop"
    assert default_suite(None, None) == "metaworld"


def test_charge_latency_runs_and_records_latency(tmp_path):
    out = tmp_path / "latency"
    assert run_eval(out, "--policy", "zero", "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "30",
                    "--videos", "0", "--charge-latency") == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    lat, (episode,) = report["latency"], report["episodes"]
    assert lat["charged"] and lat["mean_s"] > 0 and lat["steps_charged"] > 0
    # Any non-zero latency costs at least one held step per call here.
    assert episode["inferences"] + episode["steps_charged"] == episode["steps"] == 30


class _CountingEnv:
    """A stand-in env at 10 Hz that records the actions it is stepped with; success at step 5."""

    fps = 10.0

    def __init__(self, success_at: int = 10**9):
        self.applied, self.success_at = [], success_at
        self.action_space = type("Space", (), {"shape": (1,)})()

    @property
    def unwrapped(self):
        return self

    def reset(self, seed=None):
        self.applied = []
        return {keys.OBS_STATE: np.zeros(1, np.float32)}, {keys.TASK: "count", keys.INSTRUCTION: "count up"}

    def step(self, action):
        self.applied.append(float(action[0]))
        info = {keys.SUCCESS: len(self.applied) >= self.success_at}
        return {keys.OBS_STATE: np.zeros(1, np.float32)}, 0.0, False, False, info


class _CountingPolicy:
    """Chunks of one action 1, 2, 3, ...; takes `delay` seconds per prediction (0.15 s: two env steps at 10 Hz)."""

    history, n_action_steps, temporal_ensemble = 1, 1, 0.0

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay = 0, delay

    def reset(self):
        self.calls = 0

    def observe(self, obs, instruction): ...

    def predict(self, obs, instruction):
        time.sleep(self.delay)
        self.calls += 1
        return Prediction(np.array([[self.calls]], np.float32))


def _setup(**kw) -> Setup:
    base = dict(suite="x", split="train", policy_kind="zero", policy_path=None, image_size=64, cameras=(),
                max_steps=8, chain=False, charge_latency=True, steps_after_success=2, video_dir="unused")  # fmt: skip
    return Setup(**{**base, **kw})


def test_latency_holds_the_previous_action():
    env = _CountingEnv()
    result, _ = run_episode(env, _CountingPolicy(delay=0.15), 0, _setup())
    # Each call costs ceil(0.15 s * 10 Hz) = 2 held steps of the previous action (zero before the first).
    assert env.applied == [0, 0, 1, 1, 1, 2, 2, 2]
    assert (result.steps, result.inferences, result.steps_charged) == (8, 3, 6)
    assert result.latency_s >= 0.15


def test_episode_ends_a_few_steps_after_success():
    env = _CountingEnv(success_at=5)
    result, _ = run_episode(env, _CountingPolicy(), 0, _setup(charge_latency=False, max_steps=100))
    assert env.applied == [1, 2, 3, 4, 5, 6, 7]
    assert result.success and result.steps_to_success == 5 and result.steps == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "dmc", "--tasks", "reach-v3"], "unknown suite 'dmc'; valid: metaworld, tabletop"),
        (["--tasks", "fly-v3"], "unknown metaworld task 'fly-v3'; valid: mt10, mt50, ml45-train, ml45-test, all, "),
        (["--tasks", "reach-v3", "--split", "test"], "unknown metaworld split 'test'; valid: train, unseen"),
        (["--tasks", "reach-v3", "--episodes", "0"], "--episodes must be >= 1, got 0"),
        (["--tasks", "reach-v3", "--chain"], "--chain needs a suite with instruction chains; metaworld has none"),
        ([], "--tasks is required"),
        (["--suite", "tabletop", "--chain", "--tasks", "open-drawer"], "leave out --tasks"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert run_eval(out, "--policy", "zero", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("make_files", [(), ("config.yaml",)])
def test_a_directory_that_is_not_a_checkpoint_is_refused(tmp_path, capsys, make_files):
    policy = tmp_path / "ckpt"
    policy.mkdir()
    for name in make_files:
        (policy / name).write_text("")
    assert main(["eval", "--policy", str(policy), "--tasks", "reach-v3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "is neither zero nor expert nor a checkpoint directory (no policy.yaml + model.safetensors" in err
    assert err.count("\n") == 1 and sorted(p.name for p in policy.iterdir()) == sorted(make_files)


def test_chain_reports_calvin_metrics(tmp_path):
    out = tmp_path / "chain"
    assert main(["eval", "--policy", "expert", "--suite", "tabletop", "--chain", "--episodes", "1", "--videos", "0",
                 "-q", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    (episode,), chain = report["episodes"], report["chain"]
    assert list(report["tasks"]) == ["chain"] and report["means"] == []
    n = episode["chain_length"]
    assert chain["avg_chain_length"] == n and chain["chain_size"] == episode["chain_size"] == 5
    assert [p["successes"] for p in chain["success_at_position"]] == [int(n > i) for i in range(5)]
    assert len(episode["instructions"]) == min(n + 1, 5) and len(set(episode["instructions"])) == len(
        episode["instructions"]
    )
    assert n == 5 and episode["success"]  # the scripted expert completes this chain
    assert chain["avg_chain_length_ci95"] == pytest.approx(list(chain_length_interval([5], 5)))
    assert "Average chain length 5.00 of 5 (95% interval 0.84-5.00) over 1 chains" in (out / "report.md").read_text()


def test_chain_length_interval_is_agresti_coull_for_chains_of_one():
    """Chains of one subtask are Bernoulli trials: the interval is Agresti-Coull's, in closed form."""
    z2 = 1.959963984540054**2
    for successes, n in [(0, 10), (3, 10), (10, 10), (17, 40)]:
        p = (successes + z2 / 2) / (n + z2)
        half = 1.959963984540054 * np.sqrt(p * (1 - p) / (n + z2))
        lengths = [1] * successes + [0] * (n - successes)
        assert chain_length_interval(lengths, 1) == pytest.approx((max(0, p - half), min(1, p + half)))


def test_chain_length_interval_is_not_empty_when_every_chain_ends_alike():
    for n in (1, 10, 100):
        for length in (0, 3, 5):
            lo, hi = chain_length_interval([length] * n, 5)
            assert 0 <= lo <= length <= hi <= 5 and hi - lo > 0.1
    assert chain_length_interval([0] * 30, 5)[1] < chain_length_interval([0] * 10, 5)[1]  # narrows with chains


@pytest.mark.parametrize("n", [30, 100])
@pytest.mark.parametrize("probs", [[0.35, 0.25, 0.15, 0.1, 0.1, 0.05], [0.8, 0.12, 0.05, 0.02, 0.01, 0.0]])
def test_chain_length_interval_covers_the_true_average_about_95_percent_of_the_time(n, probs):
    """Simulated chain lengths 0..5 (a middling and a weak policy): the interval holds the true average in
    94-98% of 2,000 draws (a t-interval: 91-94% at 30 chains)."""
    rng = np.random.default_rng(0)
    truth = float(np.dot(probs, np.arange(6)))
    intervals = [chain_length_interval(rng.choice(6, size=n, p=probs).tolist(), 5) for _ in range(2000)]
    covered = np.mean([lo <= truth <= hi for lo, hi in intervals])
    assert 0.94 <= covered <= 0.98


def test_chain_length_interval_refuses_lengths_outside_the_chain():
    with pytest.raises(ValueError):
        chain_length_interval([6], 5)
    with pytest.raises(ValueError):
        chain_length_interval([], 5)


def test_a_baseline_without_videos_renders_nothing_and_plays_the_same_episodes(tmp_path):
    """The expert and zero policies read no image: with no video to record their envs render nothing
    (most of a CPU step's time), and every episode is the one the rendering env plays."""
    from vla.evaluate import Setup, Worker, _unseeing

    episodes = {}
    for videos in ("1", "0"):
        out = tmp_path / f"videos{videos}"
        assert run_eval(out, "--policy", "expert", "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "60",
                        "--videos", videos) == 0  # fmt: skip
        episodes[videos] = [{k: e[k] for k in ("seed", "success", "steps", "steps_to_success")}
                            for e in json.loads((out / "report.json").read_text())["episodes"]]  # fmt: skip
    assert episodes["0"] == episodes["1"]
    setup = Setup("metaworld", "unseen", "zero", None, 32, ("corner",), 10, False, False, 0, video_dir="")
    worker = Worker(_unseeing(setup))
    worker._switch("reach-v3")
    assert worker.env.unwrapped.cameras == () and worker.env.unwrapped._renderer is None
    worker.close()


def test_baseline_runs_on_the_same_seeds_and_is_printed_beside(tmp_path, capsys):
    out = tmp_path / "with-baseline"
    assert run_eval(out, "--policy", "expert", "--tasks", "drawer-close-v3", "--episodes", "2", "--videos", "0",
                    "--baseline", "zero", "--max-steps", "150") == 0  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["drawer-close-v3"]["success_rate"] == 1.0
    assert report["baseline"]["policy"] == "zero"
    assert report["baseline"]["tasks"]["drawer-close-v3"]["success_rate"] == 0.0
    assert "Beside the zero policy on the same seeds" in printed and "| drawer-close-v3 | 100.0% | 0.0% |" in printed


def test_demonstration_scenes_replay_the_runs_training_episodes_only(tmp_path, metaworld_store):
    """--scenes demonstrations rolls out the seeds of the episodes the run trained on: the store's, less
    those `vla train` held out (val_fraction 0.5 of 2 episodes per task: one each)."""
    from vla.checkpoint import load_policy, write
    from vla.config import Config, StoreConfig
    from vla.datasets.sampler import split_episodes
    from vla.datasets.store import TrajectoryStore

    store = TrajectoryStore.open(metaworld_store)
    loaded = load_policy(_untrained(store.specs, tmp_path / "policy"))
    run = Config()
    run.policy, run.data.stores, run.data.val_fraction = loaded.config, [StoreConfig(str(metaworld_store))], 0.5
    write(tmp_path / "run", run, loaded, loaded.state_dict(), None)
    tasks, seeds = store.meta(keys.TASK), store.meta(keys.SEED)
    train, val = split_episodes(tasks, 0.5, run.train.seed)
    out = tmp_path / "eval"
    assert run_eval(out, "--policy", str(tmp_path / "run"), "--tasks", TASKS, "--scenes", "demonstrations",
                    "--episodes", "5", "--max-steps", "2", "--videos", "0") == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert sorted(e["seed"] for e in report["episodes"]) == sorted(int(seeds[i]) for i in train)
    assert not {e["seed"] for e in report["episodes"]} & {int(seeds[i]) for i in val}
    assert report["config"]["scene_source"] == "demonstrations" and report["config"]["split"] == "train"
    # Fresh scenes (the default) never replay a collected one.
    fresh = tmp_path / "fresh"
    assert run_eval(fresh, "--policy", str(tmp_path / "run"), "--tasks", TASKS, "--episodes", "1", "--max-steps",
                    "2", "--videos", "0") == 0  # fmt: skip
    assert not {e["seed"] for e in json.loads((fresh / "report.json").read_text())["episodes"]} & set(seeds.tolist())


@pytest.mark.parametrize("extra, message", [
    (["--policy", "zero", "--tasks", "reach-v3"], "needs a checkpoint --policy"),
    (["--policy", "zero", "--suite", "tabletop", "--chain"], "needs a checkpoint --policy"),
])  # fmt: skip
def test_demonstration_scenes_refuse_what_has_no_training_episodes(tmp_path, capsys, extra, message):
    out = tmp_path / "refused"
    assert main(["eval", "-q", "--out", str(out), "--scenes", "demonstrations", *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()
