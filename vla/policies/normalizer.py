"""The affine normalizer that lives inside the policy's weights: fitted from store statistics, exactly invertible.

Raw units stay raw until the policy: state and action are standardised per dimension, images per
channel. The statistics are buffers, so `model.safetensors` carries them and a loaded policy needs
nothing else.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vla import keys

MIN_STD = 1e-3  # a constant dimension (e.g. an unused gripper) must not blow up


def _buffer_name(key: str, stat: str) -> str:
    return f"{key.replace('.', '__')}__{stat}"


class Normalizer(nn.Module):
    def __init__(self, features: dict[str, keys.Spec], stats: dict[str, dict[str, np.ndarray]] | None = None):
        super().__init__()
        self.keys = [k for k in features if k == keys.ACTION or k == keys.OBS_STATE or keys.is_image_key(k)]
        for key in self.keys:
            dim = features[key].shape[-1]
            for stat in ("mean", "std", "min", "max"):
                value = torch.zeros(dim) if stats is None else torch.as_tensor(stats[key][stat], dtype=torch.float32)
                if stat == "std":
                    value = value.clamp(min=MIN_STD) if stats is not None else torch.ones(dim)
                self.register_buffer(_buffer_name(key, stat), value.clone())

    def stat(self, key: str, stat: str) -> torch.Tensor:
        return getattr(self, _buffer_name(key, stat))

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Raw -> standardised, over the last dimension (channels last for images)."""
        return (x.float() - self.stat(key, "mean")) / self.stat(key, "std")

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return x * self.stat(key, "std") + self.stat(key, "mean")

    def normalize_images(self, key: str, frames: torch.Tensor) -> torch.Tensor:
        """(..., H, W, 3) uint8 -> (..., 3, H, W) standardised float."""
        return self.normalize(key, frames).movedim(-1, -3)
