"""Pretraining on video and image-text stores made from real Meta-World frames: what each batch kind
touches, captioning, the mixture, `vla pretrain`, `vla caption` and `--init-from`."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import fit, tiny_config
from vla import checkpoint, keys
from vla.checkpoint import load_policy
from vla.cli import main
from vla.config import StoreConfig
from vla.datasets.sampler import WindowDataset, WindowSpec, collate
from vla.datasets.store import TrajectoryStore
from vla.init_from import init_from, module_group
from vla.model.layout import Kind, TokenLayout
from vla.policies.config import PolicyConfig, with_preset
from vla.policies.vla_policy import VLAPolicy
from vla.train import train
from vla.train_data import MixtureOrder, build_data

CAPTIONS = ["a drawer on the table", "a red dot above the table", "the arm near the drawer", "an empty table"]


def _image_keys(store):
    return [k for k in store.specs if keys.is_image_key(k)]


@pytest.fixture(scope="module")
def video_store(metaworld_store, tmp_path_factory):
    """The Meta-World episodes' frames and instructions alone: action-free video."""
    robot = TrajectoryStore.open(metaworld_store)
    path = tmp_path_factory.mktemp("video") / "video.zarr"
    specs = {k: robot.specs[k] for k in _image_keys(robot)}
    with TrajectoryStore.create(path, specs, fps=robot.fps, kind="video") as store:
        for i in range(robot.num_episodes):
            meta = robot.episode_meta(i)
            store.add_episode(robot.episode(i, list(specs)), instruction=meta[keys.INSTRUCTION],
                              task=meta[keys.TASK], success=True, seed=i, source="video")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def caption_store(metaworld_store, tmp_path_factory):
    """Four distinct Meta-World frames, each with its own caption."""
    robot = TrajectoryStore.open(metaworld_store)
    path = tmp_path_factory.mktemp("itext") / "captions.zarr"
    key = _image_keys(robot)[0]
    frames = [robot.episode(0, [key])[key][0], robot.episode(0, [key])[key][-1],
              robot.episode(2, [key])[key][0], robot.episode(2, [key])[key][-1]]  # fmt: skip
    with TrajectoryStore.create(path, {key: robot.specs[key]}, fps=1, kind="image-text") as store:
        for i, (frame, text) in enumerate(zip(frames, CAPTIONS)):
            store.add_episode({key: frame[None]}, instruction=text, task="scene", success=True, seed=i,
                              source="image-text")  # fmt: skip
    return path


def _policy(cfg, *paths):
    cfg.data.stores = [StoreConfig(str(p)) for p in paths]
    _, _, _, features, stats = build_data(cfg)
    cfg.policy.features = features
    torch.manual_seed(0)
    return VLAPolicy(cfg.policy, stats)


def _batch(path, n=4):
    ds = WindowDataset(str(path), WindowSpec(3, 4, (2,)))
    return collate([ds[i] for i in np.linspace(0, len(ds) - 1, n).astype(int)])


def test_text_tokens_are_causal_and_nothing_reads_readouts():
    layout = TokenLayout(["cam"], n_img_tokens=2, n_obs_queries=1)
    kind, _ = layout.tokens(2, "last", n_obs=2, action=False, text=3)  # no [STATE], no [ACT]
    mask = layout.mask(2, "last", n_obs=2, action=False, text=3)
    text = (kind == Kind.TEXT).nonzero().flatten()
    assert mask[text][:, text].equal(torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    assert mask[text][:, kind == Kind.OBS].all()  # the caption reads every image token before it
    assert not mask[kind != Kind.READOUT][:, kind == Kind.READOUT].any()
    assert not mask[kind != Kind.TEXT][:, kind == Kind.TEXT].any()  # only text reads text
    assert (kind == Kind.OBS).sum() == 4 and (kind == Kind.READOUT).sum() == 1  # no [STATE], no [ACT]


def test_video_batch_never_touches_the_action_head(metaworld_store, video_store, tmp_path):
    policy = _policy(tiny_config(metaworld_store, tmp_path), metaworld_store, video_store)
    with torch.no_grad():  # as after a first step: the residual decoder's output starts at zero, passing no gradient
        for decoder in policy.model.foresight.values():
            decoder.out.weight.normal_(std=0.02)
    batch = _batch(video_store)
    assert keys.ACTION not in batch and keys.OBS_STATE not in batch
    loss, metrics = policy(batch)
    loss.backward()
    assert set(metrics) == {"loss_foresight", "loss_foresight_2"}  # the total and its one horizon, 2 steps ahead
    for module in (policy.model.action_head, policy.model.state_encoder, policy.model.text):
        assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is not None for p in policy.model.foresight.parameters())
    assert policy.model.trunk.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)
    loss, metrics = policy(_batch(metaworld_store))  # robot data reaches both
    loss.backward()
    assert {"loss_action", "loss_foresight"} <= set(metrics)
    assert all(p.grad is not None for p in policy.model.action_head.parameters())


