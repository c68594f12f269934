"""Heads on the readout tokens: the action chunk (regression or flow matching) and the foresight decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vla.model.gpt import Block


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the entries where `keep` (broadcastable) is true; 0 when none are."""
    keep = keep.expand_as(values).to(values.dtype)
    return (values * keep).sum() / keep.sum().clamp(min=1.0)


class ActionHead(nn.Module):
    """[ACT] -> a chunk of actions: arm deltas regressed with smooth-L1 and, with `gripper` (a binary one),
    the last dimension classified with BCE; without, every dimension regressed (a continuous gripper too)."""

    def __init__(self, dim: int, chunk: int, action_dim: int, gripper: bool, gripper_weight: float = 0.1):
        super().__init__()
        self.chunk, self.action_dim, self.gripper, self.gripper_weight = chunk, action_dim, gripper, gripper_weight
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, chunk * action_dim))

    def forward(self, act: torch.Tensor) -> torch.Tensor:
        """act: (..., dim) -> (..., chunk, action_dim): normalised arm deltas and, last, the gripper logit."""
        return rearrange(self.net(act), "... (c a) -> ... c a", c=self.chunk)

    def loss(self, act: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, gripper_closed: torch.Tensor):
        """act: (..., dim) [ACT] states; target: (..., chunk, A) normalised; keep: (..., chunk) bool;
        gripper_closed: (..., chunk) bool. Returns (loss, metrics)."""
        pred = self(act)
        if not self.gripper:
            return masked_mean(F.smooth_l1_loss(pred, target, reduction="none"), keep[..., None]), {}
        arm = masked_mean(F.smooth_l1_loss(pred[..., :-1], target[..., :-1], reduction="none"), keep[..., None])
        bce = F.binary_cross_entropy_with_logits(pred[..., -1], gripper_closed.to(pred.dtype), reduction="none")
        grip = masked_mean(bce, keep)
        return arm + self.gripper_weight * grip, {"loss_arm": arm.detach(), "loss_gripper": grip.detach()}

    def sample(self, act: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., chunk, A): normalised arm deltas and the gripper's closing probability."""
        pred = self(act)
        if self.gripper:
            pred = torch.cat([pred[..., :-1], torch.sigmoid(pred[..., -1:])], dim=-1)
        return pred


