"""The GR-1 style network: encoders, the interleaved token sequence, the trunk and the heads.

It works on normalised tensors only; `vla.policies.VLAPolicy` normalises raw observations, computes
losses from batches and runs inference. Two ways to run the trunk give the same readouts:

- `forward` over a whole window (training, and full recomputation at inference);
- `start_stream` + `stream_step`: one new timestep per call, earlier timesteps' keys/values cached.

Data without robot state or actions (video, image-text) runs through the same network: its sequences
simply leave out the [STATE] and [ACT] tokens, and `text_states` adds caption tokens after an image.
A model built without `state_dim`/`action_dim` (pretraining on such data alone) has no state encoder
and no action head; finetuning adds them fresh (`vla train --init-from`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from vla.model.encoders import StateEncoder, VisionEncoder
from vla.model.gpt import KV, Trunk
from vla.model.heads import ActionHead, FlowHead, MAEDecoder, ResidualDecoder, ZeroLinear
from vla.model.layout import Kind, TokenLayout
from vla.model.text import ContrastiveHead, TextHead
from vla.policies.config import PolicyConfig


@dataclass
class StreamCache:
    """Keys/values of the prefix and of the last `history` timesteps' observation tokens, per layer."""

    prefix: list[KV]
    steps: deque = field(default_factory=deque)  # (timestep, list[KV]) oldest first
    next_step: int = 0