def test_a_store_with_fewer_cameras_trains_the_cameras_it_has(metaworld_store, video_store, tmp_path):
    robot = TrajectoryStore.open(metaworld_store)
    path = tmp_path / "two-cameras.zarr"
    mirror = keys.image_key("mirror")  # a second camera: the corner view flipped left-right
    specs = {**robot.specs, mirror: keys.image_spec("mirror", 32)}
    with TrajectoryStore.create(path, specs, fps=robot.fps) as store:
        for i in range(robot.num_episodes):
            episode = robot.episode(i)
            episode[mirror] = episode[keys.image_key("corner")][:, :, ::-1].copy()
            store.add_episode(episode, **robot.episode_meta(i))
    policy = _policy(tiny_config(path, tmp_path), path, video_store)
    assert policy.image_keys == [keys.image_key("corner"), mirror]
    loss, metrics = policy(_batch(video_store))  # the video has the corner camera only
    loss.backward()
    assert all(p.grad is None for p in policy.model.vision["mirror"].parameters())
    assert all(p.grad is not None for p in policy.model.vision["corner"].parameters())
    loss, _ = policy(_batch(path))
    assert torch.isfinite(loss)


def test_captioning_loss_falls_and_the_captions_come_back(metaworld_store, caption_store, tmp_path):
    policy = _policy(tiny_config(metaworld_store, tmp_path), caption_store)
    assert policy.model.action_head is None and policy.model.state_encoder is None  # no robot data: no robot parts
    batch = _batch(caption_store)
    assert batch[keys.CAPTION] == CAPTIONS and batch[_image_keys(TrajectoryStore.open(caption_store))[0]].shape[1] == 1
    losses = [m["loss_text"] for m in fit(policy, batch, steps=300, lr=1e-3)]
    assert losses[-1] < 0.1 * losses[0]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in policy.model.foresight.parameters())
    policy.eval()
    key = policy.image_keys[0]
    generated = [policy.caption(batch[key][i, 0].numpy()) for i in range(len(CAPTIONS))]
    assert sum(g == c for g, c in zip(generated, CAPTIONS)) >= 3, generated


def test_mixture_batches_come_from_one_store_each_by_weight():
    order = MixtureOrder([100, 50, 10], [0.5, 0.3, 0.2], seed=0)
    plan = order(epoch=0, batch_size=8)
    assert len(plan) == 160 // 8
    store_of = np.searchsorted([100, 150, 160], np.concatenate(plan), side="right").reshape(len(plan), 8)
    assert (store_of == store_of[:, :1]).all()  # homogeneous batches
    many = np.concatenate([np.searchsorted([100, 150, 160], b[0], side="right") for b in
                           [x for e in range(50) for x in order(e, 8)]], axis=None)  # fmt: skip
    np.testing.assert_allclose(np.bincount(many, minlength=3) / len(many), [0.5, 0.3, 0.2], atol=0.05)
    assert all(np.array_equal(a, b) for a, b in zip(order(3, 8), order(3, 8)))  # a pure function of the epoch


def test_pretrain_caption_then_finetune_from_it(metaworld_store, video_store, caption_store, tmp_path, capsys,
                                               caplog):  # fmt: skip
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        "policy: {preset: tiny, history: 3, chunk: 4, n_action_steps: 4, foresight_offsets: [2]}\n"
        "data: {stores: "
        f"[{{path: '{video_store}', weight: 2}}, {{path: '{caption_store}', weight: 1}}]}}\n"
        f"train: {{out: '{tmp_path / 'pre'}', steps: 6, batch_size: 4, bf16: false, warmup_steps: 1, log_every: 1}}\n"
    )
    assert main(["pretrain", "--config", str(config), "-q"]) == 0
    logged = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    kinds = {("loss_text" in m, "loss_foresight" in m) for m in logged if m["split"] == "train"}
    assert kinds == {(True, False), (False, True)}  # both kinds of batch, never mixed
    capsys.readouterr()
    assert main(["caption", "--policy", str(tmp_path / "pre"), "--store", str(caption_store), "--episode", "1"]) == 0
    assert f'(stored: "{CAPTIONS[1]}")' in capsys.readouterr().out
    assert "never trained on image-text data" not in caplog.text

    cfg = tiny_config(metaworld_store, tmp_path / "fine", steps=1)
    result = train(cfg, init=str(tmp_path / "pre"), progress=False)
    report = json.loads((tmp_path / "fine" / "init_report.json").read_text())
    assert report["matched"] == result.init_report["matched"]
    fresh = {module_group(k) for k in report["fresh"]}
    assert fresh == {"model.state_encoder", "model.action_head", "normalizer"}  # all else is pretrained
    assert all(k.startswith("normalizer.") for k in report["skipped"])  # statistics come from the new data
    assert "matched only" not in caplog.text
    assert any(k.startswith("model.vision.") for k in report["matched"])
    assert any(k.startswith("model.text.") for k in report["matched"])
    fine = _policy(tiny_config(metaworld_store, tmp_path / "x"), metaworld_store)
    assert init_from(fine, str(tmp_path / "pre")) == result.init_report
    pre, own = load_policy(tmp_path / "pre").state_dict(), fine.state_dict()
    assert all(torch.equal(own[k], pre[k]) for k in report["matched"])


