"""Heads on the readout tokens: the action chunk (regression or flow matching) and the foresight decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vla.model.gpt import Block, ZeroLinear


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
    """[OBS] readouts of one camera at one timestep -> the frame `offset` steps ahead, for each of the
    policy's `foresight_offsets` (K horizons, told apart by a learned embedding when K > 1).

    Two designs share this interface (`forward`, `loss`, `to_frames`), chosen by `policy.foresight_decoder`:

    - `ResidualDecoder` (default): patch tokens of the current frame's pixels and the readouts go through
      a few bidirectional blocks; each patch predicts its change. Whatever does not move is copied for
      free, so the capacity goes to what changes, and a decoder that predicts no change is copy-last.
    - `MAEDecoder`: mask tokens read only the readouts and rebuild the whole frame (GR-1's MAE-style
      decoder), as per-patch-normalised pixels plus each patch's mean and std.
    """

    def __init__(self, dim: int, decoder_dim: int, layers: int, image_size: int, patch_size: int, horizons: int):
        super().__init__()
        self.p, self.grid = patch_size, image_size // patch_size
        n_patches = self.grid**2
        self.inp = nn.Linear(dim, decoder_dim)
        self.pos = nn.Parameter(torch.randn(n_patches, decoder_dim) * 0.02)
        self.horizon = nn.Parameter(torch.randn(horizons, decoder_dim) * 0.02) if horizons > 1 else None
        self.blocks = nn.ModuleList(Block(decoder_dim, max(1, decoder_dim // 64)) for _ in range(layers))
        self.ln = nn.LayerNorm(decoder_dim)

    def _decode(self, readouts: torch.Tensor, queries: torch.Tensor, horizon: torch.Tensor | None) -> torch.Tensor:
        """readouts (N, q, dim), per-patch queries (N, patches, decoder_dim), horizon (N,) indices -> the
        patches' final states (N, patches, decoder_dim)."""
        queries = queries + self.pos
        if self.horizon is not None:
            queries = queries + self.horizon[horizon][:, None]
        x = torch.cat([self.inp(readouts), queries], dim=1)
        for block in self.blocks:
            x, _ = block(x)
        return self.ln(x[:, readouts.shape[1] :])

    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, patches, p*p, 3) in [0, 1]."""
        x = frames.float() / 255.0
        return rearrange(x, "n (gh p1) (gw p2) c -> n (gh gw) (p1 p2) c", p1=self.p, p2=self.p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, patches, p*p, 3) in [0, 1] -> (N, H, W, 3) uint8."""
        x = rearrange(x, "n (gh gw) (p1 p2) c -> n (gh p1) (gw p2) c", gh=self.grid, p1=self.p)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class ResidualDecoder(ForesightDecoder):
    """Predicts the change from the current frame, per patch (see `ForesightDecoder`).

    Its loss is the squared error of the predicted frame relative to copy-last's over the batch,
    sum((pred - future)^2) / sum((current - future)^2): 1 at the start (the output layer starts at zero,
    so the first prediction is the current frame), below 1 when it foresees better than copying.
    """

    def __init__(self, dim: int, decoder_dim: int, layers: int, image_size: int, patch_size: int, horizons: int):
        super().__init__(dim, decoder_dim, layers, image_size, patch_size, horizons)
        self.frame_in = nn.Linear(patch_size * patch_size * 3, decoder_dim)
        self.out = ZeroLinear(decoder_dim, patch_size * patch_size * 3)

    def forward(self, readouts: torch.Tensor, current: torch.Tensor, horizon: torch.Tensor | None = None):
        """readouts: (N, q, dim); current: (N, H, W, 3) uint8; horizon: (N,) horizon indices ->
        the foreseen frames' patches (N, patches, p*p, 3) in [0, 1] units, unclamped."""
        now = self.patchify(current)
        change = self.out(self._decode(readouts, self.frame_in(now.flatten(2).to(readouts.dtype)), horizon))
        return now + change.float().unflatten(-1, (self.p * self.p, 3))

    def loss(self, pred: torch.Tensor, current: torch.Tensor, future: torch.Tensor, keep: torch.Tensor):
        """pred: (N, patches, p*p, 3) from `forward`; current, future: (N, H, W, 3) uint8; keep: (N,) bool."""
        target, now = self.patchify(future), self.patchify(current)
        keep = keep.to(pred.dtype)[:, None, None, None]
        error = (((pred - target) ** 2) * keep).sum()
        copy_last = (((now - target) ** 2) * keep).sum()
        # A batch where nothing moves: its error is judged against one intensity level per value instead.
        floor = keep.sum() * target[0].numel() / 255.0**2
        return error / torch.maximum(copy_last, floor).clamp(min=1e-6)

    def to_frames(self, pred: torch.Tensor) -> torch.Tensor:
        """(N, patches, p*p, 3) -> (N, H, W, 3) uint8."""
        return self.unpatchify(pred)


class MAEDecoder(ForesightDecoder):
    """Rebuilds the whole frame from the readouts alone (see `ForesightDecoder`): mask tokens, one per
    patch, predict each patch's pixels normalised by its own mean and std (per channel), plus that mean
    and std, so that a visible frame can be put back together."""

    def __init__(self, dim: int, decoder_dim: int, layers: int, image_size: int, patch_size: int, horizons: int,
                 stats_weight: float = 10.0):  # fmt: skip
        super().__init__(dim, decoder_dim, layers, image_size, patch_size, horizons)
        self.stats_weight = stats_weight
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.out = nn.Linear(decoder_dim, patch_size * patch_size * 3 + 6)

    def forward(self, readouts: torch.Tensor, current: torch.Tensor | None = None, horizon=None) -> torch.Tensor:
        """readouts: (N, q, dim) -> (N, patches, p*p*3 + 6); the current frame is not read."""
        queries = self.mask_token.expand(readouts.shape[0], self.grid**2, -1)
        return self.out(self._decode(readouts, queries, horizon))

    def loss(self, pred: torch.Tensor, current, future: torch.Tensor, keep: torch.Tensor):
        """pred: (N, patches, D_out); future: (N, H, W, 3) uint8 targets; keep: (N,) bool."""
        target = self.patchify(future)
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
        return self.unpatchify(pixels * stats[:, :, 1:2].clamp(min=1e-3) + stats[:, :, 0:1])
