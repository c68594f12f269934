"""The foresight decoders and GR-1's supervision at every timestep of the window, on real Meta-World data."""

import numpy as np
import pytest
import torch

from tests.conftest import fit, tiny_config
from vla import keys
from vla.datasets.sampler import WindowDataset, WindowSpec, collate
from vla.datasets.stats import get_stats
from vla.datasets.store import TrajectoryStore
from vla.model.heads import ResidualDecoder
from vla.policies.vla_policy import VLAPolicy
from vla.viz import psnr

CAMERA = keys.image_key("corner")


def make_policy(store_path, tmp_path, **fields):
    store = TrajectoryStore.open(store_path)
    cfg = tiny_config(store_path, tmp_path / "run")
    cfg.policy.features = {k: s.to_json() for k, s in store.specs.items()}
    for name, value in fields.items():
        setattr(cfg.policy, name, value)
    torch.manual_seed(0)
    return VLAPolicy(cfg.policy, get_stats(store)), store


def batch_of(policy, store, every_step: bool, indices=range(0, 40, 5)) -> dict:
    window = WindowSpec(policy.config.history, policy.config.chunk, tuple(policy.config.foresight_offsets), every_step)
    ds = WindowDataset(store, window)
    return collate([ds[i] for i in indices])


def test_a_decoder_that_predicts_no_change_is_copy_last_exactly():
    torch.manual_seed(0)
    decoder = ResidualDecoder(dim=16, decoder_dim=32, layers=1, image_size=16, patch_size=8, horizons=2)
    current = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    future = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    pred = decoder(torch.randn(3, 2, 16), current, torch.tensor([0, 1, 1]))  # the output layer starts at zero
    assert torch.equal(decoder.to_frames(pred), current)
    keep = torch.ones(3, dtype=torch.bool)
    assert decoder.loss(pred, current, future, keep).item() == pytest.approx(1.0)  # copy-last's own error
    with torch.no_grad():
        decoder.out.bias.fill_(0.01)  # a decoder that changes something is no longer copy-last
    assert not torch.equal(decoder.to_frames(decoder(torch.randn(3, 2, 16), current, torch.tensor([0, 1, 1]))),
                           current)  # fmt: skip


def test_a_fresh_policy_foresees_the_current_frame_at_every_horizon(metaworld_store, tmp_path):
    policy, store = make_policy(metaworld_store, tmp_path, foresight_offsets=[1, 4])
    policy.eval()
    episode = store.episode(0)
    obs = {k: episode[k][0] for k in episode}
    prediction = policy.predict(obs, "reach")
    assert sorted(prediction.foresight) == [1, 4]
    for frames in prediction.foresight.values():
        np.testing.assert_array_equal(frames[CAMERA], obs[CAMERA])
        assert psnr(frames[CAMERA], obs[CAMERA]) == float("inf")


def test_every_step_supervision_learns_each_steps_chunk(metaworld_store, tmp_path):
    policy, store = make_policy(metaworld_store, tmp_path, every_step_loss=True, foresight_offsets=[1, 2])
    batch = batch_of(policy, store, every_step=True)
    assert batch[keys.ACTION].shape[:2] == (8, 3) and batch[keys.future_key(CAMERA)].shape[:3] == (8, 3, 2)
    losses = fit(policy, batch, steps=40, lr=2e-3)
    assert losses[-1]["loss_arm"] < 0.5 * losses[0]["loss_arm"]
    assert {"loss_foresight_1", "loss_foresight_2"} <= set(losses[-1])


def test_every_step_supervision_ignores_padded_steps_and_the_future(metaworld_store, tmp_path):
    policy, store = make_policy(metaworld_store, tmp_path, every_step_loss=True, foresight_offsets=[1, 2])
    policy.eval()
    batch = batch_of(policy, store, every_step=True, indices=[0, 1])  # windows at an episode's start: padded steps
    pad = batch[keys.pad_key(CAMERA)]
    assert pad[0, :2].all() and pad[1, :1].all()

    def loss(b):
        with torch.no_grad():
            torch.manual_seed(0)
            return policy(b)[0]

    before = loss(batch)
    # Targets of padded steps: whatever they hold, the loss is the same.
    changed = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    changed[keys.ACTION][pad] += 5.0
    changed[keys.future_key(CAMERA)][pad] = 255 - changed[keys.future_key(CAMERA)][pad]
    torch.testing.assert_close(loss(changed), before)
    # The last step's observation is read by no earlier step: with its own targets masked, it changes nothing.
    masked = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    masked[keys.pad_key(keys.ACTION)][:, -1] = True
    masked[keys.pad_key(keys.future_key(CAMERA))][:, -1] = True
    later = {k: v.clone() if torch.is_tensor(v) else v for k, v in masked.items()}
    later[CAMERA][:, -1] = 255 - later[CAMERA][:, -1]
    later[keys.OBS_STATE][:, -1] += 1.0
    torch.testing.assert_close(loss(later), loss(masked))
    assert (loss(masked) - before).abs() > 1e-4  # the last step did count when it was supervised
