"""The policy on real Meta-World data: normaliser, learning, checkpoints, exact resume, the CLI."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import fit, tiny_config
from vla import keys
from vla.checkpoint import load_policy, save_policy
from vla.cli import main
from vla.datasets.sampler import WindowDataset, WindowSpec, collate
from vla.datasets.stats import get_stats
from vla.datasets.store import TrajectoryStore
from vla.errors import UserError
from vla.policies.compiled_step import AotStep
from vla.policies.executor import ChunkExecutor
from vla.policies.normalizer import Normalizer
from vla.policies.vla_policy import VLAPolicy
from vla.train import train

VISION_OPTIONS = {
    "plain": {},
    "film": {"vision_film": True},
    "conv-sincos-keypoints": {"vision_stem": "conv", "vision_pos": "sincos", "vision_keypoints": 4},
}


def make_policy(store_path, tmp_path, **policy_fields):
    store = TrajectoryStore.open(store_path)
    cfg = tiny_config(store_path, tmp_path / "run")
    cfg.policy.features = {k: s.to_json() for k, s in store.specs.items()}
    for name, value in policy_fields.items():
        setattr(cfg.policy, name, value)
    torch.manual_seed(0)
    return VLAPolicy(cfg.policy, get_stats(store)), store


def test_normalizer_round_trip(metaworld_store):
    store = TrajectoryStore.open(metaworld_store)
    norm = Normalizer(store.specs, get_stats(store))
    for key in (keys.ACTION, keys.OBS_STATE):
        raw = torch.as_tensor(store.episode(0)[key])
        z = norm.normalize(key, raw)
        assert z.mean(0).abs().max() < 3  # standardised, roughly
        torch.testing.assert_close(norm.unnormalize(key, z), raw, atol=1e-6, rtol=1e-6)
    assert set(norm.state_dict()) >= {"action__mean", "action__std", "observation__state__mean"}


def test_tiny_model_overfits_one_batch(metaworld_store, tmp_path):
    policy, store = make_policy(metaworld_store, tmp_path)
    window = WindowSpec(3, 4, (2,))
    ds = WindowDataset(store, window)
    batch = collate([ds[i] for i in range(0, len(ds), max(1, len(ds) // 8))][:8])
    history = fit(policy, batch, steps=120, lr=2e-3)
    first, metrics = history[0], history[-1]
    assert metrics["loss_arm"] < 0.25 * first["loss_arm"]
    assert first["loss_foresight"] == pytest.approx(1.0)  # the residual decoder starts as copy-last
    assert metrics["loss_foresight"] < 0.85  # and learns to beat it on this batch


@pytest.mark.parametrize("vision", ["plain", "conv-sincos-keypoints"])
def test_save_then_load_gives_the_same_actions(metaworld_store, tmp_path, vision):
    """The fixed sine-cosine positions are rebuilt on loading, not read from the checkpoint."""
    policy, store = make_policy(metaworld_store, tmp_path, **VISION_OPTIONS[vision])
    policy.eval()
    save_policy(policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    episode = store.episode(0)
    executors = [ChunkExecutor(p) for p in (policy, loaded)]
    predicted_at = []
    for t in range(6):
        obs = {k: episode[k][t] for k in episode}
        (a, _), (b, prediction) = (e.act(obs, "reach", t) for e in executors)
        np.testing.assert_array_equal(a, b)
        if prediction is not None:
            predicted_at.append(t)
            assert prediction.actions.shape == (4, 4)
            assert prediction.foresight[2][keys.image_key("corner")].shape == (32, 32, 3)  # 2 steps ahead
    assert predicted_at == [0, 4]  # chunks of 4, each executed whole (n_action_steps 4)


def test_a_loaded_policy_acts_on_known_instructions_without_loading_the_language_model(
    metaworld_store, tmp_path, monkeypatch
):
    """The checkpoint carries the sentence embeddings of the instructions the policy met: acting on one
    of them in a fresh process needs no transformers model (seconds of start-up per eval worker)."""
    from vla.policies import vla_policy

    policy, store = make_policy(metaworld_store, tmp_path)
    policy.eval()
    episode = store.episode(0)
    obs = {k: episode[k][0] for k in episode}
    expected = policy.predict(obs, "reach").actions
    save_policy(policy, tmp_path / "ckpt")
    monkeypatch.setattr(vla_policy, "_sentence_encoders", {})  # as in a new process
    loaded = load_policy(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded.predict(obs, "reach").actions, expected)
    assert loaded.language._model is None  # "reach" came from the checkpoint
    loaded.reset()
    loaded.predict(obs, "an instruction it never met")  # loads the model, as it must
    assert loaded.language._model is not None
    (tmp_path / "ckpt" / "language.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="language.safetensors cannot be read"):
        load_policy(tmp_path / "ckpt")


@pytest.mark.parametrize("vision", VISION_OPTIONS)
def test_streaming_policy_equals_recomputing_policy(metaworld_store, tmp_path, vision):
    """Also across a change of instruction mid-episode: the cache is rebuilt from the history (with FiLM,
    the past frames' tokens are encoded again under the new instruction); and with each vision encoder option."""
    policy, store = make_policy(metaworld_store, tmp_path, **VISION_OPTIONS[vision])
    policy.eval()
    vision_film = VISION_OPTIONS[vision].get("vision_film", False)
    assert all((encoder.film is not None) == vision_film for encoder in policy.model.vision.values())
    for encoder in policy.model.vision.values():
        if encoder.film is not None:  # as if trained: the instruction changes the image tokens
            torch.nn.init.normal_(encoder.film.weight, std=0.5)
    episode = store.episode(1)
    instructions = ["close it"] * 5 + ["a new instruction"] * 3
    readouts = {}  # compared before the action head: an untrained head's actions hardly differ at all
    for streaming in (True, False):
        policy.streaming = streaming
        policy.reset()
        steps = [({k: episode[k][t] for k in episode}, text) for t, text in enumerate(instructions)]
        readouts[streaming] = torch.cat([policy._take(obs, text, readout=True)[0] for obs, text in steps])
    torch.testing.assert_close(readouts[True], readouts[False], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_inference_equals_eager_streaming(metaworld_store, tmp_path):
    """`compile_inference` (on a CPU the streaming step compiled ahead of time by AOTInductor, weights folded in)
    reads out and acts as the eager streaming step does, across the ring buffer's wrap, steps that only observe
    and an instruction change; a recomputing policy is refused in one line."""
    policy, store = make_policy(metaworld_store, tmp_path)
    policy.eval()
    episode = store.episode(1)
    instructions = ["close it"] * 7 + ["a new instruction"] * 2  # history 3: the ring wraps twice
    reads = [t % 3 != 1 for t in range(len(instructions))]  # every third step only observes (between chunks)
    readouts, actions = {}, {}
    for compiled in (False, True):
        if compiled:
            policy.compile_inference()
        policy.reset()
        taken = [policy._take({k: episode[k][t] for k in episode}, text, readout=read)
                 for t, (text, read) in enumerate(zip(instructions, reads))]  # fmt: skip
        assert [h is not None for h in taken] == reads
        readouts[compiled] = torch.cat([h for h, _ in filter(None, taken)])
        actions[compiled] = torch.stack([a for _, a in filter(None, taken)])
    assert isinstance(policy._compiled_step, AotStep) and len(policy._compiled_step._runners) == 1  # one graph
    torch.testing.assert_close(readouts[True], readouts[False], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actions[True], actions[False], atol=1e-4, rtol=1e-4)
    policy.streaming = False
    with pytest.raises(UserError, match="needs a streaming policy"):
        policy.compile_inference()


@pytest.mark.slow
def test_a_step_that_cannot_be_exported_is_compiled_just_in_time(metaworld_store, tmp_path, monkeypatch, caplog):
    """Where torch.export fails (an operator it cannot trace), `compile_inference` says so in one warning and
    the step runs through torch.compile, reading out what the eager step does."""
    policy, store = make_policy(metaworld_store, tmp_path)
    policy.eval()
    episode = store.episode(1)
    steps = [{k: episode[k][t] for k in episode} for t in range(4)]
    policy.reset()
    eager = torch.cat([policy._take(obs, "close it", readout=True)[0] for obs in steps])

    def cannot(*args, **kwargs):
        raise RuntimeError("an operator export cannot trace\nits long explanation")

    monkeypatch.setattr(torch.export, "export", cannot)
    policy.compile_inference()
    policy.reset()
    with caplog.at_level("WARNING", logger="vla.policies.compiled_step"):
        compiled = torch.cat([policy._take(obs, "close it", readout=True)[0] for obs in steps])
    assert [r.getMessage() for r in caplog.records] == [
        "the streaming step cannot be exported (an operator export cannot trace); using torch.compile"
    ]
    assert policy._compiled_step._fallback is not None and not policy._compiled_step._runners
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_resume_reproduces_an_uninterrupted_run(metaworld_store, tmp_path):
    straight = train(tiny_config(metaworld_store, tmp_path / "a", steps=6), progress=False)
    train(tiny_config(metaworld_store, tmp_path / "b", steps=6), progress=False, stop_at=3)  # interrupted
    resumed = train(tiny_config(metaworld_store, tmp_path / "b", steps=6), resume=True, progress=False)
    assert len(resumed.losses) == 3
    np.testing.assert_allclose(resumed.losses, straight.losses[3:], rtol=1e-5)
    with pytest.raises(ValueError, match="already has a checkpoint"):
        train(tiny_config(metaworld_store, tmp_path / "a", steps=6), progress=False)


@pytest.mark.slow  # builds the training pass with Inductor: about a minute on 2 cores
def test_a_compiled_training_pass_trains_as_the_eager_one(metaworld_store, tmp_path):
    """train.compile: the same losses step by step as without it (float32), and a checkpoint that loads."""
    eager = train(tiny_config(metaworld_store, tmp_path / "eager", steps=3), progress=False)
    compiled = train(tiny_config(metaworld_store, tmp_path / "compiled", steps=3, compile=True), progress=False)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    loaded = load_policy(tmp_path / "compiled")
    assert set(loaded.state_dict()) == set(load_policy(tmp_path / "eager").state_dict())


def test_cli_train_then_eval(metaworld_store, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    overrides = ["policy.preset=tiny", "policy.history=2", "policy.chunk=4", "policy.n_action_steps=4",
                 "train.batch_size=4", "train.steps=3",
                 f"train.out={run}", f"data.stores=[{{path: {metaworld_store}}}]", "train.eval.suite=metaworld",
                 "train.eval.tasks=reach-v3", "train.eval.episodes=1", "train.eval.max_steps=5"]  # fmt: skip
    assert main(["train", "-q", *[a for o in overrides for a in ("--set", o)]]) == 0
    assert "trained to step 3" in capsys.readouterr().out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["split"] == "train"][-1] == 3
    assert [m["success"] for m in lines if m["split"] == "eval"] == [0.0]  # the simulator evaluation at the end
    # ... said on the console too, and with no videos recorded no empty videos/ folder is left
    assert f"step 3: simulator success 0.0% (metaworld, reach-v3; 1 episodes per task) in {run}" in caplog.text
    assert (run / "eval" / "step-0000003" / "report.json").exists()
    assert not (run / "eval" / "step-0000003" / "videos").exists()
    out = tmp_path / "eval"
    code = main(["eval", "--policy", str(run), "--suite", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                 "--max-steps", "5", "--videos", "0", "--out", str(out), "-q"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["reach-v3"]["episodes"] == 1
    foresight = report["tasks"]["reach-v3"]["foresight"]  # the foreseen frames, scored when their step came
    assert list(foresight) == ["3"]  # the horizon, in steps
    assert foresight["3"]["ms"] == 37.5 and foresight["3"]["psnr"] > 0 and foresight["3"]["frames"] > 0
    assert {"copy_psnr", "gain_db", "changed_psnr", "copy_changed_psnr", "changed_gain_db"} <= set(foresight["3"])


def test_the_train_bar_draws_at_most_one_frame_per_step(metaworld_store, tmp_path, capsys, monkeypatch):
    """The loss in the bar's postfix is drawn by the step's update, not by a redraw of its own: a log of
    the bar has at most one frame per step (it had two), even when every update is allowed to draw."""
    import vla.train

    bar = vla.train.tqdm
    monkeypatch.setattr(vla.train, "tqdm", lambda *args, **kw: bar(*args, **{**kw, "mininterval": 0}))
    train(tiny_config(metaworld_store, tmp_path / "run", steps=12), progress=True)
    frames = capsys.readouterr().err.count("\r")
    assert 12 <= frames <= 12 + 2  # + the first and the closing frame


@pytest.mark.slow
def test_flow_matching_head_learns_and_samples(metaworld_store, tmp_path):
    store = TrajectoryStore.open(metaworld_store)
    cfg = tiny_config(metaworld_store, tmp_path / "run")
    cfg.policy.action_head = "flow"
    cfg.policy.flow_steps = 4
    cfg.policy.features = {k: s.to_json() for k, s in store.specs.items()}
    torch.manual_seed(0)
    policy = VLAPolicy(cfg.policy, get_stats(store))
    ds = WindowDataset(store, WindowSpec(3, 4, (2,)))
    batch = collate([ds[i] for i in range(0, 64, 8)])
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)

    def sampling_error() -> float:
        """How far chunks integrated from noise land from the batch's own actions (normalised units)."""
        with torch.no_grad():
            lang = policy._lang(batch["instruction"])
            obs = policy._observation_tokens(batch, lang)
            h = policy.model(lang, obs, batch[keys.pad_key(keys.OBS_STATE)], "last")
            act = policy.model.split_readouts(h[:, -1])[1]
            sample = policy.model.action_head.sample(act, torch.Generator().manual_seed(0))
        return float((sample - policy.normalizer.normalize(keys.ACTION, batch[keys.ACTION])).abs().mean())

    before = sampling_error()
    for _ in range(300):
        loss, _ = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sampling_error() < 0.7 * before
    policy.eval()
    episode = store.episode(0)
    action, _ = ChunkExecutor(policy).act({k: episode[k][0] for k in episode}, "reach", 0)
    assert action.shape == (4,) and np.isfinite(action).all()


def test_temporal_ensembling_averages_overlapping_chunks(metaworld_store, tmp_path):
    policy, store = make_policy(metaworld_store, tmp_path)
    policy.eval()
    assert (policy.history, policy.n_action_steps, policy.temporal_ensemble) == (3, 4, 0.0)  # from its config
    with pytest.raises(AttributeError):
        policy.temporal_ensemble = 0.5  # how it is executed is the executor's choice, not a switch on the policy
    executor = ChunkExecutor(policy, temporal_ensemble=0.5)
    episode = store.episode(0)
    chunks, actions = [], []
    for t in range(6):
        action, prediction = executor.act({k: episode[k][t] for k in episode}, "reach", t)
        actions.append(action)
        chunks.append(prediction.actions)
    # At step 5 the chunks predicted at steps 2..5 (chunk length 4) cover it, the oldest first.
    votes = np.stack([chunks[s][5 - s] for s in range(2, 6)])
    weights = np.exp(-0.5 * np.arange(4))
    np.testing.assert_allclose(actions[5], (weights[:, None] * votes).sum(0) / weights.sum(), rtol=1e-5)


def test_init_from_reports_what_it_matched(metaworld_store, tmp_path):
    pretrained = train(tiny_config(metaworld_store, tmp_path / "pre", steps=1), progress=False)
    cfg = tiny_config(metaworld_store, tmp_path / "fine", steps=1)
    cfg.policy.chunk = 6  # a different action chunk: the action head's output layer cannot be reused
    result = train(cfg, init=str(pretrained.out), progress=False)
    report = result.init_report
    assert "model.action_head.net.2.weight" in report["skipped"] and "model.action_head.net.2.weight" in report["fresh"]
    assert "model.trunk.blocks.0.attn.qkv.weight" in report["matched"]
    assert {k for k in report["skipped"] if not k.startswith("normalizer.")} == {
        "model.action_head.net.2.weight", "model.action_head.net.2.bias"}  # fmt: skip
    assert len(report["matched"]) > 40


def test_attention_maps_account_for_all_attention(metaworld_store, tmp_path):
    from vla.viz import attention_maps

    policy, store = make_policy(metaworld_store, tmp_path)
    policy.eval()
    episode = store.episode(0)
    window = [{k: v[t] for k, v in episode.items()} for t in range(3)]
    maps = attention_maps(policy, window, "reach")
    assert set(maps) == {"obs.corner", "act"}
    for m in maps.values():
        total = m["prefix"] + m["state"].sum() + m["images"]["corner"].sum()
        assert total == pytest.approx(1.0, abs=1e-4)  # readouts read only the instruction and observations
        assert m["patches"]["corner"].shape == (3, 4, 4)  # 32x32 frames, 8-pixel patches
        np.testing.assert_allclose(m["patches"]["corner"].sum((1, 2)), m["images"]["corner"], rtol=1e-4)


def test_ema_moves_each_float_by_one_minus_decay_and_copies_the_rest():
    from vla.train import EMA

    module = torch.nn.BatchNorm1d(3)  # float weights and an integer buffer (num_batches_tracked)
    ema = EMA(module, decay=0.9)
    before = {k: v.clone() for k, v in ema.state.items()}
    with torch.no_grad():
        module.weight.fill_(2.0)
        module.num_batches_tracked.fill_(7)
    ema.update(module, step=1000)  # past the warm-up: the decay is 0.9
    torch.testing.assert_close(ema.state["weight"], 0.9 * before["weight"] + 0.1 * 2.0)
    torch.testing.assert_close(ema.state["bias"], before["bias"])  # unchanged weights stay where they were
    assert ema.state["num_batches_tracked"].item() == 7
    ema.update(module, step=0)  # warm-up: decay (1 + 0) / (10 + 0) = 0.1
    torch.testing.assert_close(ema.state["weight"], 0.1 * (0.9 * before["weight"] + 0.2) + 0.9 * 2.0)
