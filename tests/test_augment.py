"""Random-shift augmentation: one offset per window moves history and future frames together; training only."""

import torch

from tests.test_policy import make_policy
from vla import keys
from vla.datasets.sampler import WindowDataset, WindowSpec, collate
from vla.policies.augment import random_shift, shift_window


def coordinates(b: int, t: int, size: int = 12) -> torch.Tensor:
    """(b, t, size, size, 3) uint8 frames whose pixel (y, x) holds (y, x, frame index)."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    frame = torch.stack([y, x, torch.zeros_like(y)], dim=-1)
    frames = frame.expand(b, t, size, size, 3).clone()
    frames[..., 2] = torch.arange(t).view(1, t, 1, 1)
    return frames.to(torch.uint8)


def offsets(shifted: torch.Tensor, pad: int) -> list[tuple[int, int]]:
    """Each sample's (dy, dx) read off the middle pixel of its first frame (the interior is uncut)."""
    mid = shifted.shape[2] // 2
    return [(int(s[0, mid, mid, 0]) - mid, int(s[0, mid, mid, 1]) - mid) for s in shifted]


def test_a_shift_moves_every_frame_of_a_sample_by_one_offset_within_the_pad():
    frames = coordinates(64, 3)
    shifted = random_shift(frames, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == frames.shape and shifted.dtype == torch.uint8
    seen = set(offsets(shifted, 2))
    assert seen <= {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} and len(seen) > 10
    for sample, (dy, dx) in zip(shifted, offsets(shifted, 2)):
        for t in range(3):
            inner = sample[t, 2:-2, 2:-2].long()  # away from the replicated edges
            assert (inner[..., 0] - torch.arange(2, 10).view(-1, 1) == dy).all()
            assert (inner[..., 1] - torch.arange(2, 10).view(1, -1) == dx).all()
            assert (sample[t, ..., 2] == t).all()  # frames keep their order
    assert random_shift(frames, 0) is frames


def test_history_and_future_frames_shift_together_and_nothing_else_changes():
    cam = keys.image_key("corner")
    batch = {cam: coordinates(16, 3), keys.future_key(cam): coordinates(16, 2), keys.OBS_STATE: torch.ones(16, 3, 4)}
    every_step = {**batch, keys.future_key(cam): coordinates(16, 6).view(16, 3, 2, 12, 12, 3)}
    for window in (batch, every_step):
        before = {k: v.clone() for k, v in window.items()}
        out = shift_window(window, [cam], 3, torch.Generator().manual_seed(1))
        future = out[keys.future_key(cam)]
        assert future.shape == window[keys.future_key(cam)].shape
        assert offsets(out[cam], 3) == offsets(future.reshape(16, -1, 12, 12, 3), 3)
        assert offsets(out[cam], 3) != [(0, 0)] * 16
        assert out[keys.OBS_STATE] is window[keys.OBS_STATE]
        assert all(torch.equal(before[k], window[k]) for k in window)  # the batch given is not modified


def test_the_policy_shifts_in_training_only(metaworld_store, tmp_path):
    policy, store = make_policy(metaworld_store, tmp_path, random_shift=4)
    ds = WindowDataset(store, WindowSpec(3, 4, (2,)))
    batch = collate([ds[i] for i in range(0, 64, 8)])
    policy.eval()
    with torch.no_grad():
        evaluated = [policy(batch)[0] for _ in range(2)]
        policy.train()
        trained = [policy(batch)[0] for _ in range(2)]
    assert evaluated[0] == evaluated[1]  # no shift outside training
    assert trained[0] != trained[1] and trained[0] != evaluated[0]  # a fresh shift at every training step
