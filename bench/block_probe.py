"""Can a policy's vision encoder find the block an instruction names? A supervised probe, in minutes.

    python bench/block_probe.py
    python bench/block_probe.py --set policy.vision_pos=sincos --set policy.patch_size=4

The tabletop policy's hand does not find the blocks (`bench/target_reach.py`). Behaviour cloning learns where a
block is only through the actions, slowly; this probe asks the vision side the question directly, so encoder
choices can be compared in minutes rather than CPU-hours. Scenes of the block tasks (`--tasks`) are reset on
seeds (no robot data); the probe sees an episode's first frames (both cameras), the grip point and the
instruction, and regresses where the named block stands relative to the grip point (x, y in m; stack-blocks:
the block to pick up). Its network is the policy's own: `--preset`/`--set` build the vision encoders exactly
as `PolicyConfig` does, and a transformer of the trunk's width and depth reads their tokens beside the
instruction's and the state's, as the policy's trunk does. It trains with `vla train`'s optimizer and
schedule (`--set train.lr=...`).

Reported on held-out scenes of the train split, on the unseen split (held-out colours, phrasings and cells),
and on as many of its own training scenes (`fit`: whether it learnt at all, or only failed to generalise):
  error            median horizontal distance between the predicted and the true offset (cm)
  within 3 cm      share of scenes predicted within 3 cm, the radius `target_reach.py` counts as reaching
  probe_one_block  the probe on the scenes whose only block is the named one: no colour needs reading there,
                   so this is finding blocks at all, apart from telling them apart
Baselines on the same scenes: `mean_offset`, the training scenes' mean offset (knows nothing of the image);
`random_block`, a block chosen at random among the scene's blocks (knows where every block is, not which
one is named: beating it means the colour was read). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from common import bench_parser, fail, machine
from target_reach import BLOCK_TASKS, block_tasks, named_block
from torch import nn
from tqdm import tqdm

from vla import envs, keys
from vla.config import load_config
from vla.envs.tabletop.scene import BLOCKS
from vla.errors import UserError
from vla.model.encoders import SentenceEncoder, StateEncoder, VisionEncoder
from vla.model.gpt import Block
from vla.options import check_value
from vla.policies.config import PolicyConfig
from vla.train import make_optimizer

CAMERAS = ("static", "wrist")
SCALE = 0.1  # m: offsets are regressed in tenths of a metre


def scenes(suite, tasks: list[str], split: str, n: int, seed: int, what: str) -> dict[str, np.ndarray | list]:
    """`n` scenes of each task: first frames, grip point, instruction, the named block's offset from the grip
    point (m, xy) and every block's offset (for the random-block baseline)."""
    out = {"images": [], "state": [], "instruction": [], "target": [], "blocks": []}
    for task in tqdm(tasks, desc=f"scenes ({what})", unit="task", leave=False):
        env = suite.make_env(task, split=split)
        try:
            for i in range(n):
                obs, _ = env.reset(seed=envs.episode_seed(seed, "tabletop", f"probe/{what}", task, i))
                scene, binding = env.unwrapped.scene, env.unwrapped.subtask.binding
                hand = scene.grip_pos()[:2]
                named = named_block(binding)
                out["images"].append(np.stack([obs[keys.image_key(c)] for c in CAMERAS]))
                out["state"].append(obs[keys.OBS_STATE])
                out["instruction"].append(env.unwrapped.instruction)
                out["target"].append(scene.pos(named)[:2] - hand)
                out["blocks"].append([scene.pos(b)[:2] - hand for b in BLOCKS if b in env.unwrapped.episode.xy])
        finally:
            env.close()
    return {k: v if k in ("instruction", "blocks") else np.stack(v).astype(np.float32 if k != "images" else np.uint8)
            for k, v in out.items()}  # fmt: skip


