"""The token layout and the attention rules, shared by the model and the mask builder.

    prefix:        [LANG]                                       the instruction
    per timestep:  [STATE] [IMG cam1 x n] [IMG cam2 x n] ...    observation tokens
                   [OBS cam1 x q] [OBS cam2 x q] ... [ACT]      readout tokens
    after the last timestep: [TEXT x L]                    caption tokens (image-text pretraining)

Which groups a sequence holds follows the data: video has no [STATE] and no [ACT], image-text is one
timestep without [STATE] followed by the caption's tokens, and a store may lack some of the cameras.
The rules depend on token kinds only, so a sequence is described by how many observation tokens a
timestep has, whichever they are.

Attention is derived from rules over token kinds, never from index arithmetic:

- every token reads the prefix, and the prefix reads only itself;
- an observation token reads the observation tokens of its own timestep;
- a readout token reads the observation tokens of its own and earlier timesteps;
- a text token reads the observation tokens and the text tokens up to its own position (causal);
- nothing reads a readout token.

Observation tokens do not read earlier timesteps (a deliberate narrowing of Octo's causal rule): their
states then depend on their own frame alone, so a sliding window can cache them exactly, and streaming
inference equals full-window recomputation. Temporal fusion happens in the readouts, which read every
timestep of the window at every layer. Readouts can be dropped without changing anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class Kind:
    """A token's kind, as the ints a layout's kind tensors hold. Plain ints, not an IntEnum: under torch.compile
    (torch 2.13's Dynamo) `tensor[None, :] == <IntEnum member>` evaluates to a Python False, which `|` and
    `torch.where` would then take for a mask."""

    PREFIX = 0
    OBS = 1
    READOUT = 2
    TEXT = 3


@dataclass(frozen=True)
class Group:
    name: str  # "lang", "state", "img.<camera>", "obs.<camera>", "act"
    kind: int  # a Kind
    n_tokens: int


def can_attend(
    q_kind: torch.Tensor,
    q_step: torch.Tensor,
    k_kind: torch.Tensor,
    k_step: torch.Tensor,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rules, broadcast over query/key token tensors of kinds, timesteps and (for text, which is
    causal within itself) sequence positions -> bool."""
    to_prefix = k_kind == Kind.PREFIX
    obs_to_obs = (q_kind == Kind.OBS) & (k_kind == Kind.OBS) & (k_step == q_step)
    readout_to_obs = ((q_kind == Kind.READOUT) | (q_kind == Kind.TEXT)) & (k_kind == Kind.OBS) & (k_step <= q_step)
    allowed = to_prefix | obs_to_obs | readout_to_obs
    if q_pos is not None and k_pos is not None:
        allowed = allowed | ((q_kind == Kind.TEXT) & (k_kind == Kind.TEXT) & (k_pos <= q_pos))
    return allowed


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

    def observation_groups(self, state: bool = True, cameras: list[str] | None = None) -> list[Group]:
        """A timestep's observation groups for data with or without state and with some of the cameras."""
        keep = {"state"} if state else set()
        keep |= {f"img.{c}" for c in (self.cameras if cameras is None else cameras)}
        return [g for g in self.observation if g.name in keep]

    def group_slices(self, groups: list[Group]) -> dict[str, slice]:
        """Token slices of `groups` within their block (e.g. within one timestep's observation tokens)."""
        out, start = {}, 0
        for g in groups:
            out[g.name] = slice(start, start + g.n_tokens)
            start += g.n_tokens
        return out

    def tokens(
        self,
        steps: int,
        readouts: str = "all",
        n_obs: int | None = None,
        action: bool = True,
        text: int = 0,
        foresight: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(kind, timestep) per token of a sequence: the prefix, then per timestep its `n_obs` observation
        tokens (default: every group) followed by its readouts ("all" timesteps, only the "last", or
        "none"; the [OBS] queries only with `foresight`, [ACT] only with `action`: see `readout_slice`),
        then `text` caption tokens at the last timestep. Prefix tokens have timestep -1."""
        if readouts not in ("all", "last", "none"):
            raise ValueError(f"readouts must be all, last or none, got {readouts!r}")
        n_obs = self.n_obs if n_obs is None else n_obs
        chosen = self.readout_slice(action, foresight)
        n_readout = chosen.stop - chosen.start
        kinds = [Kind.PREFIX] * self.n_prefix
        step_ids = [-1] * self.n_prefix
        for t in range(steps):
            with_readouts = readouts == "all" or (readouts == "last" and t == steps - 1)
            kinds += [Kind.OBS] * n_obs + [Kind.READOUT] * (n_readout if with_readouts else 0)
            step_ids += [t] * (n_obs + (n_readout if with_readouts else 0))
        kinds += [Kind.TEXT] * text
        step_ids += [steps - 1] * text
        return torch.tensor(kinds), torch.tensor(step_ids)

    def readout_slice(self, action: bool = True, foresight: bool = True) -> slice:
        """Which of a timestep's readout tokens a pass carries: the [OBS] queries (first) only where
        foresight is decoded, [ACT] (last) only where an action is. Nothing reads a readout, so leaving
        some out changes none of the others. Raises ValueError for neither (use readouts="none")."""
        if not (action or foresight):
            raise ValueError('a pass without [ACT] and without [OBS] queries reads nothing out: use readouts="none"')
        return slice(0 if foresight else self.n_readout - 1, self.n_readout if action else self.n_readout - 1)

    def mask(self, steps: int, readouts: str = "all", **groups) -> torch.Tensor:
        """(L, L) bool: query i may read key j."""
        kind, step = self.tokens(steps, readouts, **groups)
        pos = torch.arange(len(kind))
        return can_attend(kind[:, None], step[:, None], kind[None, :], step[None, :], pos[:, None], pos[None, :])

    def __repr__(self) -> str:
        groups = ", ".join(f"{g.name}x{g.n_tokens}" for g in self.prefix + self.step_groups)
        return f"TokenLayout({groups})"
