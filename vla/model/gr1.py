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

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from vla.model.encoders import StateEncoder, VisionEncoder
from vla.model.gpt import KV, Trunk
from vla.model.heads import ActionHead, FlowHead, MAEDecoder, ResidualDecoder
from vla.model.layout import Kind, TokenLayout
from vla.model.text import ContrastiveHead, GroundingHead, TextHead
from vla.policies.config import PolicyConfig


@dataclass
class StreamCache:
    """Keys/values of the prefix and of the last `history` timesteps' observation tokens, per layer, in
    buffers allocated once per episode: (B, n_head, n_prefix + history x n_obs, head_dim), the prefix
    first, then one slot of n_obs tokens per timestep, used as a ring (timestep t in slot t % history).
    A step writes its tokens into its slot and attends over the whole buffer; the attention bias (one per
    pattern of slot ages and number of readouts, kept by `GR1` across episodes) masks what it may not read.
    A cache serves one episode of fixed weights (inference)."""

    prefix: list[KV]
    kv: list[KV] | None = None  # the buffers, allocated by the first observation
    slots: list[torch.Tensor] = field(default_factory=list)  # each slot's buffer positions (n_obs,), long
    slot_step: list[int] = field(default_factory=list)  # the timestep each slot holds; -1: empty
    next_step: int = 0

    def allocate(self, n_obs: int, history: int) -> None:
        n_prefix = self.prefix[0][0].shape[2]
        self.kv = []
        for k, v in self.prefix:
            size = (k.shape[0], k.shape[1], n_prefix + history * n_obs, k.shape[3])
            keys, values = k.new_zeros(size), v.new_zeros(size)
            keys[:, :, :n_prefix], values[:, :, :n_prefix] = k, v
            self.kv.append((keys, values))
        self.slot_step = [-1] * history
        first = torch.arange(n_obs, device=self.prefix[0][0].device) + n_prefix
        self.slots = [first + slot * n_obs for slot in range(history)]


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
        self.vision = nn.ModuleDict({c: VisionEncoder.from_config(cfg, image_size, lang_dim) for c in self.cameras})
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
        # Only where its loss is on: a head nothing trains would sit in every checkpoint as noise.
        self.contrastive = ContrastiveHead(d, lang_dim) if vocab is not None and cfg.contrastive_weight > 0 else None
        self.grounding = GroundingHead(d) if cfg.grounding_weight > 0 else None
        self.apply(_init_weights)
        # Streaming's attention biases, built once per slot pattern; valid while the time-bias weights are
        # the ones they were built from (see `_stream_bias`).
        self._stream_biases: dict = {}
        self._stream_biases_of: tuple | None = None

    @staticmethod
    def _decoder(cfg: PolicyConfig, image_size: int) -> nn.Module:
        sizes = (cfg.d_model, cfg.decoder_dim, cfg.decoder_layers, image_size, cfg.patch_size)
        if cfg.foresight_decoder == "mae":
            return MAEDecoder(*sizes, len(cfg.foresight_offsets), cfg.foresight_stats_weight)
        return ResidualDecoder(*sizes, len(cfg.foresight_offsets))

    # --- tokens -------------------------------------------------------------------------------------
    def observation_tokens(
        self, images: dict[str, torch.Tensor], state: torch.Tensor | None = None, lang: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images: {camera: (B, T, 3, H, W)} for some or all cameras, state: (B, T, S) normalised or None
        (video, image-text), lang: (B, lang_dim) the sequence's prefix embedding, which a FiLM-conditioned
        vision encoder (`vision_film`) needs -> (B, T, n_obs', d): the groups the data has, in layout order."""
        cameras = [c for c in self.cameras if c in images]
        B, T = images[cameras[0]].shape[:2]
        # (B * T, lang_dim), as the frames; only FiLM reads it
        frame_lang = lang.repeat_interleave(T, dim=0) if lang is not None and self.cfg.vision_film else None
        parts = [] if state is None else [self.state_encoder(state)[:, :, None]]
        for cam in cameras:
            frames = rearrange(images[cam], "b t c h w -> (b t) c h w")
            tokens = self.vision[cam](frames, frame_lang)
            parts.append(rearrange(tokens, "(b t) n d -> b t n d", b=B))
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
        foresight: bool = True,
    ) -> torch.Tensor:
        """lang: (B, lang_dim); obs: (B, T, n_obs, d) from `observation_tokens`; step_is_pad: (B, T);
        action, foresight: whether the readouts include [ACT] (not for video) and the [OBS] queries (not
        where no frame is foreseen): see `TokenLayout.readout_slice`.

        Returns readout states (B, T', n_readout', d) for T' = T ("all") or 1 ("last")."""
        B, T = obs.shape[:2]
        readout = self.readout_slots[self.layout.readout_slice(action, foresight)].expand(B, 1, -1, -1)
        if readouts == "all":
            steps = torch.cat([obs, readout.expand(B, T, -1, -1)], dim=2).flatten(1, 2)
        else:
            steps = torch.cat([obs.flatten(1, 2), readout[:, 0]], dim=1)
        x = torch.cat([self.prefix_tokens(lang), steps], dim=1)
        layout = self.layout.tokens(T, readouts, n_obs=obs.shape[2], action=action, foresight=foresight)
        kind, step = (t.to(x.device) for t in layout)
        k_pad = None
        if step_is_pad is not None:
            k_pad = step_is_pad[:, step.clamp(min=0)] & (step >= 0)
        h, _ = self.trunk(x, self.trunk.bias(kind, step, kind, step, k_pad=k_pad))
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
        """Run the prefix once; its keys/values serve every later timestep (see `StreamCache`)."""
        x = self.prefix_tokens(lang)
        kind = torch.full((x.shape[1],), Kind.PREFIX, device=x.device)
        step = torch.full_like(kind, -1)
        _, kvs = self.trunk(x, self.trunk.bias(kind, step, kind, step))
        return StreamCache(prefix=kvs)

    def stream_observe(self, cache: StreamCache, obs: torch.Tensor) -> None:
        """obs: (B, n_obs, d), the next timestep's observation tokens: cache their keys/values."""
        self._stream_pass(cache, obs, readout=None)

    def stream_step(self, cache: StreamCache, obs: torch.Tensor, foresight: bool = True) -> torch.Tensor:
        """Observe the next timestep and read out at it: (B, n_obs, d) -> (B, n_readout', d), without the
        [OBS] queries unless `foresight` (see `forward`).

        One pass of the trunk for both: the readouts join the new observation tokens as queries, and
        the rules keep everything else exactly as two separate passes would (the new observation
        tokens read only the prefix and themselves)."""
        return self._stream_pass(cache, obs, readout=self.readout_slots[self.layout.readout_slice(True, foresight)])

    def _stream_pass(self, cache: StreamCache, obs: torch.Tensor, readout: torch.Tensor | None) -> torch.Tensor | None:
        """readout: (n_readout', d) the readout queries to join the observation tokens, or None."""
        bias, write = self.stream_slot(cache, obs.shape[1], 0 if readout is None else readout.shape[0])
        return self.stream_trunk(obs, readout, bias, cache.kv, write)

    def stream_slot(self, cache: StreamCache, n_obs: int, n_readout: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Take the next timestep's slot in `cache`: the bookkeeping of a streaming pass, apart from its
        arithmetic (`stream_trunk`), so that a caller can run the two apart (`VLAPolicy` compiles the
        observation's encoding and `stream_trunk` as one graph). Returns the attention bias (1, n_head,
        n_obs + n_readout, buffer length) and the buffer positions (n_obs,) the timestep's keys/values go to."""
        t = cache.next_step
        if cache.kv is None:
            cache.allocate(n_obs, self.history)
        slot = t % self.history
        cache.slot_step[slot] = t  # the timestep `history` steps back leaves the window, and its slot
        cache.next_step += 1
        # Slot ages relative to this step (0: this one); an empty slot counts as a future step, which the
        # rules never let anything read.
        ages = tuple(s - t if s >= 0 else 1 for s in cache.slot_step)
        return self._stream_bias(cache.prefix[0][0], n_obs, ages, n_readout), cache.slots[slot]

    def _stream_bias(self, prefix_keys: torch.Tensor, n_obs: int, ages: tuple, n_readout: int) -> torch.Tensor:
        """The additive bias of a streaming pass (1, n_head, n_obs + n_readout, buffer length), `prefix_keys`
        (B, n_head, n_prefix, head_dim) giving the prefix's length, device and dtype. Building one takes ~0.3 ms
        on a CPU, so each is kept for later steps and episodes, until the time-bias weights change: an in-place
        update (an optimiser step, load_state_dict) bumps their version, a replaced tensor has a new address."""
        weights = self.trunk.time_bias
        if self._stream_biases_of != (weights.data_ptr(), weights._version):
            self._stream_biases, self._stream_biases_of = {}, (weights.data_ptr(), weights._version)
        n_prefix, device, dtype = prefix_keys.shape[2], prefix_keys.device, prefix_keys.dtype
        key = (n_prefix, n_obs, ages, n_readout, device, dtype)
        if key not in self._stream_biases:
            rules = self._stream_rules(n_prefix, n_obs, ages, n_readout, device)
            self._stream_biases[key] = self.trunk.bias_of(*rules).to(dtype)
        return self._stream_biases[key]

    def stream_trunk(self, obs: torch.Tensor, readout: torch.Tensor | None, bias: torch.Tensor, kv: list[KV],
                     write: torch.Tensor) -> torch.Tensor | None:  # fmt: skip
        """The trunk's pass over one timestep whose slot `stream_slot` took: obs (B, n_obs, d) and the readout
        queries (n_readout', d) or None -> the readouts' states (B, n_readout', d), or None. The observation's
        keys/values land in the buffers `kv` at `write`; only the states are returned (a compiled graph
        returning the keys/values too would keep copies of them)."""
        x = obs if readout is None else torch.cat([obs, readout.expand(obs.shape[0], -1, -1)], dim=1)
        h = self.trunk(x, bias, kv, write)[0]
        return None if readout is None else h[:, obs.shape[1] :]

    def _stream_rules(self, n_prefix: int, n_obs: int, ages: tuple, n_readout: int, dev) -> tuple:
        """`Trunk.rules` for a streaming pass: queries at timestep 0 (its observation tokens, then
        `n_readout` readouts), keys the buffer (the prefix, then each slot's tokens at its age)."""
        q_kind = [Kind.OBS] * n_obs + [Kind.READOUT] * n_readout
        k_kind = [Kind.PREFIX] * n_prefix + [Kind.OBS] * (len(ages) * n_obs)
        k_step = [-1] * n_prefix + [age for age in ages for _ in range(n_obs)]
        q_kind, k_kind, k_step = (torch.tensor(v, device=dev, dtype=torch.long) for v in (q_kind, k_kind, k_step))
        return self.trunk.rules(q_kind, torch.zeros_like(q_kind), k_kind, k_step)

    # --- heads -------------------------------------------------------------------------------------------
    def split_readouts(
        self, h: torch.Tensor, action: bool = True, foresight: bool = True
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """(..., n_readout', d) readouts of a pass with these `action`/`foresight` flags -> ({camera: (..., q,
        d)}, empty without foresight; act (..., d), or None without [ACT])."""
        chosen = self.layout.readout_slice(action, foresight)
        if h.shape[-2] != chosen.stop - chosen.start:
            raise ValueError(f"{h.shape[-2]} readout tokens, but action={action}, foresight={foresight} "
                             f"gives {chosen.stop - chosen.start}")  # fmt: skip
        slices = self.layout.group_slices(self.layout.readout)
        obs = {c: h[..., slices[f"obs.{c}"], :] for c in self.cameras} if foresight else {}
        return obs, h[..., -1, :] if action else None


def _init_weights(module: nn.Module) -> None:
    """GPT-2's init (normal, std 0.02) for plain linear layers; a subclass (`ZeroLinear`, `KeypointLogits`) keeps
    the start its `reset_parameters` chose."""
    if type(module) is nn.Linear:
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
