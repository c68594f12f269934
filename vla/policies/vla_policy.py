"""The policy wrapper around the GR-1 network: normalisation, losses, and streaming inference.

    policy = checkpoint.load_policy("runs/quickstart/policy")   # or VLAPolicy(PolicyConfig(...), stats)
    policy.reset()
    prediction = policy.predict(obs, "press the button")   # raw units in: the chunk and the foreseen frames
    policy.observe(obs, "press the button")                # a tick without a prediction: history only

Executing chunks (the action queue, temporal ensembling) is `vla.policies.executor.ChunkExecutor`'s job;
the policy says how it was trained to be executed: `history`, `n_action_steps`, `temporal_ensemble`.

Training: `loss, metrics = policy(batch)` on a collated window batch (see `vla.datasets.sampler`).
Which losses run is decided by what the batch carries: `action` -> the action loss, `future.<image
key>` -> the foresight loss, `caption` -> the captioning loss and (`contrastive_weight` > 0) the
contrastive image-text loss (`vla.model.text.ContrastiveHead`), `referring_expression` (`grounding_weight`
> 0) -> phrase grounding (`vla.model.text.GroundingHead`). A batch without `observation.state`
(video) leaves out the [STATE] token, one without `action` the [ACT] readout, so the state encoder
and the action head see no such batch and get no gradient from it.

    policy.caption(image)   # image-text pretraining: a generated description of a frame
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np
import torch
from torch import nn

from vla import keys
from vla.errors import UserError
from vla.model.encoders import SentenceEncoder
from vla.model.gr1 import GR1, StreamCache
from vla.model.heads import ActionHead, masked_mean
from vla.model.text import CAPTION_PROMPT
from vla.policies.augment import shift_window
from vla.policies.base import Prediction
from vla.policies.compiled_step import AotStep, jit_step
from vla.policies.config import PolicyConfig, resolve_gripper
from vla.policies.normalizer import Normalizer

log = logging.getLogger(__name__)

_sentence_encoders: dict[str, SentenceEncoder] = {}  # one frozen encoder per process, shared by policies


def sentence_encoder(name: str) -> SentenceEncoder:
    if name not in _sentence_encoders:
        _sentence_encoders[name] = SentenceEncoder(name)
    return _sentence_encoders[name]


class VLAPolicy(nn.Module):
    def __init__(self, config: PolicyConfig, stats: dict | None = None, *, foresee: bool = True,
                 streaming: bool = True):  # fmt: skip
        """stats: per-key statistics for the normalizer (None: identity until weights are loaded).
        foresee: decode the foreseen frames with every prediction (False: actions only, faster).
        streaming: cache past timesteps' keys/values (False: recompute the whole window every step)."""
        super().__init__()
        if not config.features:
            raise UserError("the policy config has no features: a policy needs the keys of the store it learns from")
        if config.gripper == "auto":  # a copy with the kind the data declares or its statistics show
            config, why = resolve_gripper(config, stats)
            log.info("policy.gripper: %s (%s)", config.gripper, why)
        self.config = cfg = config
        self.features = {k: keys.Spec.from_json(v) for k, v in cfg.features.items()}
        self.image_keys = [k for k in self.features if keys.is_image_key(k)]
        cameras = [keys.camera_of(k) for k in self.image_keys]
        image_size = self.features[self.image_keys[0]].shape[0]
        self.normalizer = Normalizer(self.features, stats)
        self.language = sentence_encoder(cfg.language_model)
        dims = {k: self.features[k].shape[0] if k in self.features else None for k in (keys.OBS_STATE, keys.ACTION)}
        self.model = GR1(
            cfg,
            cameras,
            image_size,
            state_dim=dims[keys.OBS_STATE],
            action_dim=dims[keys.ACTION],
            history=cfg.history,
            chunk=cfg.chunk,
            lang_dim=self.language.dim,
            vocab=self.language.input_embeddings(),
        )
        self.streaming, self.foresee = streaming, foresee
        # Observation tokens per timestep at inference: every camera, and the state where the policy has one.
        has_state = keys.OBS_STATE in self.features and self.model.state_encoder is not None
        self._n_obs = sum(g.n_tokens for g in self.model.layout.observation_groups(has_state, cameras))
        self.reset()

    # --- how it is executed (see vla.policies.executor) ----------------------------------------------
    @property
    def history(self) -> int:
        """Observations `predict` reads, the current one included."""
        return self.config.history

    @property
    def chunk(self) -> int:
        """Actions in each predicted chunk."""
        return self.config.chunk

    @property
    def n_action_steps(self) -> int:
        """Actions executed from each chunk before predicting again."""
        return self.config.n_action_steps

    @property
    def temporal_ensemble(self) -> float:
        """k > 0: predict every step and average overlapping chunks, weights exp(-k * i), oldest first."""
        return self.config.temporal_ensemble

    # --- inputs --------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.model.obs_slots.device

    def _observation_tokens(self, batch: dict, lang: torch.Tensor) -> torch.Tensor:
        """Raw (B, T, ...) observations and the prefix embedding (B, lang_dim) -> (B, T, n_obs, d) tokens."""
        images = {
            keys.camera_of(k): self.normalizer.normalize_images(k, batch[k]) for k in self.image_keys if k in batch
        }
        if not images:
            raise UserError(f"a batch with keys {sorted(batch)} has none of this policy's cameras {self.image_keys}")
        state = None
        if keys.OBS_STATE in batch and self.model.state_encoder is not None:
            state = self.normalizer.normalize(keys.OBS_STATE, batch[keys.OBS_STATE])
        return self.model.observation_tokens(images, state, lang)

    def _lang(self, instructions: list[str]) -> torch.Tensor:
        return self.language(instructions).to(self._device())

    # --- training ------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """A collated window batch (raw units) -> (weighted loss, metrics)."""
        batch = {k: v.to(self._device()) if torch.is_tensor(v) else v for k, v in batch.items()}
        weights = self.config
        if keys.CAPTION in batch:
            captioned = weights.text_weight > 0 or weights.contrastive_weight > 0  # else grounding alone: skip them
            losses, metrics = self._image_text_losses(batch) if captioned else {}, {}
            if keys.REFERRING_EXPRESSION in batch and self.model.grounding is not None:
                losses["grounding"], metrics["grounding_error_cm"] = self._grounding_loss(batch)
        else:
            losses, metrics = self._window_losses(batch)
        if not losses:
            raise UserError(f"a batch with keys {sorted(batch)} gives this policy nothing to learn")
        scale = {"action": weights.action_weight, "foresight": weights.foresight_weight, "text": weights.text_weight,
                 "contrastive": weights.contrastive_weight, "grounding": weights.grounding_weight}  # fmt: skip
        loss = sum(scale[name] * value for name, value in losses.items())
        metrics.update({f"loss_{name}": value.detach() for name, value in losses.items()})
        return loss, _as_floats(metrics)

    def _window_losses(self, batch: dict) -> tuple[dict, dict]:
        """Robot or video windows: the action loss where the batch has actions, foresight where it has
        future frames. With `every_step_loss` each step's readouts are supervised (GR-1), padded steps
        masked; otherwise only the last step's."""
        losses, metrics = {}, {}
        if self.training and self.config.random_shift:
            batch = shift_window(batch, self.image_keys, self.config.random_shift)
        lang = self._lang(batch[keys.INSTRUCTION])
        obs = self._observation_tokens(batch, lang)
        pad = next(batch[keys.pad_key(k)] for k in self.image_keys if k in batch)  # (B, T)
        action = keys.ACTION in batch and self.model.action_head is not None
        every = self.config.every_step_loss
        h = self.model(lang, obs, pad, readouts="all" if every else "last", action=action)
        # Supervised steps: (B, T, n_readout, d) with every step, else the last one (B, n_readout, d).
        h, step_keep = (h, ~pad) if every else (h[:, -1], torch.ones_like(pad[:, -1]))
        obs_readouts, act = self.model.split_readouts(h, action=action)
        if action:
            losses["action"], metrics = self._action_loss(act, batch, step_keep)
        foresight = [k for k in self.image_keys if keys.future_key(k) in batch and self.config.foresight_weight > 0]
        per_camera = []
        for k in foresight:
            per_horizon = self._foresight_losses(k, obs_readouts, batch, step_keep)
            metrics.update({f"loss_foresight_{ahead}": v.detach() for ahead, v in per_horizon.items()})
            per_camera.append(sum(per_horizon.values()) / len(per_horizon))
        if per_camera:
            losses["foresight"] = sum(per_camera) / len(per_camera)
        return losses, metrics

    def _action_loss(self, act: torch.Tensor, batch: dict, step_keep: torch.Tensor):
        """act: (B, [T,] d); the batch's action (B, [T,] chunk, A); step_keep (B, [T]) the supervised steps."""
        raw = batch[keys.ACTION]
        target = self.normalizer.normalize(keys.ACTION, raw)
        keep = ~batch[keys.pad_key(keys.ACTION)] & step_keep[..., None]
        return self.model.action_head.loss(act, target, keep, gripper_closed=raw[..., -1] > self._gripper_threshold())

    def _gripper_threshold(self) -> torch.Tensor:
        """Where a binary gripper's command turns from open to closed: 0 for a signed command (-1 open,
        +1 close), else halfway between the data's two levels (0/1, 0/100...)."""
        low, high = self.normalizer.stat(keys.ACTION, "min")[-1], self.normalizer.stat(keys.ACTION, "max")[-1]
        return torch.where((low < 0) & (high > 0), torch.zeros_like(low), (low + high) / 2)

    def _foresight_losses(self, key: str, obs_readouts: dict, batch: dict, step_keep: torch.Tensor) -> dict:
        """{offset: loss} of camera `key`'s decoder, each horizon on its own."""
        camera, offsets = keys.camera_of(key), self.config.foresight_offsets
        decoder = self.model.foresight[camera]
        readouts = obs_readouts[camera]  # (B, [T,] q, d)
        current = batch[key] if self.config.every_step_loss else batch[key][:, -1]  # (B, [T,] H, W, 3)
        future, future_pad = batch[keys.future_key(key)], batch[keys.pad_key(keys.future_key(key))]  # (B,[T,] K,..)
        readouts, current = readouts.flatten(0, -3), current.flatten(0, -4)  # (N, q, d), (N, H, W, 3)
        n, k = readouts.shape[0], len(offsets)
        # All horizons in one decoder pass (K x N rows, horizon-major): fewer, larger kernels than K passes.
        horizon = torch.arange(k, device=readouts.device).repeat_interleave(n)
        preds = decoder(readouts.repeat(k, 1, 1), current.repeat(k, 1, 1, 1), horizon).split(n)
        losses = {}
        for i, (offset, pred) in enumerate(zip(offsets, preds)):
            keep = (~future_pad[..., i] & step_keep).flatten()
            losses[offset] = decoder.loss(pred, current, future[..., i, :, :, :].flatten(0, -4), keep)
        return losses

    def _caption_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt embedding and one image's tokens (its last frame) per batch entry."""
        images = {k: batch[k][:, -1:] for k in self.image_keys if k in batch}
        lang = self._lang([CAPTION_PROMPT] * next(iter(images.values())).shape[0])
        return lang, self._observation_tokens(images, lang)

    def _text_loss(self, batch: dict) -> torch.Tensor:
        """The captioning loss alone (nats per caption token)."""
        return self._image_text_losses(batch, contrastive=False)["text"]

    def _image_text_losses(self, batch: dict, contrastive: bool = True) -> dict[str, torch.Tensor]:
        """Captioning ("text") and, with `contrastive_weight` > 0, the contrastive image-text loss between the
        image's pooled observation states and the caption's sentence embedding; captions of one image in the
        batch (identical frames) count as one scene's."""
        tokens = self.language.tokenizer(
            batch[keys.CAPTION], padding=True, truncation=True, max_length=self.config.max_text_len + 1,
            return_tensors="pt",
        )  # fmt: skip
        ids, keep = tokens["input_ids"].to(self._device()), tokens["attention_mask"].to(self._device()).bool()
        lang, obs = self._caption_inputs(batch)
        h, image = self.model.image_text_states(lang, obs, ids[:, :-1])
        losses = {"text": self.model.text.loss(h, ids[:, 1:], keep[:, 1:])}
        head = self.model.contrastive
        if contrastive and head is not None and self.config.contrastive_weight > 0 and len(ids) > 1:
            frames = torch.cat([batch[k][:, -1].flatten(1) for k in self.image_keys if k in batch], dim=1)
            same = (frames[:, None] == frames[None]).all(-1)  # (B, B)
            losses["contrastive"] = head.loss(image.mean(1), self._lang(batch[keys.CAPTION]), same)
        return losses

    def _grounding_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Phrase grounding on an image-text batch -> (smooth-L1 loss, mean error in cm of the kept rows)."""
        images = {k: batch[k][:, -1:] for k in self.image_keys if k in batch}
        act = self._referent_readout(batch[keys.REFERRING_EXPRESSION], images)
        target, keep = batch[keys.REFERENT_POSITION], ~batch[keys.pad_key(keys.REFERENT_POSITION)]
        loss, position = self.model.grounding.loss(act, target, keep)
        return loss, masked_mean((position - target).norm(dim=-1), keep) * 100

    def _referent_readout(self, phrases: list[str], images: dict) -> torch.Tensor:
        """The [ACT] readout (B, d) of a pass whose prefix (and FiLM's condition) is the phrase and whose one
        timestep is the image: {image key: (B, 1, H, W, 3) raw}."""
        lang = self._lang(phrases)
        h = self.model(lang, self._observation_tokens(images, lang), readouts="last", foresight=False)
        return self.model.split_readouts(h[:, -1], foresight=False)[1]

    @torch.no_grad()
    def locate(self, frames: np.ndarray, phrases: list[str], key: str | None = None) -> np.ndarray:
        """Phrase grounding: where the object each phrase names stands in its frame. frames (N, H, W, 3) uint8 of
        camera `key` (default the policy's first), phrases N referring expressions ("the red block") -> (N, 2)
        float, (lateral, depth) in m in the view coordinates the policy was trained on
        (`vla.envs.tabletop.caption_facts`). Raises UserError for a policy trained without `grounding_weight`,
        a camera it does not have, or other than one phrase per frame."""
        key = key or self.image_keys[0]
        if key not in self.image_keys:
            raise UserError(f"unknown camera {key!r}; valid: {', '.join(self.image_keys)}")
        if self.model.grounding is None:
            raise UserError("this policy has no grounding head: train it with policy.grounding_weight > 0 on an "
                            "image-text store with scene facts")  # fmt: skip
        if len(frames) != len(phrases):
            raise UserError(f"{len(frames)} frames but {len(phrases)} phrases: give one phrase per frame")
        images = torch.as_tensor(np.asarray(frames))[:, None].to(self._device())
        act = self._referent_readout(list(phrases), {key: images})
        return self.model.grounding(act).float().cpu().numpy()

    @torch.no_grad()
    def caption(self, image: np.ndarray, max_tokens: int | None = None) -> str:
        """A greedy caption of one raw frame (H, W, 3) uint8, for every camera the same frame."""
        tokenizer = self.language.tokenizer
        frame = torch.as_tensor(np.array(image))[None, None].to(self._device())
        lang, obs = self._caption_inputs({k: frame for k in self.image_keys})
        ids = torch.tensor([[tokenizer.cls_token_id]], device=self._device())
        limit = self.config.max_text_len
        for _ in range(min(max_tokens or limit, limit) - 1):
            logits = self.model.text.logits(self.model.text_states(lang, obs, ids)[:, -1])
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            if ids[0, -1] == tokenizer.sep_token_id:
                break
        return tokenizer.decode(ids[0], skip_special_tokens=True)

    # --- inference -----------------------------------------------------------------------------------
    def compile_inference(self) -> VLAPolicy:
        """Compile the streaming step for inference: the new observation's normalisation and encoding (every
        camera, the state), the trunk's pass over it and a regression head's actions (`_stream_forward`), as
        one graph with the weights folded in as constants. On a CPU ahead of time by AOTInductor
        (`compiled_step.AotStep`: no guards or Python between kernels), elsewhere, or where torch.export cannot
        trace the step, by torch.compile. The first step compiles (on 2 cores 35-45 s with Inductor's cache,
        about 2 min without; see the README's inference table). The compiled
        step holds the weights it was compiled with: compile last, after loading weights and moving the policy
        to its device. The policy is put in eval mode; training and gradients never use the compiled step.
        Raises UserError for a policy that recomputes the window (its shapes change with every step)."""
        if not self.streaming:
            raise UserError("compiled inference needs a streaming policy: the full window's shapes grow every step")
        self.eval()
        self._compiled_step = AotStep(self) if self._device().type == "cpu" else jit_step(self)
        return self

    def reset(self) -> None:
        """Start an episode: forget the observation history and the cache."""
        self._history: deque = deque(maxlen=self.history)  # raw observations, newest last
        self._cache: StreamCache | None = None
        self._instruction: str | None = None
        self._cache_lang: torch.Tensor | None = None  # the instruction's embedding (1, lang_dim)

    @torch.no_grad()
    def observe(self, obs: dict[str, np.ndarray], instruction: str) -> None:
        """Take one observation (raw units, no batch dimension) into the history (and the cache)."""
        self._take(obs, instruction, readout=False)

    @torch.no_grad()
    def predict(self, obs: dict[str, np.ndarray], instruction: str) -> Prediction:
        """Observe, then predict the action chunk and the foreseen frames at this step."""
        return self._decode(*self._take(obs, instruction, readout=True))

    @torch.no_grad()
    def _take(self, obs: dict[str, np.ndarray], instruction: str, readout: bool) -> tuple | None:
        """One observation into the history (and the cache) -> with `readout`, (the readout states (1, n_readout',
        d), the raw-unit action chunk (chunk, A) where the streaming step computes it, else None); else None."""
        step = {k: torch.as_tensor(np.asarray(obs[k]))[None, None].to(self._device()) for k in self._obs_keys()}
        self._history.append(step)
        if not self.streaming:
            if not readout:
                return None
            window = {k: torch.cat([s[k] for s in self._history], dim=1) for k in self._obs_keys()}
            lang = self._lang([instruction])
            tokens = self._observation_tokens(window, lang)
            return self.model(lang, tokens, readouts="last", foresight=self.foresee)[:, -1], None
        if self._cache is None or instruction != self._instruction:
            # A new instruction changes the prefix every cached token read (and, with FiLM, the image
            # tokens themselves): rebuild from the history.
            self._instruction, self._cache_lang = instruction, self._lang([instruction])
            self._cache = self.model.start_stream(self._cache_lang)
            for past in list(self._history)[:-1]:
                self.model.stream_observe(self._cache, self._observation_tokens(past, self._cache_lang)[:, 0])
        # The compiled step holds eval-mode weights frozen at compile time: never for a policy put back in training.
        compiled = None if self.training else getattr(self, "_compiled_step", None)
        # A compiled step always reads out (a tick that only observes drops the readouts): one graph serves both.
        read = readout or compiled is not None
        queries = self.model.readout_slots[self.model.layout.readout_slice(True, self.foresee)] if read else None
        bias, write = self.model.stream_slot(self._cache, self._n_obs, 0 if queries is None else len(queries))
        taken = (compiled or self._stream_forward)(step, self._cache_lang, queries, bias, self._cache.kv, write)
        return taken if readout else None

    def _stream_forward(self, step: dict, lang: torch.Tensor, queries: torch.Tensor | None, bias: torch.Tensor,
                        kv: list, write: torch.Tensor) -> tuple | None:  # fmt: skip
        """One streaming step's arithmetic (what `compile_inference` compiles): raw (1, 1, ...) observations ->
        observation tokens -> `GR1.stream_trunk` (the slot's `bias`, `kv` buffers and `write` positions from
        `GR1.stream_slot`) -> (the readout states (1, n_readout', d), the raw-unit action chunk (chunk, A) of a
        regression head, else None: sampling a flow head stays outside), or None without `queries`."""
        h = self.model.stream_trunk(self._observation_tokens(step, lang)[:, 0], queries, bias, kv, write)
        if h is None:
            return None
        regress = isinstance(self.model.action_head, ActionHead)
        return h, self._actions(self.model.split_readouts(h, foresight=self.foresee)[1]) if regress else None

    def _obs_keys(self) -> list[str]:
        return [*self.image_keys, *([keys.OBS_STATE] if keys.OBS_STATE in self.features else [])]

    def _decode(self, h: torch.Tensor, actions: torch.Tensor | None = None) -> Prediction:
        """Readout states (1, n_readout, d) and the raw-unit action chunk where already computed (`_take`) ->
        raw-unit actions and, per horizon, uint8 frames."""
        obs_readouts, act = self.model.split_readouts(h, foresight=self.foresee)
        if self.model.action_head is None:  # pretrained on video alone: it foresees, it does not act
            actions = torch.zeros(0, 0)
        elif actions is None:
            actions = self._actions(act)
        offsets = self.config.foresight_offsets
        foresight = {offset: {} for offset in offsets} if self.foresee else {}
        for key in self.image_keys if self.foresee else []:
            decoder, readouts = self.model.foresight[keys.camera_of(key)], obs_readouts[keys.camera_of(key)]
            current = self._history[-1][key][:, 0]  # (1, H, W, 3): the frame the prediction is made at
            K = len(offsets)
            horizon = torch.arange(K, device=readouts.device)
            pred = decoder(readouts.expand(K, -1, -1), current.expand(K, -1, -1, -1), horizon)
            for offset, frame in zip(offsets, decoder.to_frames(pred).cpu().numpy()):
                foresight[offset][key] = frame
        return Prediction(actions.float().cpu().numpy(), foresight)

    def _actions(self, act: torch.Tensor) -> torch.Tensor:
        chunk = self.model.action_head.sample(act)[0]
        actions = self.normalizer.unnormalize(keys.ACTION, chunk)
        if self.model.action_head.gripper:  # binary (a continuous gripper is regressed like the arm)
            # The head gives the probability of closing: answer with the store's closed or open command.
            closed = chunk[:, -1] > 0.5
            low, high = self.normalizer.stat(keys.ACTION, "min")[-1], self.normalizer.stat(keys.ACTION, "max")[-1]
            actions[:, -1] = torch.where(closed, high, low)
        return actions


@torch.compiler.disable  # one host sync per metric: left out of a compiled training pass (`train.compile`)
def _as_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}