def test_pretrain_refuses_robot_only_stores(metaworld_store, tmp_path, capsys):
    config = tmp_path / "robot.yaml"
    config.write_text(f"data: {{stores: [{{path: '{metaworld_store}'}}]}}\n")
    assert main(["pretrain", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no video or image-text store" in err and err.count("\n") == 1


def test_train_refuses_stores_without_actions(video_store, tmp_path, capsys):
    """A finetune needs actions: `vla train` on video alone would make a policy without an action head."""
    config = tmp_path / "video.yaml"
    config.write_text(f"data: {{stores: [{{path: '{video_store}'}}]}}\ntrain: {{out: '{tmp_path / 'run'}'}}\n")
    assert main(["train", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"vla train: error: no store among {video_store} (video) holds actions; vla train finetunes a policy that "
        "acts: pretrain on video/image-text with vla pretrain, then vla train --init-from on robot data\n"
    )
    assert not (tmp_path / "run").exists()


def test_caption_warns_when_the_text_head_was_never_trained(metaworld_store, caption_store, tmp_path, caplog):
    robot_only = train(tiny_config(metaworld_store, tmp_path / "robot", steps=2), progress=False).out
    assert main(["caption", "--policy", str(robot_only), "--store", str(caption_store)]) == 0
    assert f"{robot_only} was never trained on image-text data: its text head is untrained" in caplog.text


def test_init_from_another_size_warns_how_little_matched(metaworld_store, tmp_path, caplog):
    """A `tiny` run into `small`: a few tensors match by name and shape; the rest start fresh, said loudly."""
    from vla.config import load_config

    tiny = train(tiny_config(metaworld_store, tmp_path / "tiny", steps=1), progress=False).out
    cfg = load_config(overrides=["policy.preset=small", "policy.history=3", "policy.chunk=4", "policy.n_action_steps=4",
                                 "policy.foresight_offsets=[2]", "train.batch_size=4", "train.steps=1",
                                 "train.bf16=false", "train.warmup_steps=1",
                                 f"train.out={tmp_path / 'small'}"])  # fmt: skip
    cfg.data.stores = [StoreConfig(str(metaworld_store))]
    report = train(cfg, init=str(tiny), progress=False).init_report
    matched, total = len(report["matched"]), len(report["matched"]) + len(report["fresh"])
    assert f"--init-from {tiny} matched only {matched} of this model's {total} tensors" in caplog.text


def _tiny(features: dict, **policy) -> VLAPolicy:
    config = PolicyConfig(
        **with_preset(dict(preset="tiny", features=features, history=2, chunk=4, n_action_steps=4, **policy))
    )
    return VLAPolicy(config)


def test_init_from_one_camera_loads_the_slot_rows_of_the_groups_both_layouts_have(tmp_path):
    """Pretraining on image-text data of one camera and no state builds shorter slot tables than a two-camera
    robot policy's: the rows of the groups both have ([ACT], that camera's image tokens and [OBS] queries)
    are loaded by name, the others ([STATE], the other camera) keep their initialisation."""
    image = keys.Spec("uint8", (32, 32, 3), "rgb", "a camera").to_json()
    static, wrist = keys.image_key("static"), keys.image_key("wrist")
    torch.manual_seed(0)
    pre = _tiny({static: image}, grounding_weight=1.0)
    checkpoint.save_policy(pre, tmp_path / "pre")
    vector = keys.Spec("float32", (4,), "", "").to_json()
    torch.manual_seed(1)
    fine = _tiny(
        {static: image, wrist: image, keys.OBS_STATE: vector, keys.ACTION: vector},
        grounding_weight=1.0,
        gripper="continuous",
    )
    before = {k: v.clone() for k, v in fine.state_dict().items()}
    report = init_from(fine, str(tmp_path / "pre"))
    assert {"model.obs_slots", "model.readout_slots"} <= set(report["matched"])
    theirs, ours = pre.model.layout, fine.model.layout
    for table, groups in (("obs_slots", "observation"), ("readout_slots", "readout")):
        their_rows, our_rows = (x.group_slices(getattr(x, groups)) for x in (theirs, ours))
        loaded, was = getattr(fine.model, table), before[f"model.{table}"]
        for name, rows in our_rows.items():
            expected = getattr(pre.model, table)[their_rows[name]] if name in their_rows else was[rows]
            assert torch.equal(loaded[rows], expected), (table, name)
    assert torch.equal(fine.model.grounding.net[1].weight, pre.model.grounding.net[1].weight)
