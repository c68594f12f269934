"""The token layout and the attention rules, shared by the model and the mask builder.

    prefix:        [LANG]                                       the instruction
    per timestep:  [STATE] [IMG cam1 x n] [IMG cam2 x n] ...    observation tokens
                   [OBS cam1 x q] [OBS cam2 x q] ... [ACT]      readout tokens

Attention is derived from three rules over token kinds, never from index arithmetic:

- every token reads the prefix, and the prefix reads only itself;
- an observation token reads the observation tokens of its own timestep;
- a readout token reads the observation tokens of its own and earlier timesteps;
- nothing reads a readout token.

Observation tokens do not read earlier timesteps (a deliberate narrowing of Octo's causal rule): their
states then depend on their own frame alone, so a sliding window can cache them exactly, and streaming
inference equals full-window recomputation. Temporal fusion happens in the readouts, which read every
timestep of the window at every layer. Readouts can be dropped without changing anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class Kind(IntEnum):
    PREFIX = 0
    OBS = 1
    READOUT = 2


@dataclass(frozen=True)
class Group:
    name: str  # "lang", "state", "img.<camera>", "obs.<camera>", "act"
    kind: Kind
    n_tokens: int


def can_attend(q_kind: torch.Tensor, q_step: torch.Tensor, k_kind: torch.Tensor, k_step: torch.Tensor) -> torch.Tensor:
    """The rules, broadcast over query/key token tensors of kinds and timesteps -> bool."""
    to_prefix = k_kind == Kind.PREFIX
    obs_to_obs = (q_kind == Kind.OBS) & (k_kind == Kind.OBS) & (k_step == q_step)
    readout_to_obs = (q_kind == Kind.READOUT) & (k_kind == Kind.OBS) & (k_step <= q_step)
    return to_prefix | obs_to_obs | readout_to_obs


class TokenLayout:
    """Where each token group sits in the sequence, for `history` timesteps and the given cameras."""

    def __init__(self, cameras: list[str], n_img_tokens: int, n_obs_queries: int):
        self.cameras = list(cameras)
        self.prefix = [Group("lang", Kind.PREFIX, 1)]
        self.observation = [Group("state", Kind.OBS, 1)] + [
            Group(f"img.{c}", Kind.OBS, n_img_tokens) for c in self.cameras
        ]
        self.readout = [Group(f"obs.{c}", Kind.READOUT, n_obs_queries) for c in self.cameras] + [
            Group("act", Kind.READOUT, 1)
        ]
        self.n_prefix = sum(g.n_tokens for g in self.prefix)
        self.n_obs = sum(g.n_tokens for g in self.observation)
        self.n_readout = sum(g.n_tokens for g in self.readout)
        self.step_groups = self.observation + self.readout

    def group_slices(self, groups: list[Group]) -> dict[str, slice]:
        """Token slices of `groups` within their block (e.g. within one timestep's observation tokens)."""
        out, start = {}, 0
        for g in groups:
            out[g.name] = slice(start, start + g.n_tokens)
            start += g.n_tokens
        return out

    def tokens(self, steps: int, readouts: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
        """(kind, timestep) per token of a sequence: the prefix, then per timestep its observation
        tokens followed by its readouts ("all" timesteps, only the "last", or "none").
        Prefix tokens have timestep -1."""
        if readouts not in ("all", "last", "none"):
            raise ValueError(f"readouts must be all, last or none, got {readouts!r}")
        kinds = [Kind.PREFIX] * self.n_prefix
        step_ids = [-1] * self.n_prefix
        for t in range(steps):
            with_readouts = readouts == "all" or (readouts == "last" and t == steps - 1)
            for g in self.step_groups if with_readouts else self.observation:
                kinds += [g.kind] * g.n_tokens
                step_ids += [t] * g.n_tokens
        return torch.tensor(kinds), torch.tensor(step_ids)

    def mask(self, steps: int, readouts: str = "all") -> torch.Tensor:
        """(L, L) bool: query i may read key j."""
        kind, step = self.tokens(steps, readouts)
        return can_attend(kind[:, None], step[:, None], kind[None, :], step[None, :])

    def __repr__(self) -> str:
        groups = ", ".join(f"{g.name}x{g.n_tokens}" for g in self.prefix + self.step_groups)
        return f"TokenLayout({groups})"