class FlowHead(nn.Module):
    """Flow matching on the whole normalised chunk, conditioned on [ACT]; integrated at inference with
    diffusers' FlowMatchEulerDiscreteScheduler.

    Training (rectified flow): x_s = s * noise + (1 - s) * action for s ~ U(0, 1); the network predicts
    the velocity noise - action, and x moves from noise (s = 1) to the action (s = 0).
    """

    def __init__(self, dim: int, chunk: int, action_dim: int, steps: int):
        super().__init__()
        self.chunk, self.action_dim, self.steps, self.gripper = chunk, action_dim, steps, False
        flat = chunk * action_dim
        self.time = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.net = nn.Sequential(nn.Linear(flat + dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 2 * dim), nn.SiLU(),
                                 nn.Linear(2 * dim, flat))  # fmt: skip

    def velocity(self, x: torch.Tensor, s: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """x: (N, chunk*A), s: (N, 1) in [0, 1], act: (N, dim)."""
        return self.net(torch.cat([x, act + self.time(s)], dim=-1))

    def loss(self, act: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, gripper_closed: torch.Tensor):
        """act: (..., dim); target: (..., chunk, A) normalised; keep: (..., chunk). The gripper is one more
        dimension of the flow (`gripper_closed` is unused). Returns (loss, metrics)."""
        act, x0 = act.reshape(-1, act.shape[-1]), target.reshape(-1, self.chunk * self.action_dim)
        noise = torch.randn_like(x0)
        s = torch.rand(x0.shape[0], 1, device=x0.device, dtype=x0.dtype)
        xs = s * noise + (1 - s) * x0
        err = (self.velocity(xs, s, act) - (noise - x0)) ** 2
        err = err.reshape(*keep.shape, self.action_dim)
        return masked_mean(err, keep[..., None]), {}

    @torch.no_grad()
    def sample(self, act: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        scheduler.set_timesteps(self.steps, device=act.device)
        lead = act.shape[:-1]
        act = act.reshape(-1, act.shape[-1])
        x = torch.randn(act.shape[0], self.chunk * self.action_dim, generator=generator, device=act.device)
        for t in scheduler.timesteps:
            s = (t / scheduler.config.num_train_timesteps).expand(act.shape[0], 1).to(act.dtype)
            x = scheduler.step(self.velocity(x.to(act.dtype), s, act).float(), t, x).prev_sample
        return x.reshape(*lead, self.chunk, self.action_dim)


class ForesightDecoder(nn.Module):
    """[OBS] readouts of one camera -> the frame `foresight_offset` ahead, MAE-style.

    Mask tokens, one per patch, read the readouts through a few bidirectional blocks and predict each
    patch's pixels normalised by that patch's own mean and std (per channel), plus the mean and std, so
    that a visible frame can be put back together.
    """

    def __init__(self, dim: int, decoder_dim: int, layers: int, image_size: int, patch_size: int,
                 stats_weight: float = 10.0):  # fmt: skip
        super().__init__()
        self.p, self.grid, self.stats_weight = patch_size, image_size // patch_size, stats_weight
        n_patches = self.grid**2
        self.inp = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.pos = nn.Parameter(torch.randn(n_patches, decoder_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(decoder_dim, max(1, decoder_dim // 64)) for _ in range(layers))
        self.ln = nn.LayerNorm(decoder_dim)
        self.out = nn.Linear(decoder_dim, patch_size * patch_size * 3 + 6)

    def forward(self, readouts: torch.Tensor) -> torch.Tensor:
        """readouts: (N, q, dim) -> (N, patches, p*p*3 + 6)."""
        queries = (self.mask_token + self.pos).expand(readouts.shape[0], -1, -1)
        x = torch.cat([self.inp(readouts), queries], dim=1)
        for block in self.blocks:
            x, _ = block(x)
        return self.out(self.ln(x[:, readouts.shape[1] :]))

    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, patches, p*p, 3) in [0, 1]."""
        x = frames.float() / 255.0
        return rearrange(x, "n (gh p1) (gw p2) c -> n (gh gw) (p1 p2) c", p1=self.p, p2=self.p)

    def loss(self, pred: torch.Tensor, frames: torch.Tensor, keep: torch.Tensor):
        """pred: (N, patches, D_out); frames: (N, H, W, 3) uint8 targets; keep: (N,) bool."""
        target = self.patchify(frames)
        mean, std = target.mean(2, keepdim=True), target.std(2, keepdim=True) + 1e-3
        norm_pred, stats_pred = self._split(pred)
        pixel = ((norm_pred - (target - mean) / std) ** 2).mean(dim=(1, 2, 3))
        stats = ((stats_pred - torch.cat([mean, std], dim=2)) ** 2).mean(dim=(1, 2, 3))
        return masked_mean(pixel + self.stats_weight * stats, keep)

    def _split(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = pred[..., :-6].float().unflatten(-1, (self.p * self.p, 3))
        stats = pred[..., -6:].float().unflatten(-1, (2, 3))  # mean, std per channel
        return pixels, stats

    def to_frames(self, pred: torch.Tensor) -> torch.Tensor:
        """(N, patches, D_out) -> (N, H, W, 3) uint8."""
        pixels, stats = self._split(pred)
        x = pixels * stats[:, :, 1:2].clamp(min=1e-3) + stats[:, :, 0:1]
        x = rearrange(x, "n (gh gw) (p1 p2) c -> n (gh p1) (gw p2) c", gh=self.grid, p1=self.p)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)
