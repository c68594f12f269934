"""How much a trained policy reads its instruction: its action loss on held-out windows, per task, with the
episode's own instruction and with others put in its place.

    python bench/language_reliance.py --policy runs/tabletop
    python bench/language_reliance.py --policy runs/tabletop --windows 128 --device cuda
    python bench/language_reliance.py --policy runs/tabletop --first-steps 10

The windows are the run's validation episodes (the same per-task split `vla train` held out), `--windows`
per task at random; with `--first-steps N` only windows whose current step is among the episode's first N
(before the hand has moved far, where the instruction alone tells where to go). Each task's windows go
through the policy four times, the images, states and target actions unchanged, only the instruction
replaced:
  own         the episode's instruction
  same-task   another episode's instruction of the same task: on the tabletop suite other colours, so
              other objects ("lift the red block" -> "lift the blue block")
  other-task  an instruction of another task, at random
  empty       the empty string
A policy that reads only which task it is told does as well with same-task as with its own instruction
and worse with other-task; one that also reads which object does worse with same-task too. The loss is the
policy's action loss (normalised units: the arm's smooth-L1 and the gripper's BCE at `gripper_weight`).
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from common import bench_device, bench_parser, describe, machine

from vla import checkpoint, keys
from vla.datasets.sampler import WindowSpec, collate, make_datasets
from vla.errors import UserError
from vla.options import check_value
from vla.train_device import native_bf16

SUBSTITUTES = ("own", "same-task", "other-task", "empty")


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--policy", required=True, help="a `vla train` run directory (or its checkpoint)")
    parser.add_argument("--windows", type=int, default=64, help="validation windows per task")
    parser.add_argument("--first-steps", type=int, default=0, help="only windows at an episode's first N steps "
                        "(0: every step)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="which windows and which substitutes")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) or a torch device")
    args = parser.parse_args(argv)
    check_value("--windows", args.windows, min=1)
    check_value("--first-steps", args.first_steps, min=0)
    device = bench_device(args.device)
    cfg = checkpoint.load_run_config(args.policy)
    policy = checkpoint.load_policy(args.policy, device).eval()
    _, val = make_datasets(cfg.data.stores[0].path, WindowSpec.of(cfg.policy), cfg.data.val_fraction, cfg.train.seed)
    if val is None:
        raise UserError(f"{args.policy}: its run held out no validation episodes (data.val_fraction 0)")
    rng = np.random.default_rng(args.seed)
    tasks = sorted(set(val.tasks[val.anchor_episode]))
    # Substitutes come from every episode of the store (texts only): the validation episodes alone may hold one task.
    store_tasks = sorted(set(val.tasks))
    own = {t: sorted({str(i) for i, k in zip(val.instructions, val.tasks) if k == t}) for t in store_tasks}
    rows = {}
    for task in tasks:
        batch = collate([val[int(i)] for i in windows_of(val, task, args.windows, args.first_steps, rng)])
        for key in policy.image_keys:  # no future frames: only the action loss is wanted, not foresight's
            batch.pop(keys.future_key(key), None)
        rows[task] = {name: _action_loss(policy, batch, _substitute(name, batch, task, own, rng), device)
                      for name in SUBSTITUTES}  # fmt: skip
    info = machine()
    _print_table(args, rows, info)
    result = {"policy": args.policy, "windows_per_task": args.windows, "first_steps": args.first_steps,
              "seed": args.seed, "loss": rows,
              "mean": {name: float(np.mean([r[name] for r in rows.values()])) for name in SUBSTITUTES},
              "machine": info}  # fmt: skip
    print(json.dumps(result))
    return result


def windows_of(val, task: str, n: int, first_steps: int, rng) -> np.ndarray:
    """Up to `n` of `val`'s windows of `task` at random, only those at an episode's first `first_steps`
    steps where that is > 0."""
    in_task = val.tasks[val.anchor_episode] == task
    step_in_episode = val.anchor_step - val.store.episode_starts[val.anchor_episode]
    early = step_in_episode < first_steps if first_steps else True
    return rng.permutation(np.flatnonzero(in_task & early))[:n]


def _substitute(name: str, batch: dict, task: str, own: dict[str, list[str]], rng) -> list[str]:
    texts = batch[keys.INSTRUCTION]
    if name == "own":
        return texts
    if name == "empty":
        return [""] * len(texts)
    if name == "same-task":  # another instruction of the task; the own one where the task has no other
        return [str(rng.choice([o for o in own[task] if o != t] or [t])) for t in texts]
    others = [t for t in own if t != task] or [task]
    return [str(rng.choice(own[str(rng.choice(others))])) for _ in texts]


@torch.no_grad()
def _action_loss(policy, batch: dict, instructions: list[str], device) -> float:
    # bf16 only where the device has it natively (as `vla train`): emulated, it is ~100x slower than fp32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=native_bf16(device)):
        _, metrics = policy({**batch, keys.INSTRUCTION: instructions})
    return metrics["loss_action"]


def _print_table(args, rows: dict, info: dict) -> None:
    steps = f", at an episode's first {args.first_steps} steps" if args.first_steps else ""
    print(f"# Action loss on held-out windows of {args.policy}, {args.windows} per task{steps}, by instruction given")
    print(f"# {describe(info)}\n")
    print("| task | " + " | ".join(SUBSTITUTES) + " | same-task / own | other-task / own |")
    print("|---|" + "---|" * (len(SUBSTITUTES) + 2))
    for task, r in [*rows.items(), ("mean", {n: np.mean([r[n] for r in rows.values()]) for n in SUBSTITUTES})]:
        cells = " | ".join(f"{r[n]:.3f}" for n in SUBSTITUTES)
        print(f"| {task} | {cells} | {r['same-task'] / r['own']:.2f} | {r['other-task'] / r['own']:.2f} |")
    print()


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"language_reliance.py: {e}", file=sys.stderr)
        sys.exit(2)
