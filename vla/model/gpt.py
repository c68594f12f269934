"""GPT blocks on `scaled_dot_product_attention`, with a relative timestep bias and key/value reuse.

The trunk never sees absolute positions: a token's timestep enters only through a learned bias per
head on (query timestep - key timestep), and the prefix has a bias of its own. So the keys and values
of a cached timestep stay valid when the history window slides (see `vla.model.layout`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vla.model.layout import Kind, can_attend

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, n_head, L, head_dim)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.keep_probs = False  # True: also compute and keep the attention probabilities (for inspection)
        self.probs: torch.Tensor | None = None  # (B, n_head, L, L_keys) of the last call, when kept

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, past: KV | None = None,
                write: torch.Tensor | None = None) -> tuple[torch.Tensor, KV]:  # fmt: skip
        """x: (B, L, D); bias: additive (B or 1, n_head, L, L_keys) with -inf where not allowed.
        past: None (the keys are x's own, L_keys = L), or preallocated key/value buffers (B, n_head, L_keys,
        head_dim) that the first n tokens of x write their keys/values into, at the n buffer positions
        `write` (long, (n,)), before x attends over the whole buffer (streaming: no per-step
        concatenation; positions as a tensor, so that a compiled pass serves every slot).
        Returns the output and this call's own keys/values (for the caller to cache)."""
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_head)
        k_all, v_all = k, v
        if past is not None:
            n = write.shape[0]
            past[0].index_copy_(2, write, k[:, :, :n])
            past[1].index_copy_(2, write, v[:, :, :n])
            k_all, v_all = past
        if bias is not None:
            bias = bias.to(q.dtype)
        drop = self.dropout if self.training else 0.0
        y = attention(q, k_all, v_all, bias, drop)
        if self.keep_probs:
            self.probs = attention_probs(q, k_all, bias)
        return self.proj(rearrange(y, "b h l d -> b l (h d)")), (k, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              dropout: float = 0.0) -> torch.Tensor:  # fmt: skip
    """`scaled_dot_product_attention` (q (B, h, Lq, d), k and v (B, h, Lk, d), additive bias broadcastable to
    (B, h, Lq, Lk)) -> (B, h, Lq, d). In bfloat16 on a CPU (training under autocast) through torch's math
    backend, where its fused CPU kernel is slower, forward and backward: on an AVX512-BF16 EPYC `small` trains
    at 32-40% of the bf16 peak this way, 29% with the fused kernel (`bench/train_throughput.py`). In float32
    the two tie and the fused one is kept."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What scaled_dot_product_attention weighs the values with: softmax(q k^T / sqrt(d) + bias)."""
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    return torch.softmax(scores if bias is None else scores + bias, dim=-1)


class ZeroLinear(nn.Linear):
    """A linear layer that starts at zero (weights and bias) and keeps that start through `_init_weights`:
    a residual branch that begins as the identity."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class Block(nn.Module):
    def __init__(self, dim: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, n_head, dropout)
        self.mlp = MLP(dim, 4 * dim, dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, past: KV | None = None,
                write: torch.Tensor | None = None):  # fmt: skip
        y, kv = self.attn(self.ln1(x), bias, past, write)
        x = x + y
        return x + self.mlp(self.ln2(x)), kv


class Trunk(nn.Module):
    """The causal transformer over the interleaved sequence, with the relative timestep bias."""

    def __init__(self, dim: int, n_layer: int, n_head: int, max_history: int, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.max_history = n_head, max_history
        self.blocks = nn.ModuleList(Block(dim, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(dim)
        # bias[h, dt] for dt = 0 .. max_history-1; the last column is the bias towards the prefix
        self.time_bias = nn.Parameter(torch.zeros(n_head, max_history + 1))

    def bias(self, *tokens: torch.Tensor, k_pad: torch.Tensor | None = None) -> torch.Tensor:
        """Additive attention bias (B or 1, n_head, Lq, Lk) from the tokens' kinds and timesteps (q_kind,
        q_step, k_kind, k_step: see `rules`) and key padding (B, Lk)."""
        return self.bias_of(*self.rules(*tokens, k_pad))

    def rules(
        self,
        q_kind: torch.Tensor,
        q_step: torch.Tensor,
        k_kind: torch.Tensor,
        k_step: torch.Tensor,
        k_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What `bias` is made of, and what does not change with the weights: (allowed (B or 1, Lq, Lk) bool,
        the time-bias column of each query/key pair (Lq, Lk)). Streaming builds it once per shape."""
        # Text is causal within itself: positions in the sequence (queries and keys are the same tokens
        # whenever text is present; streaming never carries text).
        pos = torch.arange(len(q_kind), device=q_kind.device) if len(q_kind) == len(k_kind) else None
        allowed = can_attend(q_kind[:, None], q_step[:, None], k_kind[None, :], k_step[None, :],
                             *((pos[:, None], pos[None, :]) if pos is not None else ()))[None]  # fmt: skip
        if k_pad is not None:
            allowed = allowed & ~k_pad[:, None, :]
        dt = (q_step[:, None] - k_step[None, :]).clamp(0, self.max_history - 1)
        return allowed, torch.where(k_kind[None, :] == Kind.PREFIX, self.max_history, dt)

    def bias_of(self, allowed: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """The additive bias of `rules`' output with the current time-bias weights."""
        return self.time_bias[:, rel][None].masked_fill(~allowed[:, None], float("-inf"))

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, past: list[KV] | None = None, write: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        """x: (B, L, D) -> (B, L, D) and each layer's keys/values of x; past, write: each layer's key/value
        buffers and where x's first tokens write into them (see `Attention.forward`)."""
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, bias, None if past is None else past[i], write)
            kvs.append(kv)
        return self.ln_f(x), kvs