class GR1(nn.Module):
    def __init__(
        self,
        cfg: PolicyConfig,
        cameras: list[str],
        image_size: int,
        state_dim: int | None,
        action_dim: int | None,
        history: int,
        chunk: int,
        lang_dim: int = 384,
        vocab: torch.Tensor | None = None,
    ):
        """state_dim/action_dim None: no state encoder/action head; vocab: the language model's input
        embeddings (V, E) for the text head (None: no text head)."""
        super().__init__()
        self.cfg, self.cameras, self.history = cfg, list(cameras), history
        d = cfg.d_model
        self.layout = TokenLayout(self.cameras, cfg.n_img_tokens, cfg.n_obs_queries)
        self.vision = nn.ModuleDict(
            {
                c: VisionEncoder(image_size, cfg.patch_size, cfg.vit_dim, cfg.vit_layers, d, cfg.n_img_tokens)
                for c in self.cameras
            }  # fmt: skip
        )
        self.state_encoder = StateEncoder(state_dim, d) if state_dim else None
        self.lang_proj = nn.Linear(lang_dim, d)
        # What a token is within its timestep: added to observation tokens, and all a readout starts from.
        self.obs_slots = nn.Parameter(torch.randn(self.layout.n_obs, d) * 0.02)
        self.readout_slots = nn.Parameter(torch.randn(self.layout.n_readout, d) * 0.02)
        self.trunk = Trunk(d, cfg.n_layer, cfg.n_head, history, cfg.dropout)
        self.action_head = None
        if action_dim and cfg.action_head == "flow":
            self.action_head = FlowHead(d, chunk, action_dim, cfg.flow_steps)
        elif action_dim:
            self.action_head = ActionHead(d, chunk, action_dim, cfg.gripper == "binary", cfg.gripper_weight)
        self.foresight = nn.ModuleDict({c: self._decoder(cfg, image_size) for c in self.cameras})
        self.text = TextHead(d, vocab, cfg.max_text_len) if vocab is not None else None
        self.contrastive = ContrastiveHead(d, lang_dim) if vocab is not None else None
        self.apply(_init_weights)

    @staticmethod
    def _decoder(cfg: PolicyConfig, image_size: int) -> nn.Module:
        sizes = (cfg.d_model, cfg.decoder_dim, cfg.decoder_layers, image_size, cfg.patch_size)
        if cfg.foresight_decoder == "mae":
            return MAEDecoder(*sizes, len(cfg.foresight_offsets), cfg.foresight_stats_weight)
        return ResidualDecoder(*sizes, len(cfg.foresight_offsets))

    # --- tokens -------------------------------------------------------------------------------------
    def observation_tokens(self, images: dict[str, torch.Tensor], state: torch.Tensor | None = None) -> torch.Tensor:
        """images: {camera: (B, T, 3, H, W)} for some or all cameras, state: (B, T, S) normalised or None
        (video, image-text) -> (B, T, n_obs', d): the groups the data has, in layout order."""
        cameras = [c for c in self.cameras if c in images]
        B = images[cameras[0]].shape[0]
        parts = [] if state is None else [self.state_encoder(state)[:, :, None]]
        for cam in cameras:
            frames = rearrange(images[cam], "b t c h w -> (b t) c h w")
            parts.append(rearrange(self.vision[cam](frames), "(b t) n d -> b t n d", b=B))
        return torch.cat(parts, dim=2) + self._obs_slots(state is not None, cameras)

    def _obs_slots(self, state: bool, cameras: list[str]) -> torch.Tensor:
        if state and len(cameras) == len(self.cameras):  # robot data, the inference hot path: every slot
            return self.obs_slots
        slices = self.layout.group_slices(self.layout.observation)
        groups = self.layout.observation_groups(state, cameras)
        return torch.cat([self.obs_slots[slices[g.name]] for g in groups])

    def prefix_tokens(self, lang: torch.Tensor) -> torch.Tensor:
        """lang: (B, lang_dim) sentence embeddings -> (B, 1, d)."""
        return self.lang_proj(lang)[:, None]

    # --- the whole window -----------------------------------------------------------------------------
    def forward(
        self,
        lang: torch.Tensor,
        obs: torch.Tensor,
        step_is_pad: torch.Tensor | None = None,
        readouts: str = "all",
        action: bool = True,
    ) -> torch.Tensor:
        """lang: (B, lang_dim); obs: (B, T, n_obs, d) from `observation_tokens`; step_is_pad: (B, T);
        action: whether the readouts include [ACT] (not for video).

        Returns readout states (B, T', n_readout, d) for T' = T ("all") or 1 ("last")."""
        B, T = obs.shape[:2]
        readout = self.readout_slots if action else self.readout_slots[:-1]  # [ACT] is the last readout
        readout = readout.expand(B, 1, -1, -1)
        if readouts == "all":
            steps = torch.cat([obs, readout.expand(B, T, -1, -1)], dim=2).flatten(1, 2)
        else:
            steps = torch.cat([obs.flatten(1, 2), readout[:, 0]], dim=1)
        x = torch.cat([self.prefix_tokens(lang), steps], dim=1)
        kind, step = (t.to(x.device) for t in self.layout.tokens(T, readouts, n_obs=obs.shape[2], action=action))
        k_pad = None
        if step_is_pad is not None:
            k_pad = step_is_pad[:, step.clamp(min=0)] & (step >= 0)
        h, _ = self.trunk(x, self.trunk.bias(kind, step, kind, step, k_pad))
        return h[:, kind == Kind.READOUT].unflatten(1, (-1, readout.shape[2]))

    def text_states(self, lang: torch.Tensor, obs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Captioning: lang (B, lang_dim) prompt, obs (B, 1, n_obs', d) one image's tokens, ids (B, L)
        caption tokens so far -> (B, L, d) states, state i predicting token i+1."""
        return self.image_text_states(lang, obs, ids)[0]

    def image_text_states(self, lang: torch.Tensor, obs: torch.Tensor, ids: torch.Tensor):
        """`text_states` and the image: -> (text (B, L, d), the image's observation tokens (B, n_obs', d)).
        The image tokens read only the prompt and each other, never the caption (the layout's rules)."""
        T = obs.shape[1]
        x = torch.cat([self.prefix_tokens(lang), obs.flatten(1, 2), self.text.embed(ids)], dim=1)
        kind, step = (t.to(x.device) for t in self.layout.tokens(T, "none", n_obs=obs.shape[2], text=ids.shape[1]))
        h, _ = self.trunk(x, self.trunk.bias(kind, step, kind, step))
        return h[:, kind == Kind.TEXT], h[:, kind == Kind.OBS]

    # --- streaming -----------------------------------------------------------------------------------
    def start_stream(self, lang: torch.Tensor) -> StreamCache:
        """Run the prefix once; its keys/values serve every later timestep."""
        x = self.prefix_tokens(lang)
        kind = torch.full((x.shape[1],), int(Kind.PREFIX), device=x.device)
        step = torch.full_like(kind, -1)
        _, kvs = self.trunk(x, self.trunk.bias(kind, step, kind, step))
        return StreamCache(prefix=kvs)

    def stream_observe(self, cache: StreamCache, obs: torch.Tensor) -> None:
        """obs: (B, n_obs, d), the next timestep's observation tokens: cache their keys/values."""
        self._stream_pass(cache, obs, readout=False)

    def stream_step(self, cache: StreamCache, obs: torch.Tensor) -> torch.Tensor:
        """Observe the next timestep and read out at it: (B, n_obs, d) -> (B, n_readout, d).

        One pass of the trunk for both: the readouts join the new observation tokens as queries, and
        the rules keep everything else exactly as two separate passes would (the new observation
        tokens read only the prefix and themselves)."""
        return self._stream_pass(cache, obs, readout=True)

    def _stream_pass(self, cache: StreamCache, obs: torch.Tensor, readout: bool) -> torch.Tensor | None:
        t, dev, n_obs = cache.next_step, obs.device, obs.shape[1]
        n_prefix = cache.prefix[0][0].shape[2]
        # Keys the queries may find: the prefix, then (only needed by readouts) the cached timesteps that
        # share the window with this one.
        cached = list(cache.steps)[max(0, len(cache.steps) - self.history + 1) :] if readout else []
        past = [
            tuple(torch.cat([cache.prefix[i][j]] + [kv[i][j] for _, kv in cached], dim=2) for j in (0, 1))
            for i in range(len(cache.prefix))
        ]
        cached_steps = torch.tensor([s for s, _ in cached], device=dev, dtype=torch.long).repeat_interleave(n_obs)
        q_kind = torch.full((n_obs,), int(Kind.OBS), device=dev)
        x = obs
        if readout:
            q_kind = torch.cat([q_kind, torch.full((self.layout.n_readout,), int(Kind.READOUT), device=dev)])
            x = torch.cat([obs, self.readout_slots.expand(obs.shape[0], -1, -1)], dim=1)
        q_step = torch.full_like(q_kind, t)
        k_kind = torch.cat([torch.full((n_prefix,), int(Kind.PREFIX), device=dev),
                            torch.full_like(cached_steps, int(Kind.OBS)), q_kind])  # fmt: skip
        k_step = torch.cat([torch.full((n_prefix,), -1, device=dev), cached_steps, q_step])
        h, kvs = self.trunk(x, self.trunk.bias(q_kind, q_step, k_kind, k_step), past)
        cache.steps.append((t, [(k[:, :, :n_obs], v[:, :, :n_obs]) for k, v in kvs]))
        while len(cache.steps) > self.history:
            cache.steps.popleft()
        cache.next_step += 1
        return h[:, n_obs:] if readout else None

    # --- heads -------------------------------------------------------------------------------------------
    def split_readouts(self, h: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """(..., n_readout, d) -> ({camera: (..., q, d)}, act (..., d) or None when [ACT] was left out)."""
        slices = self.layout.group_slices(self.layout.readout)
        obs = {c: h[..., slices[f"obs.{c}"], :] for c in self.cameras}
        has_act = h.shape[-2] == self.layout.n_readout
        return obs, h[..., slices["act"], :].squeeze(-2) if has_act else None


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear) and not isinstance(module, ZeroLinear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
