"""Does a trained policy know where the named block is? Probes on its frozen features.

    python bench/policy_probe.py --policy runs/bench-tabletop/robot-seed0

`bench/block_probe.py` asks whether an encoder *can* learn where a block is under direct supervision; this asks
whether behaviour cloning *did*. Scenes of the block tasks are reset on seeds as there (an episode's first
frames, grip point and instruction); the policy reads each as the first step of an episode (history 1), and
read-outs fitted on `--scenes` scenes per task and scored on held-out scenes of each split (`ridge`: a ridge
regression, `mlp`: one hidden layer) read the named block's offset from the grip point (x, y) out of two of
its features:
  act     the [ACT] readout the action head decodes (d_model wide): what the actions are made from
  tokens  the first step's observation tokens (every camera's tokens and the state token, flattened): what
          the vision encoders hand the trunk
Beside them on the same scenes: the same probes on the same architecture at initialisation (`untrained_*`,
seeded random weights: what the architecture gives before any learning), the training scenes' mean offset
(`mean_offset`) and a block picked at random among the scene's blocks (`random_block`); errors as in
block_probe (median cm, share within 3 cm), over all held-out scenes and over those whose only block is the
named one (finding a block at all, no colour to read). The ridge penalty and the MLP's stopping step are chosen
on a fifth of the fitting scenes. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import torch
from block_probe import CAMERAS, SCALE, errors, random_block, scenes, summary
from common import bench_parser, fail, machine
from target_reach import BLOCK_TASKS, block_tasks

from vla import envs, keys
from vla.checkpoint import load_policy
from vla.errors import UserError
from vla.options import check_value
from vla.policies.vla_policy import VLAPolicy

PENALTIES = 10.0 ** np.arange(-2, 5)  # ridge penalties tried, times the number of fitting scenes


@torch.no_grad()
def features(policy: VLAPolicy, data: dict, batch: int = 64) -> dict[str, np.ndarray]:
    """{"act": (N, d_model), "tokens": (N, n_obs * d_model)}: the policy's features of each scene read as the
    first step of an episode."""
    out: dict[str, list] = {"act": [], "tokens": []}
    for i in range(0, len(data["target"]), batch):
        part = slice(i, i + batch)
        window = {keys.image_key(c): torch.as_tensor(data["images"][part, j])[:, None] for j, c in enumerate(CAMERAS)}
        window[keys.OBS_STATE] = torch.as_tensor(data["state"][part])[:, None]
        lang = policy._lang(list(data["instruction"][part]))
        tokens = policy._observation_tokens(window, lang)  # (B, 1, n_obs, d)
        readouts = policy.model(lang, tokens, readouts="last", foresight=False)  # (B, 1, 1, d): [ACT]
        out["act"].append(readouts[:, 0, -1].numpy())
        out["tokens"].append(tokens[:, 0].flatten(1).numpy())
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def holdout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded fifth of n rows held out for choosing a reader's setting, and the rest: (held, fit) indices."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 5], order[n // 5 :]


def fit_ridge(x: np.ndarray, y: np.ndarray, seed: int):
    """Standardised ridge regression x (N, F) -> y (N, 2), its penalty the best of `PENALTIES` on a held-out
    fifth; refitted on all of x. Returns predict(x) -> (M, 2)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    val, fit = holdout(len(z), seed)

    def solve(rows: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
        zr, yr = z[rows], y[rows]
        bias = yr.mean(0)
        w = np.linalg.solve(zr.T @ zr + penalty * len(rows) * np.eye(z.shape[1]), zr.T @ (yr - bias))
        return w, bias

    def val_error(penalty: float) -> float:
        w, bias = solve(fit, penalty)
        return float(np.median(errors(z[val] @ w + bias, y[val])))

    w, bias = solve(np.arange(len(z)), min(PENALTIES, key=val_error))
    return lambda x_new: ((x_new - mean) / std) @ w + bias


def fit_mlp(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 3000):
    """A one-hidden-layer MLP (256 GELU units, AdamW, weight decay 0.05) x (N, F) -> y (N, 2) on standardised
    features, kept at its best step on a held-out fifth (what a linear read-out misses of a nonlinear one,
    e.g. picking the named block's keypoint among several). Returns predict(x) -> (M, 2)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = torch.as_tensor((x - mean) / std, dtype=torch.float32)
    t = torch.as_tensor(y / SCALE, dtype=torch.float32)
    val, fit = (torch.as_tensor(rows) for rows in holdout(len(z), seed))
    net = torch.nn.Sequential(torch.nn.Linear(z.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    best, best_state = float("inf"), None
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = fit[torch.randint(0, len(fit), (128,), generator=gen)]
        loss = torch.nn.functional.smooth_l1_loss(net(z[idx]), t[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            with torch.no_grad():
                err = float((net(z[val]) - t[val]).norm(dim=-1).median())
            if err < best:
                best, best_state = err, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)

    @torch.no_grad()
    def predict(x_new: np.ndarray) -> np.ndarray:
        return net(torch.as_tensor((x_new - mean) / std, dtype=torch.float32)).numpy().astype(np.float64) * SCALE

    return predict


READERS = {"ridge": fit_ridge, "mlp": fit_mlp}


def with_one_block(err: np.ndarray, data: dict) -> dict:
    """`summary` of all scenes, and under "one_block" of the scenes whose only block is the named one (finding a
    block at all, no colour to read); None where there are none."""
    alone = np.array([len(blocks) == 1 for blocks in data["blocks"]])
    return {**summary(err), "one_block": summary(err[alone]) if alone.any() else None}


def parse_args():
    parser = bench_parser(__doc__)
    parser.add_argument("--policy", required=True, help="a tabletop run or checkpoint directory")
    parser.add_argument("--tasks", default=",".join(BLOCK_TASKS), help="comma list of tabletop block tasks")
    parser.add_argument("--scenes", type=int, default=300, help="fitting scenes per task")
    parser.add_argument("--eval-scenes", type=int, default=40, help="held-out scenes per task and split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        tasks = block_tasks(args.tasks)
        for name in ("--scenes", "--eval-scenes"):
            check_value(name, getattr(args, name.lstrip("-").replace("-", "_")), min=1)
        trained = load_policy(args.policy, foresee=False, streaming=False)
    except UserError as e:
        fail(str(e))
    missing = {keys.image_key(c) for c in CAMERAS} - set(trained.image_keys)
    if missing:
        fail(f"{args.policy} is not a tabletop policy: it has no {', '.join(sorted(missing))}")
    return args, tasks, trained


def main() -> None:
    args, tasks, trained = parse_args()
    torch.manual_seed(args.seed)  # the untrained twin: the same architecture, seeded initial weights
    untrained = VLAPolicy(trained.config, stats=None, foresee=False, streaming=False).eval()
    untrained.normalizer.load_state_dict(trained.normalizer.state_dict())  # the same inputs, only the net differs
    suite = envs.get_suite("tabletop")
    fit = scenes(suite, tasks, "train", args.scenes, args.seed, "policy-probe-fit")
    held = {split: scenes(suite, tasks, split, args.eval_scenes, args.seed, "policy-probe-" + split)
            for split in ("train", "unseen")}  # fmt: skip
    results = {split: {} for split in held}
    for name, policy in (("", trained), ("untrained_", untrained)):
        fit_features = features(policy, fit)
        held_features = {split: features(policy, data) for split, data in held.items()}
        for (feature, x), (reader, fitter) in itertools.product(fit_features.items(), READERS.items()):
            predict = fitter(x, fit["target"], args.seed)
            for split, data in held.items():
                err = errors(predict(held_features[split][feature]), data["target"])
                results[split][f"{name}{feature}_{reader}"] = with_one_block(err, data)
    for split, data in held.items():
        results[split]["mean_offset"] = with_one_block(errors(fit["target"].mean(0), data["target"]), data)
        results[split]["random_block"] = random_block(data)
    print(f"\npolicy probe: {args.policy}; read-outs fitted on {len(fit['target'])} scenes, "
          f"{len(held['train']['target'])} held out per split")  # fmt: skip
    print(f"{'split':8} {'predictor':24} {'error (cm)':>10} {'within 3 cm':>12} {'one block: error':>17} "
          f"{'within 3 cm':>12}")  # fmt: skip
    for split, row in results.items():
        for name, r in row.items():
            one = r.get("one_block") or {}
            alone = f"{one['error_cm']:17.1f} {one['within_3cm']:12.1%}" if one else ""
            print(f"{split:8} {name:24} {r['error_cm']:10.1f} {r['within_3cm']:12.1%} {alone}")
    print(json.dumps({"bench": "policy_probe", "policy": args.policy, "scenes": len(fit["target"]),
                      "results": results, "machine": machine()}))  # fmt: skip


if __name__ == "__main__":
    main()