class Probe(nn.Module):
    """The policy's vision encoders and a trunk-sized transformer -> the named block's offset (SCALE units)."""

    def __init__(self, cfg: PolicyConfig, image_size: int, lang_dim: int):
        super().__init__()
        d = cfg.d_model
        self.vision = nn.ModuleList(VisionEncoder.from_config(cfg, image_size, lang_dim) for _ in CAMERAS)
        self.lang, self.state = nn.Linear(lang_dim, d), StateEncoder(4, d)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.n_head) for _ in range(cfg.n_layer))
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2))

    def forward(self, images: torch.Tensor, state: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        """images (B, cameras, 3, H, W) standardised, state (B, 4) standardised, lang (B, lang_dim) -> (B, 2)."""
        tokens = [enc(images[:, i], lang) for i, enc in enumerate(self.vision)]
        x = torch.cat([self.lang(lang)[:, None], *tokens, self.state(state)[:, None],
                       self.query.expand(len(lang), -1, -1)], dim=1)  # fmt: skip
        for block in self.blocks:
            x = block(x)[0]
        return self.head(x[:, -1])


def standardise(images: np.ndarray) -> torch.Tensor:
    """(N, cameras, H, W, 3) uint8 -> (N, cameras, 3, H, W), per-channel zero mean and unit std (fixed)."""
    return ((torch.as_tensor(images).float() / 255 - 0.5) / 0.25).movedim(-1, -3)


def errors(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.linalg.norm(pred - target, axis=-1)


def summary(err: np.ndarray) -> dict:
    return {"error_cm": float(np.median(err) * 100), "within_3cm": float(np.mean(err < 0.03))}


def random_block(data: dict) -> dict:
    """`summary` of guessing the named block uniformly among the scene's blocks, in expectation: the median of
    each scene's mean distance, and the mean of each scene's share of blocks within 3 cm of the named one."""
    dists = [np.linalg.norm(np.asarray(bs) - t, axis=-1) for bs, t in zip(data["blocks"], data["target"])]
    return {"error_cm": float(np.median([d.mean() for d in dists]) * 100),
            "within_3cm": float(np.mean([np.mean(d < 0.03) for d in dists]))}  # fmt: skip


def parse_args():
    """(args, tasks, config); a bad flag or setting exits with one line (`fail`)."""
    parser = bench_parser(__doc__)
    parser.add_argument("--preset", default="small", help="policy preset (tiny | small | gr1)")
    parser.add_argument("--set", action="append", default=[], help="config overrides, e.g. policy.patch_size=4 "
                        "(repeatable; the probe reads the policy section and train's optimizer settings)")  # fmt: skip
    parser.add_argument("--tasks", default=",".join(BLOCK_TASKS), help="comma list of tabletop block tasks")
    parser.add_argument("--scenes", type=int, default=1000, help="training scenes per task")
    parser.add_argument("--eval-scenes", type=int, default=40, help="held-out scenes per task and split")
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--batch", type=int, default=64, help="scenes per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        tasks = block_tasks(args.tasks)
        for name in ("--scenes", "--eval-scenes", "--steps", "--batch"):
            check_value(name, getattr(args, name.lstrip("-").replace("-", "_")), min=1)
        config = load_config(None, [f"policy.preset={args.preset}", f"train.steps={args.steps}", *args.set])
    except UserError as e:
        fail(str(e))
    return args, tasks, config


def train_probe(probe: Probe, config, inputs, train: dict, args) -> tuple[float, float]:
    """`args.steps` AdamW steps on random batches of the training scenes -> (seconds, final loss)."""
    opt, sched = make_optimizer(probe, config)
    rng, target = np.random.default_rng(args.seed), torch.as_tensor(train["target"] / SCALE)
    start, losses = time.perf_counter(), []
    for _ in tqdm(range(args.steps), desc="train probe", unit="step"):
        idx = rng.integers(0, len(target), args.batch)
        loss = nn.functional.smooth_l1_loss(probe(*inputs(train, idx)), target[idx])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(probe.parameters(), config.train.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return time.perf_counter() - start, float(np.mean(losses[-50:]))


@torch.no_grad()
def evaluate(probe: Probe, inputs, train: dict, held: dict) -> dict:
    """{split: {predictor: summary}} on `fit` (as many training scenes as held out) and each held-out split."""
    probe.eval()
    results = {}
    fit = {k: v[: len(held["train"]["target"])] for k, v in train.items()}
    for split, data in {"fit": fit, **held}.items():
        idx = np.arange(len(data["target"]))
        pred = torch.cat([probe(*inputs(data, idx[i : i + 256])) for i in range(0, len(idx), 256)]).numpy()
        alone = np.array([len(blocks) == 1 for blocks in data["blocks"]])
        err = errors(pred * SCALE, data["target"])
        results[split] = {
            "probe": summary(err),
            "probe_one_block": summary(err[alone]) if alone.any() else None,
            "mean_offset": summary(errors(train["target"].mean(0), data["target"])),
            "random_block": random_block(data),
            "scenes": len(idx),
            "one_block_scenes": int(alone.sum()),
        }
    return results


def main() -> None:
    args, tasks, config = parse_args()
    cfg = config.policy
    torch.manual_seed(args.seed)
    suite = envs.get_suite("tabletop")
    train = scenes(suite, tasks, "train", args.scenes, args.seed, "train")
    held = {split: scenes(suite, tasks, split, args.eval_scenes, args.seed, "eval-" + split)
            for split in ("train", "unseen")}  # fmt: skip
    language = SentenceEncoder(cfg.language_model)
    texts = sorted({*train["instruction"], *held["train"]["instruction"], *held["unseen"]["instruction"]})
    lang_of = dict(zip(texts, language(texts)))
    s_mean, s_std = train["state"].mean(0), train["state"].std(0) + 1e-3

    def inputs(data: dict, idx: np.ndarray):
        return (standardise(data["images"][idx]), torch.as_tensor((data["state"][idx] - s_mean) / s_std),
                torch.stack([lang_of[data["instruction"][i]] for i in idx]))  # fmt: skip

    probe = Probe(cfg, train["images"].shape[-2], language.dim)
    seconds, final_loss = train_probe(probe, config, inputs, train, args)
    results = evaluate(probe, inputs, train, held)
    n = len(train["target"])
    print(f"\nblock probe: {cfg.preset}, {', '.join(args.set) or 'defaults'}; {args.steps} steps x {args.batch}, "
          f"{n} training scenes, {seconds / args.steps:.2f} s/step, final loss {final_loss:.4f}")  # fmt: skip
    print(f"{'split':8} {'predictor':16} {'error (cm)':>10} {'within 3 cm':>12}")
    for split, row in results.items():
        for name in ("probe", "probe_one_block", "mean_offset", "random_block"):
            if row[name] is not None:
                print(f"{split:8} {name:16} {row[name]['error_cm']:10.1f} {row[name]['within_3cm']:12.1%}")
    print(json.dumps({"bench": "block_probe", "preset": cfg.preset, "set": args.set, "steps": args.steps,
                      "batch": args.batch, "scenes": n, "s_per_step": seconds / args.steps,
                      "final_loss": final_loss, "results": results, "machine": machine()}))  # fmt: skip


if __name__ == "__main__":
    main()
