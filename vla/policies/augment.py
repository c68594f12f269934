"""Training-time image augmentation: random shifts (DrQ, Kostrikov et al. 2020; diffusion policy's random crop).

A policy cloned from a few hundred demonstrations memorises their exact pixels; shifting each window's frames
by a few pixels makes it read where things are relative to each other (the hand and the block) rather than
where they sit in the frame. One offset per window and camera moves the history and the foreseen frames
together, so the motion between them and the foresight targets stay what the camera saw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vla import keys


def random_shift(frames: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """frames: (B, T, H, W, C), any dtype -> the same shape and dtype, each sample's T frames padded by `pad`
    pixels (edges replicated) and cropped back to H x W at one offset drawn uniformly from [0, 2 * pad]^2."""
    if pad <= 0:
        return frames
    b, t, h, w, c = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).reshape(b, t * c, h, w)  # replicate padding wants (N, C, H, W) floats
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).tolist()
    crops = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    return crops.reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2).to(frames.dtype)


def shift_window(batch: dict, image_keys: list[str], pad: int, generator: torch.Generator | None = None) -> dict:
    """`batch` with each camera's history frames and future frames (`keys.future_key`) shifted together by
    one random offset per sample (`random_shift`); other entries unchanged, `batch` itself not modified."""
    out = dict(batch)
    for key in image_keys:
        if key not in batch:
            continue
        future = keys.future_key(key)
        # Future frames are (B, K, H, W, C), or (B, T, K, H, W, C) with every_step_loss: flattened beside the history.
        parts = [batch[key]] + ([batch[future]] if future in batch else [])
        flat = [p.reshape(p.shape[0], -1, *p.shape[-3:]) for p in parts]
        shifted = random_shift(torch.cat(flat, dim=1), pad, generator).split([f.shape[1] for f in flat], dim=1)
        out[key] = shifted[0].reshape(parts[0].shape)
        if future in batch:
            out[future] = shifted[1].reshape(parts[1].shape)
    return out
